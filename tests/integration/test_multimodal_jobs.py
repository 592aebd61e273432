"""Images in real jobs: every image source in every dialect, every way an image can be refused, and a
shared image fetched once, counted by the HTTP server that serves it (on 127.0.0.1)."""

from __future__ import annotations

import base64
import io
import random
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bulkinfer.engine.job import MediaSettings, RunRequest
from tests.conftest import read_jsonl, run_job, write_jsonl


def png(size: tuple[int, int] = (40, 30), color: str = "red", fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


PNG = png()
B64 = base64.b64encode(PNG).decode()


class ImageServer:
    """Serves PNG at any /img/ path, redirects /to-metadata, and counts requests per path."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits[self.path] += 1
                if self.path == "/to-metadata":
                    self.send_response(302)
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def images() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.close()


def catalog(tmp_path: Path, **images: Any) -> Path:
    lines = [
        "[models.eye]",
        'provider = "echo"',
        "batch_size = 8",
        "[models.eye.options]",
        "describe_images = true",
    ]
    if images:
        lines.append("[models.eye.images]")
        lines += [f"{key} = {value!r}".replace("'", '"') for key, value in images.items()]
    path = tmp_path / "models.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def anthropic(rid: str, source: dict[str, Any]) -> dict[str, Any]:
    content = [{"type": "image", "source": source}, {"type": "text", "text": "describe"}]
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": content}],
    }
    return {"recordId": rid, "modelInput": body}


def openai(rid: str, url: str) -> dict[str, Any]:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "describe"}]
    return {
        "recordId": rid,
        "modelInput": {"messages": [{"role": "user", "content": content}], "max_tokens": 50},
    }


def converse(rid: str, source: dict[str, Any]) -> dict[str, Any]:
    content = [{"image": {"format": "png", "source": source}}, {"text": "describe"}]
    return {"recordId": rid, "modelInput": {"messages": [{"role": "user", "content": content}]}}


def run(tmp_path: Path, records: list[dict[str, Any]], models: Path, media: MediaSettings) -> dict[str, Any]:
    source = write_jsonl(tmp_path / "in" / "a.jsonl", records)
    report = run_job(RunRequest(source.parent, "eye", tmp_path / "out", "j", models, media=media))
    return {line["recordId"]: line for line in read_jsonl(report.output_dir / "a.jsonl.out")}


def reply(line: dict[str, Any]) -> str:
    output = line["modelOutput"]
    if "content" in output:
        return str(output["content"][0]["text"])
    if "choices" in output:
        return str(output["choices"][0]["message"]["content"])
    return str(output["output"]["message"]["content"][0]["text"])


def test_every_image_source_in_every_dialect(tmp_path: Path, images: ImageServer) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "pics").mkdir()
    (tmp_path / "in" / "pics" / "rel.png").write_bytes(PNG)
    elsewhere = tmp_path / "library"
    elsewhere.mkdir()
    (elsewhere / "abs.png").write_bytes(png((20, 10), fmt="JPEG"))
    bucket = tmp_path / "data" / "s3" / "shop"
    bucket.mkdir(parents=True)
    (bucket / "k.webp").write_bytes(png((16, 16), fmt="WEBP"))
    http = f"{images.url}/img/cat.png"
    records = [
        anthropic("a-inline", {"type": "base64", "media_type": "image/png", "data": B64}),
        anthropic("a-http", {"type": "url", "url": http}),
        anthropic("a-s3", {"type": "url", "url": "s3://shop/k.webp"}),
        anthropic("a-file", {"type": "url", "url": f"file://{elsewhere / 'abs.png'}"}),
        anthropic("a-relative", {"type": "url", "url": "pics/rel.png"}),
        openai("o-inline", f"data:image/png;base64,{B64}"),
        openai("o-http", http),
        openai("o-s3", "s3://shop/k.webp"),
        openai("o-file", f"file://{elsewhere / 'abs.png'}"),
        openai("o-relative", "pics/rel.png"),
        converse("c-inline", {"bytes": B64}),
        converse("c-s3", {"s3Location": {"uri": "s3://shop/k.webp"}}),
    ]
    media = MediaSettings(("127.0.0.1",), tmp_path / "data", None, (elsewhere,))
    lines = run(tmp_path, records, catalog(tmp_path), media)
    seen = {
        "inline": "[image/png 40x30] describe",
        "http": "[image/png 40x30] describe",
        "s3": "[image/webp 16x16] describe",
        "file": "[image/jpeg 20x10] describe",
        "relative": "[image/png 40x30] describe",
    }
    for rid, line in lines.items():
        assert "error" not in line, line
        assert reply(line) == seen[rid.split("-")[1]], rid
    assert images.hits["/img/cat.png"] == 1  # two records, one fetch


def test_each_refusal_is_an_error_line_naming_file_line_and_part(tmp_path: Path, images: ImageServer) -> None:
    truncated = base64.b64encode(PNG[: len(PNG) // 2]).decode()
    bmp = base64.b64encode(png((10, 10), fmt="BMP")).decode()
    noise = Image.frombytes("RGB", (100, 100), random.Random(1).randbytes(100 * 100 * 3))
    out = io.BytesIO()
    noise.save(out, format="PNG")  # noise does not compress: ~30 KB
    big = base64.b64encode(out.getvalue()).decode()
    records = [
        anthropic("truncated", {"type": "base64", "media_type": "image/png", "data": truncated}),
        anthropic("wrong-type", {"type": "base64", "media_type": "image/png", "data": bmp}),
        anthropic("oversize", {"type": "base64", "media_type": "image/png", "data": big}),
        openai("private", "http://10.1.2.3/cat.png"),
        openai("redirect", f"{images.url}/to-metadata"),
        openai("escape", "../outside.png"),
        {
            "recordId": "too-many",
            "modelInput": {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}}
                            for _ in range(3)
                        ],
                    }
                ]
            },
        },
        anthropic("fine", {"type": "base64", "media_type": "image/png", "data": B64}),
    ]
    models = catalog(tmp_path, max_bytes=2000, max_per_record=2)
    lines = run(tmp_path, records, models, MediaSettings(("127.0.0.1",)))
    assert reply(lines.pop("fine")) == "[image/png 40x30] describe"
    expected = {
        "truncated": ("line 1: modelInput.messages.0.content.0.source", "truncated"),
        "wrong-type": ("line 2: modelInput.messages.0.content.0.source", "allowed format"),
        "oversize": ("line 3: modelInput.messages.0.content.0.source", "over the"),
        "private": ("line 4: modelInput.messages.0.content.0.image_url", "10.1.2.3 is private"),
        "redirect": ("line 5: modelInput.messages.0.content.0.image_url", "169.254.169.254"),
        "escape": ("line 6: modelInput.messages.0.content.0.image_url", "leaves the input file's folder"),
        "too-many": ("line 7: modelInput.messages.0.content.2.image_url", "3 images, over the limit of 2"),
    }
    for rid, (where, why) in expected.items():
        error = lines[rid]["error"]
        assert error["errorCode"] == 400, rid
        assert error["errorMessage"].startswith(f"a.jsonl {where}: "), error["errorMessage"]
        assert why in error["errorMessage"], error["errorMessage"]
    assert images.hits["/to-metadata"] == 1 and len(images.hits) == 1  # the metadata address never asked


def test_an_image_shared_by_a_hundred_records_is_fetched_once(tmp_path: Path, images: ImageServer) -> None:
    url = f"{images.url}/img/shared.png"
    records = [anthropic(f"r{i}", {"type": "url", "url": url}) for i in range(100)]
    lines = run(tmp_path, records, catalog(tmp_path), MediaSettings(("127.0.0.1",)))
    assert [reply(line) for line in lines.values()] == ["[image/png 40x30] describe"] * 100
    assert images.hits == Counter({"/img/shared.png": 1})


def test_images_are_shrunk_to_the_models_policy(tmp_path: Path) -> None:
    wide = base64.b64encode(png((800, 200))).decode()
    records = [anthropic("wide", {"type": "base64", "media_type": "image/png", "data": wide})]
    lines = run(tmp_path, records, catalog(tmp_path, max_side=100, format="jpeg"), MediaSettings())
    assert reply(lines["wide"]) == "[image/jpeg 100x25] describe"


def test_a_reference_no_path_can_be_made_of_fails_its_record_not_the_job(tmp_path: Path) -> None:
    records = [
        openai("nul", "img\u0000.png"),
        openai("ipv6", "file://[/x.png"),
        openai("ok", f"data:image/png;base64,{B64}"),
    ]
    lines = run(tmp_path, records, catalog(tmp_path), MediaSettings())
    assert "cannot be read" in lines["nul"]["error"]["errorMessage"]
    assert lines["ipv6"]["error"]["errorCode"] == 400
    assert reply(lines["ok"]) == "[image/png 40x30] describe"
