"""The dashboard's pages and JSON on a real `bulkinfer serve`, without a browser: development mode shows
every tenant's jobs, a Stop needs the page's header, outputs are served only by their listed names."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SLOW_ECHO_CATALOG as CATALOG
from tests.conftest import write_jsonl
from tests.integration.test_bedrock_api import (
    Server,
    client,
    create,
    records,
    start_server,
    wait_status,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    catalog = tmp_path / "models.toml"
    catalog.write_text(CATALOG)
    running = start_server(tmp_path / "data", catalog, "--insecure-dev")
    yield running
    running.stop()


def call(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def get_json(url: str) -> Any:
    status, body = call(url)
    assert status == 200, body
    return json.loads(body)


def test_development_mode_shows_every_tenants_jobs_and_stops_only_from_the_page(server: Server) -> None:
    write_jsonl(server.bucket("dash-input") / "in.jsonl", records(300))
    first, second = client(server, "AKIDFIRST"), client(server, "AKIDSECOND")
    done = create(first, "first-job", "s3://dash-input/in.jsonl", "s3://dash-output/a/", "echo")
    running = create(second, "second-job", "s3://dash-input/in.jsonl", "s3://dash-output/b/", "slow-echo")
    wait_status(first, done, {"Completed"})
    wait_status(second, running, {"InProgress"})
    done_id, running_id = done.rsplit("/", 1)[1], running.rsplit("/", 1)[1]

    listing = get_json(f"{server.url}/ui/api/jobs")
    assert {row["tenant"] for row in listing["jobs"]} == {"AKIDFIRST", "AKIDSECOND"}
    assert [r["id"] for r in get_json(f"{server.url}/ui/api/jobs?model=echo")["jobs"]] == [done_id]
    status, page = call(f"{server.url}/ui?status=InProgress")
    assert status == 200 and running_id in page and done_id not in page
    status, page = call(f"{server.url}/ui/models")
    assert status == 200 and "slow-echo" in page

    stop = f"{server.url}/ui/api/jobs/{running_id}/stop"
    assert call(stop, "POST")[0] == 403  # a cross-site form could send this much
    assert call(stop, "POST", {"X-Bulkinfer-UI": "1", "Origin": "http://elsewhere.example"})[0] == 403
    assert call(stop, "POST", {"X-Bulkinfer-UI": "1"})[0] == 200
    assert wait_status(second, running, {"Stopped"})["status"] == "Stopped"
    assert call(stop, "POST", {"X-Bulkinfer-UI": "1"})[0] == 409  # it has ended

    detail = get_json(f"{server.url}/ui/api/jobs/{done_id}")
    assert detail["status"] == "Completed" and detail["outputs"][0]["name"] == "manifest.json.out"
    assert [e["event"] for e in detail["timeline"]][-1] == "job.ended"
    status, manifest = call(f"{server.url}{detail['outputs'][0]['url']}")
    assert status == 200 and json.loads(manifest)["jobId"] == done_id
    assert call(f"{server.url}/ui/jobs/{done_id}/outputs/../../etc/passwd")[0] == 404
    assert call(f"{server.url}/ui/jobs/nosuchjob")[0] == 404
    assert call(f"{server.url}/ui/api/jobs?after=nosuchjob")[0] == 404
    assert call(f"{server.url}/ui/api/jobs?status=Bogus")[0] == 200  # an unknown filter is no filter
    for bad in ("/ui/jobs/%00", "/ui/api/jobs/a%00b", "/ui/jobs/x%00/outputs/y", "/ui/api/jobs?after=%00"):
        assert call(f"{server.url}{bad}")[0] == 404, bad  # (PostgreSQL refuses a NUL: never sent to it)
    assert get_json(f"{server.url}/ui/api/jobs?model=%00")["jobs"] == []

    answer = urllib.request.urlopen(f"{server.url}{detail['outputs'][0]['url']}", timeout=10)
    assert answer.headers["Content-Disposition"].startswith("attachment;")  # a download, never a page
    for path in ("/ui", f"/ui/jobs/{done_id}", "/ui/api/jobs", "/ui/jobs/nosuchjob"):
        request = urllib.request.Request(f"{server.url}{path}")
        try:
            headers = urllib.request.urlopen(request, timeout=10).headers
        except urllib.error.HTTPError as exc:
            headers = exc.headers
        assert (
            headers["X-Frame-Options"] == "DENY"
            and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        )
        assert headers["X-Content-Type-Options"] == "nosniff", path
