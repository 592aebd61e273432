"""OCR as a real local image model: the ``ocr`` model, and ``image_text = "ocr"`` for text-only models.

Images are drawn with Pillow's own scalable font, large enough to read reliably; the OCR models are
rapidocr's bundled ONNX files, so nothing is downloaded. One engine is shared by the tests that use it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont

from bulkinfer.domain.request import (
    ChatRequest,
    ChatResult,
    EmbeddingRequest,
    EmbeddingResult,
    ImagePart,
    Message,
    RecordError,
    TextPart,
)
from bulkinfer.engine.job import RunRequest
from bulkinfer.errors import ConfigError, RecordInvalid
from bulkinfer.providers.catalog import Catalog
from bulkinfer.providers.echo import EchoProvider
from bulkinfer.providers.image_text import ImageTextProvider
from bulkinfer.providers.ocr import OcrEngine, decode_image, reading_order
from bulkinfer.providers.registry import load_provider
from tests.conftest import anthropic_record, read_jsonl, run_job, write_jsonl

INVOICE = ["INVOICE 2024-117", "Total due: 32.40 GBP", "Pay by 15 March 2024"]
NOTICE = ["CLOSED FOR RENOVATION", "Reopening on Monday 3 June"]


def text_image(
    lines: list[str],
    size: tuple[int, int] = (900, 260),
    image_format: str = "PNG",
    ink: str = "black",
    paper: str | tuple[int, int, int, int] = "white",
) -> bytes:
    mode = "RGBA" if isinstance(paper, tuple) else "RGB"
    image = Image.new(mode, size, paper)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=40)
    for i, line in enumerate(lines):
        draw.text((30, 20 + 75 * i), line, fill=ink, font=font)
    out = io.BytesIO()
    image.save(out, image_format)
    return out.getvalue()


def image_block(data: bytes, media_type: str = "image/png") -> dict[str, Any]:
    encoded = base64.b64encode(data).decode()
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": encoded}}


def image_record(record_id: str, *images: bytes, question: str | None = None) -> dict[str, Any]:
    record = anthropic_record(record_id, question or "", max_tokens=512)
    content: list[dict[str, Any]] = [image_block(i) for i in images]
    if question is not None:
        content.append({"type": "text", "text": question})
    record["modelInput"]["messages"][0]["content"] = content
    return record


def output_text(line: dict[str, Any]) -> str:
    text: str = line["modelOutput"]["content"][0]["text"]
    return text


def ask(*parts: ImagePart | TextPart) -> ChatRequest:
    return ChatRequest(messages=(Message("user", parts),))


@pytest.fixture(scope="session")
def ocr_engine() -> Iterator[OcrEngine]:
    engine = OcrEngine.load()
    yield engine
    engine.close()


# reading order, decoding, install hint: no model needed


def box(left: float, top: float, right: float, bottom: float) -> list[list[float]]:
    return [[left, top], [right, top], [right, bottom], [left, bottom]]


def test_reading_order_is_lines_top_to_bottom_then_left_to_right() -> None:
    boxes = [
        box(500, 102, 700, 140),  # right column of the second line, a little lower than its left
        box(20, 10, 300, 50),
        box(20, 100, 300, 138),
        box(20, 200, 400, 240),
        box(600, 12, 800, 48),
    ]
    texts = ["Date: 3 June", "Invoice 117", "Name: Ada", "Total 32.40", "Page 1"]
    assert reading_order(boxes, texts) == "Invoice 117 Page 1\nName: Ada Date: 3 June\nTotal 32.40"
    assert reading_order([], []) == ""
    assert reading_order([box(0, 0, 10, 10)], ["  "]) == ""


def test_transparent_images_get_a_contrasting_background() -> None:
    white_ink = text_image(["Hello"], (200, 80), ink="white", paper=(0, 0, 0, 0))
    width, height, pixels = decode_image(white_ink)
    assert (width, height) == (200, 80)
    assert pixels.shape == (80, 200, 3) and pixels[0, 0].tolist() == [0, 0, 0]
    _, _, black_ink = decode_image(text_image(["Hello"], (200, 80), paper=(0, 0, 0, 0)))
    assert black_ink[0, 0].tolist() == [255, 255, 255]


def test_decoding_turns_colours_into_bgr() -> None:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(out, "PNG")
    assert decode_image(out.getvalue())[2][0, 0].tolist() == [0, 0, 255]


def test_an_unreadable_image_names_its_field() -> None:
    with pytest.raises(RecordInvalid) as info:
        decode_image(b"not an image", "modelInput.messages.0.content.0")
    assert str(info.value).startswith("modelInput.messages.0.content.0: the image cannot be decoded")


def test_without_rapidocr_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rapidocr", None)
    with pytest.raises(ConfigError, match=r'pip install "bulkinfer\[ocr\]"'):
        load_provider(Catalog.load().get("ocr"))
    with pytest.raises(ConfigError, match=r'pip install "bulkinfer\[ocr\]"'):
        load_provider(Catalog.load().get("smollm2-135m-instruct-ocr"))


# the engine


@pytest.mark.slow
def test_engine_reads_lines_in_order(ocr_engine: OcrEngine) -> None:
    assert ocr_engine.read_bytes(text_image(INVOICE)).text == "\n".join(INVOICE)
    jpeg = text_image(NOTICE, image_format="JPEG")
    assert ocr_engine.read_bytes(jpeg).text == "\n".join(NOTICE)
    page = ocr_engine.read_bytes(text_image(["Hello"], (200, 80), ink="white", paper=(0, 0, 0, 0)))
    assert page.text == "Hello"
    blank = ocr_engine.read_bytes(text_image([], (300, 100)))
    assert blank.text == "" and blank.tokens == 40  # 300 x 100 / 750


# the ocr model


@pytest.mark.slow
def test_ocr_model_job_returns_the_text_of_each_image(tmp_path: Path) -> None:
    notice = base64.b64encode(text_image(NOTICE)).decode()
    openai_image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{notice}"}}
    openai_body = {"messages": [{"role": "user", "content": [openai_image]}], "max_completion_tokens": 100}
    converse_image = {"image": {"format": "png", "source": {"bytes": notice}}}
    converse_body = {"messages": [{"role": "user", "content": [converse_image]}]}
    records = [
        image_record("OCRINVOICE1", text_image(INVOICE), question="What does it say?"),
        image_record("OCRTWOIMGS1", text_image(INVOICE), text_image(NOTICE)),
        {"recordId": "OCROPENAI01", "modelInput": openai_body},
        {"recordId": "OCRCONVERSE", "modelInput": converse_body},
        anthropic_record("OCRNOIMAGE1", "There is no image here."),
        image_record("OCRBROKEN01", b"this is not a png"),
    ]
    source = write_jsonl(tmp_path / "scans.jsonl", records)
    report = run_job(RunRequest(source, "ocr", tmp_path / "out", job_id="ocr"))
    lines = read_jsonl(tmp_path / "out" / "ocr" / "scans.jsonl.out")
    assert [line["recordId"] for line in lines] == [r["recordId"] for r in records]
    invoice, both, openai, converse, no_image, broken = lines

    assert output_text(invoice) == "\n".join(INVOICE)
    assert invoice["modelOutput"]["stop_reason"] == "end_turn"
    usage = invoice["modelOutput"]["usage"]
    assert usage["input_tokens"] == 312 + len("What does it say?") // 4  # 900 x 260 / 750, then text
    assert usage["output_tokens"] == -(-len(output_text(invoice)) // 4)
    assert output_text(both) == "\n".join(INVOICE) + "\n\n" + "\n".join(NOTICE)
    assert openai["modelOutput"]["choices"][0]["message"]["content"] == "\n".join(NOTICE)
    assert converse["modelOutput"]["output"]["message"]["content"][0]["text"] == "\n".join(NOTICE)
    assert no_image["error"]["errorCode"] == 400
    assert "reads images" in no_image["error"]["errorMessage"]
    assert broken["error"]["errorCode"] == 400
    assert "modelInput.messages.0.content.0" in broken["error"]["errorMessage"]
    assert report.counts.success == 4 and report.counts.errors == 2


@pytest.mark.slow
def test_ocr_model_honours_max_tokens_and_stop_sequences(tmp_path: Path) -> None:
    short = image_record("OCRSHORT001", text_image(INVOICE))
    short["modelInput"]["max_tokens"] = 3
    stopped = image_record("OCRSTOPPED1", text_image(INVOICE))
    stopped["modelInput"]["stop_sequences"] = ["Total"]
    source = write_jsonl(tmp_path / "scans.jsonl", [short, stopped])
    run_job(RunRequest(source, "ocr", tmp_path / "out", job_id="ocr"))
    short_line, stopped_line = read_jsonl(tmp_path / "out" / "ocr" / "scans.jsonl.out")
    assert output_text(short_line) == INVOICE[0][:12]
    assert short_line["modelOutput"]["stop_reason"] == "max_tokens"
    assert output_text(stopped_line) == INVOICE[0] + "\n"
    assert stopped_line["modelOutput"]["stop_reason"] == "stop_sequence"


# image_text = "ocr": images become text before a text-only model sees them


@pytest.mark.slow
def test_wrapper_replaces_each_image_with_its_text(ocr_engine: OcrEngine) -> None:
    provider = ImageTextProvider(EchoProvider("echo", {}), ocr_engine)
    assert provider.capabilities.images and provider.capabilities.chat
    assert not provider.capabilities.native_dialects
    request = ask(
        TextPart("Compare these."),
        ImagePart("image/png", text_image(INVOICE)),
        ImagePart("image/png", text_image([], (300, 100))),
        TextPart("Which is due first?"),
    )
    broken = ask(ImagePart("image/png", b"garbage", field="modelInput.messages.0.content.0"))
    unresolved = ask(
        ImagePart("image/png", url="s3://bucket/scan.png", field="modelInput.messages.0.content.1")
    )
    embedding = EmbeddingRequest(("no images here",))
    answer, broken_error, unresolved_error, vector = asyncio.run(
        provider.infer([request, broken, unresolved, embedding])
    )
    assert isinstance(answer, ChatResult)
    assert answer.text == (
        "Compare these.\n\n"
        "Image 1 (the text read from it):\n" + "\n".join(INVOICE) + "\n(end of image 1)\n\n"
        "Image 2 (no text could be read from it)\n\n"
        "Which is due first?"
    )
    assert isinstance(broken_error, RecordError) and broken_error.code == 400
    assert "modelInput.messages.0.content.0: the image cannot be decoded" in broken_error.message
    assert isinstance(unresolved_error, RecordError) and "not resolved" in unresolved_error.message
    assert isinstance(vector, EmbeddingResult)
    # planning a micro-batch counts a guess for each image's text
    assert provider.count_tokens(request) > EchoProvider("echo", {}).count_tokens(request) + 300


@pytest.mark.slow
def test_catalog_image_text_wraps_the_model_in_a_job(tmp_path: Path) -> None:
    catalog = tmp_path / "models.toml"
    catalog.write_text('[models.echo-ocr]\nprovider = "echo"\nimage_text = "ocr"\n')
    records = [
        image_record("WRAPPED0001", text_image(NOTICE), question="When does it open?"),
        anthropic_record("WRAPPED0002", "just text"),
    ]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    report = run_job(RunRequest(source, "echo-ocr", tmp_path / "out", job_id="w", catalog_file=catalog))
    with_image, text_only = read_jsonl(tmp_path / "out" / "w" / "in.jsonl.out")
    expected = "Image 1 (the text read from it):\n" + "\n".join(NOTICE) + "\n(end of image 1)\n\n"
    assert output_text(with_image) == expected + "When does it open?"
    assert output_text(text_only) == "just text"
    assert report.counts.success == 2


@pytest.mark.slow
def test_smollm2_with_ocr_answers_about_an_image(tmp_path: Path) -> None:
    record = image_record("SMOLOCR0001", text_image(INVOICE), question="What is the total due?")
    record["modelInput"]["max_tokens"] = 24
    source = write_jsonl(tmp_path / "in.jsonl", [record])
    report = run_job(RunRequest(source, "smollm2-135m-instruct-ocr", tmp_path / "out", job_id="s"))
    (line,) = read_jsonl(tmp_path / "out" / "s" / "in.jsonl.out")
    assert output_text(line).strip()
    # the prompt held the image's text: far more input tokens than the question alone
    assert line["modelOutput"]["usage"]["input_tokens"] > 40
    assert report.counts.success == 1
