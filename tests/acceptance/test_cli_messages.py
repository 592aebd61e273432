"""What the CLI says when something is wrong: a user's path, a file's content, a server's message or an
exception's text is printed as it is, never read as markup, and a usage problem exits 2 saying what to do.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
from typer.testing import CliRunner, Result

from bulkinfer.cli.main import app
from bulkinfer.engine.job import LocalJob
from bulkinfer.providers.local import INSTALL_HINT, require
from tests.acceptance.test_cli import bulkinfer


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("name", ["batch[v2].jsonl", "x[/y].jsonl", "[bold]b.jsonl"])
def test_a_missing_input_is_named_as_typed(tmp_path: Path, name: str) -> None:
    result = bulkinfer("run", tmp_path / name, "--model", "echo", "--output", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr == f"error: input not found: {tmp_path / name}\n"


class _Refusing(BaseHTTPRequestHandler):
    """A server that refuses every call as ours refuses an unknown job, quoting the id it was given."""

    def do_GET(self) -> None:
        job = unquote(self.path).removeprefix("/model-invocation-job/")
        body = json.dumps({"message": f"no job {job} [red]"}).encode()
        self.send_response(404)
        self.send_header("x-amzn-ErrorType", "ResourceNotFoundException")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_servers_refusal_is_printed_as_it_is(refusing_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    result = invoke("status", "[/x]", "--server", refusing_server)
    assert result.exit_code == 2, result.output
    assert result.stderr == "error: ResourceNotFoundException: no job [/x] [red]\n"


def test_an_install_hint_keeps_its_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def missing_extra(self: LocalJob, *args: object, **kwargs: object) -> None:
        require("bulkinfer_no_such_module")

    monkeypatch.setattr(LocalJob, "execute", missing_extra)
    source = tmp_path / "in.jsonl"
    source.write_text('{"recordId": "a", "modelInput": {"inputText": "hi"}}\n')
    result = invoke("run", source, "--model", "echo", "--output", tmp_path / "out")
    assert result.exit_code == 1
    said = f"job failed: bulkinfer_no_such_module is not installed: {INSTALL_HINT}\n"
    assert said in result.stderr
    assert "pip install 'bulkinfer[local]' torch" in INSTALL_HINT


def test_tables_show_file_names_as_they_are(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a[red].jsonl").write_text('{"recordId": "a", "modelInput": {"inputText": "hi"}}\n')
    result = invoke("run", folder, "--model", "echo", "--output", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "a[red].jsonl" in result.stdout
