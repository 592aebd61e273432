"""OCR memory per image is bounded whatever the image's size: decoding shrinks before it goes to numpy.

A 20-megapixel RGBA PNG once cost about 1.45 GB to decode (float32 copies of every pixel). Peak memory is
measured in a fresh interpreter, so what other tests allocated does not hide or inflate the growth.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from bulkinfer.providers.ocr import MAX_SIDE, OcrEngine

BIG = (5000, 4000)
MAX_GROWTH = 400 * 2**20
"""Decoding holds the full RGBA image (80 MB) and Pillow's premultiplied copy while it shrinks; the old
float32 path grew by well over a gigabyte."""

MEASURE = """
import resource, sys
from bulkinfer.providers.ocr import decode_image
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
width, height, pixels = decode_image(data)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(width, height, *pixels.shape, (after - before) * (1 if sys.platform == "darwin" else 1024))
"""


@pytest.fixture(scope="module")
def big_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dark text on a transparent page, large enough to read after the shrink to MAX_SIDE."""
    image = Image.new("RGBA", BIG, (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=220)
    for i, line in enumerate(["INVOICE 2024-117", "Total due: 32.40 GBP"]):
        draw.text((200, 300 + 400 * i), line, fill="black", font=font)
    path = tmp_path_factory.mktemp("ocr") / "big.png"
    image.save(path, "PNG", compress_level=1)
    return path


@pytest.mark.skipif(sys.platform == "win32", reason="peak memory comes from resource.getrusage")
def test_decoding_a_20_megapixel_png_stays_within_its_memory_bound(big_png: Path) -> None:
    command = [sys.executable, "-c", MEASURE, str(big_png)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    width, height, rows, columns, channels, growth = map(int, done.stdout.split())
    assert (width, height) == BIG  # the original size: it is what the image counts as in tokens
    assert (columns, rows, channels) == (MAX_SIDE, MAX_SIDE * BIG[1] // BIG[0], 3)
    assert growth < MAX_GROWTH, f"decoding grew peak memory by {growth / 2**20:.0f} MiB"


@pytest.mark.slow
def test_a_big_image_is_read_and_counted_at_its_own_size(big_png: Path) -> None:
    engine = OcrEngine.load(workers=1)
    try:
        page = engine.read_bytes(big_png.read_bytes())
    finally:
        engine.close()
    assert page.text.splitlines() == ["INVOICE 2024-117", "Total due: 32.40 GBP"]
    assert (page.width, page.height) == BIG
    assert page.tokens == 2623  # 1568 x 1254.4 px / 750: fitted within 1568 px, as a hosted model counts it
