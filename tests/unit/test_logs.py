"""The log's two formats, the job events' names, and ``/ready``'s check of a store that hangs."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator

import orjson
import pytest

from bulkinfer import logs
from bulkinfer.api.health import Readiness
from bulkinfer.domain.job import JobStatus
from bulkinfer.store.job_events import event_name
from bulkinfer.store.migrate import HEAD


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        yield logging.getLogger("bulkinfer.test"), stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_json_lines_carry_time_level_event_message_and_fields(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = captured
    logs.configure("info", "json", stream)
    logs.event(log, "job.failed", "job j1 failed", level=logging.WARNING, job_id="j1", tenant=None)
    log.debug("not written at info")
    log.info("plain %s", "line")
    first, second = (orjson.loads(x) for x in stream.getvalue().splitlines())
    assert first["event"] == "job.failed" and first["level"] == "warning" and first["job_id"] == "j1"
    assert first["message"] == "job j1 failed" and first["time"].endswith("Z") and "tenant" not in first
    assert second == {**second, "event": "bulkinfer.test", "message": "plain line", "level": "info"}


def test_text_lines_stay_one_line_whatever_a_field_or_message_holds(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = captured
    logs.configure("debug", "text", stream)
    logs.event(log, "http.request", "GET /a\nb 200", path="/a\nb c", status=200)
    (line,) = stream.getvalue().splitlines()
    assert " DEBUG " not in line and " INFO    http.request GET /a\\nb 200 " in line
    assert line.endswith('path="/a\\nb c" status=200')


@pytest.mark.parametrize(
    ("before", "after", "ran", "name"),
    [
        (JobStatus.SUBMITTED, JobStatus.VALIDATING, False, "job.validating"),
        (JobStatus.SCHEDULED, JobStatus.IN_PROGRESS, False, "job.started"),
        (JobStatus.SCHEDULED, JobStatus.IN_PROGRESS, True, "job.resumed"),
        (JobStatus.IN_PROGRESS, JobStatus.SCHEDULED, True, "job.let_go"),
        (JobStatus.IN_PROGRESS, JobStatus.PARTIALLY_COMPLETED, True, "job.ended"),
        (JobStatus.STOPPING, JobStatus.STOPPED, True, "job.ended"),
        (JobStatus.VALIDATING, JobStatus.FAILED, False, "job.failed"),
    ],
)
def test_each_change_has_its_event_name(before: JobStatus, after: JobStatus, ran: bool, name: str) -> None:
    assert event_name(before, after, ran) == name


async def test_ready_answers_fast_while_the_store_hangs_and_asks_it_one_question_at_a_time() -> None:
    release = threading.Event()
    asked: list[float] = []

    def revision() -> str:
        asked.append(time.monotonic())
        release.wait(10)
        return HEAD

    readiness = Readiness(revision, timeout_s=0.2)
    try:
        started = time.monotonic()
        first = await readiness.check()
        second = await readiness.check()
        assert first is not None and second is not None and first.check == "database"
        assert time.monotonic() - started < 1.5
        assert len(asked) == 1  # the second check waited on the question still out
        release.set()
        assert await readiness.check() is None
    finally:
        release.set()
        readiness.close()


async def test_ready_names_a_schema_behind_the_code() -> None:
    readiness = Readiness(lambda: "0001")
    try:
        failed = await readiness.check()
        assert failed is not None and failed.check == "migrations" and HEAD in failed.reason
    finally:
        readiness.close()
