"""The image cache: 1,000 records that share 50 images against 1,000 records with distinct images.

Images are 640x480 PNG photos-to-be (smooth gradients with noise, ~300 KB each), served over HTTP from
127.0.0.1 by a server that counts requests. Each side runs a whole job on the ``echo`` model through the
engine, so every image is fetched through the guarded client, decoded, checked and, with a model policy
of 512 px, shrunk before the model sees it. With 50 distinct images, each is fetched and decoded once.

    python benchmarks/media_cache.py [--records 1000] [--shared 50]

Prints images/s of each side, the server's request counts, and last the ratio shared/distinct.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import tempfile
import threading
import time
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
from PIL import Image

from bulkinfer.engine.job import LocalJob, MediaSettings, RunRequest
from bulkinfer.engine.progress import NoProgress

SIZE = (640, 480)


def make_image(seed: int) -> bytes:
    rng = random.Random(seed)
    base = Image.linear_gradient("L").resize(SIZE).convert("RGB")
    tint = Image.new("RGB", SIZE, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    noise = Image.frombytes("RGB", SIZE, rng.randbytes(SIZE[0] * SIZE[1] * 3))
    out = io.BytesIO()
    Image.blend(Image.blend(base, tint, 0.5), noise, 0.15).save(out, format="PNG")
    return out.getvalue()


def serve(folder: Path, hits: Counter[str]) -> tuple[ThreadingHTTPServer, str]:
    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def do_GET(self) -> None:
            hits[self.path] += 1
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def write_records(path: Path, url: str, records: int, distinct: int) -> None:
    with path.open("wb") as f:
        for i in range(records):
            content = [
                {"type": "image", "source": {"type": "url", "url": f"{url}/img{i % distinct:04d}.png"}},
                {"type": "text", "text": f"describe product {i}"},
            ]
            body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 20}
            body["messages"] = [{"role": "user", "content": content}]
            f.write(orjson.dumps({"recordId": f"R{i:08d}", "modelInput": body}) + b"\n")


async def run_job(folder: Path, name: str, catalog: Path) -> float:
    request = RunRequest(
        folder / name, "eye", folder / "out", name, catalog, media=MediaSettings(("127.0.0.1",))
    )
    job = LocalJob.open(request)
    try:
        started = time.perf_counter()
        report = await job.execute(NoProgress())
        elapsed = time.perf_counter() - started
    finally:
        job.close()
    assert report.counts.errors == 0, report.counts
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--shared", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = root / "images"
        images.mkdir()
        print(f"drawing {args.records} images of {SIZE[0]}x{SIZE[1]}...", flush=True)
        for i in range(args.records):
            (images / f"img{i:04d}.png").write_bytes(make_image(i))
        hits: Counter[str] = Counter()
        server, url = serve(images, hits)
        catalog = root / "models.toml"
        catalog.write_text(
            '[models.eye]\nprovider = "echo"\nbatch_size = 64\n[models.eye.images]\nmax_side = 512\n'
        )
        results = {}
        for name, distinct in (("shared", args.shared), ("distinct", args.records)):
            (root / name).mkdir()
            write_records(root / name / "records.jsonl", url, args.records, distinct)
            hits.clear()
            elapsed = asyncio.run(run_job(root, name, catalog))
            results[name] = args.records / elapsed
            print(
                f"{name:>8}: {args.records} records, {distinct} images, {sum(hits.values())} HTTP requests, "
                f"{elapsed:.2f} s, {results[name]:.0f} images/s",
                flush=True,
            )
        server.shutdown()
    print(f"ratio (shared / distinct images/s): {results['shared'] / results['distinct']:.2f}")


if __name__ == "__main__":
    main()
