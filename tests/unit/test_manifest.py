"""Unit tests for the manifest, job counts, the status lifecycle and job ids."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import orjson
import pytest

from bulkinfer.domain.job import (
    JOB_ID_LENGTH,
    TRANSITIONS,
    Counts,
    JobStatus,
    can_transition,
    new_job_id,
)
from bulkinfer.formats.manifest import ManifestInfo, build_manifest, iso

BEDROCK_KEYS = [
    "totalRecordCount",
    "processedRecordCount",
    "successRecordCount",
    "errorRecordCount",
    "inputTokenCount",
    "outputTokenCount",
]
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
STARTED = datetime(2024, 8, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def info(**overrides: object) -> ManifestInfo:
    values: dict[str, object] = {
        "job_id": "abc123def456",
        "model": "echo",
        "status": "Completed",
        "total_records": 120,
        "counts": Counts(
            processed=100,
            success=97,
            errors=3,
            input_tokens=4000,
            output_tokens=1000,
            error_codes={"500": 1, "400": 2},
        ),
        "started_at": STARTED,
        "ended_at": STARTED + 50.0,
        "inputs": ["a.jsonl", "sub/b.jsonl"],
        "estimated_cost_usd": 0.01234567,
        "active_seconds": 50.0,
    }
    values.update(overrides)
    return ManifestInfo(**values)  # type: ignore[arg-type]


# manifest


def test_bedrock_keys_come_first_with_the_counts() -> None:
    manifest = build_manifest(info())
    assert list(manifest)[:6] == BEDROCK_KEYS
    assert [manifest[k] for k in BEDROCK_KEYS] == [120, 100, 97, 3, 4000, 1000]
    assert all(type(manifest[k]) is int for k in BEDROCK_KEYS)


def test_bulkinfer_keys() -> None:
    manifest = build_manifest(info())
    assert manifest["jobId"] == "abc123def456"
    assert manifest["modelId"] == "echo"
    assert manifest["status"] == "Completed"
    assert manifest["inputFiles"] == ["a.jsonl", "sub/b.jsonl"]
    assert manifest["startTime"] == "2024-08-01T12:00:00.000Z"
    assert manifest["endTime"] == "2024-08-01T12:00:50.000Z"
    assert manifest["durationSeconds"] == 50.0
    assert manifest["estimatedCostUSD"] == 0.012346


def test_a_cost_with_no_price_is_null_and_a_free_one_zero() -> None:
    unknown = build_manifest(info(estimated_cost_usd=None))
    assert unknown["estimatedCostUSD"] is None
    assert b'"estimatedCostUSD":null' in orjson.dumps(unknown)
    assert build_manifest(info(estimated_cost_usd=0.0))["estimatedCostUSD"] == 0.0


def test_rates() -> None:
    manifest = build_manifest(info())
    assert manifest["recordsPerSecond"] == 2.0  # 100 / 50
    assert manifest["tokensPerSecond"] == 100.0  # 5000 / 50
    assert manifest["outputTokensPerSecond"] == 20.0  # 1000 / 50


def test_rates_are_rounded_to_three_places() -> None:
    manifest = build_manifest(info(ended_at=STARTED + 3.0, active_seconds=3.0))
    assert manifest["recordsPerSecond"] == 33.333
    assert manifest["durationSeconds"] == 3.0


def test_error_codes_are_sorted() -> None:
    manifest = build_manifest(info())
    assert list(manifest["errorCodeCounts"].items()) == [("400", 2), ("500", 1)]


def test_manifest_is_json_serialisable() -> None:
    manifest = build_manifest(info())
    assert orjson.loads(orjson.dumps(manifest)) == manifest


def test_empty_job() -> None:
    manifest = build_manifest(info(total_records=0, counts=Counts(), ended_at=STARTED, estimated_cost_usd=0))
    assert [manifest[k] for k in BEDROCK_KEYS] == [0] * 6
    assert manifest["recordsPerSecond"] == 0
    assert manifest["tokensPerSecond"] == 0
    assert manifest["errorCodeCounts"] == {}


def test_rates_use_running_time_not_the_wall_time_between_runs() -> None:
    manifest = build_manifest(info(ended_at=STARTED + 3600.0, active_seconds=50.0))
    assert manifest["durationSeconds"] == 50.0 and manifest["recordsPerSecond"] == 2.0
    assert manifest["endTime"] == "2024-08-01T13:00:00.000Z"


def test_zero_running_time_does_not_divide_by_zero() -> None:
    manifest = build_manifest(info(ended_at=STARTED - 5, active_seconds=0.0))
    assert manifest["durationSeconds"] >= 0
    assert manifest["recordsPerSecond"] >= 0


@pytest.mark.parametrize(
    ("timestamp", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1.5, "1970-01-01T00:00:01.500Z"),
        (1722513600.123, "2024-08-01T12:00:00.123Z"),
        (STARTED, "2024-08-01T12:00:00.000Z"),
    ],
)
def test_iso_timestamps(timestamp: float, text: str) -> None:
    assert iso(timestamp) == text
    assert ISO_Z.match(iso(timestamp))


def test_iso_parses_back() -> None:
    text = iso(1722513600.25)
    assert datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() == 1722513600.25


# counts


def test_counts_addition_merges_error_codes() -> None:
    a = Counts(processed=3, success=1, errors=2, input_tokens=10, output_tokens=5, error_codes={"400": 2})
    b = Counts(
        processed=4, success=3, errors=1, input_tokens=7, output_tokens=9, error_codes={"400": 1, "500": 1}
    )
    assert a + b == Counts(
        processed=7, success=4, errors=3, input_tokens=17, output_tokens=14, error_codes={"400": 3, "500": 1}
    )


def test_counts_addition_leaves_operands_alone() -> None:
    a = Counts(errors=1, error_codes={"400": 1})
    b = Counts(errors=1, error_codes={"400": 1})
    total = a + b
    assert total.error_codes == {"400": 2}
    assert a.error_codes == {"400": 1}
    assert b.error_codes == {"400": 1}
    assert total.error_codes is not a.error_codes


def test_counts_zero_is_identity_and_sum_works() -> None:
    a = Counts(processed=2, success=2, input_tokens=8, output_tokens=3)
    assert a + Counts() == a
    assert Counts() + a == a
    chunks = [Counts(processed=1, success=1, input_tokens=i) for i in range(5)]
    assert sum(chunks, Counts()) == Counts(processed=5, success=5, input_tokens=10)


def test_counts_addition_is_associative_and_commutative() -> None:
    a = Counts(1, 1, 0, 1, 1, {"429": 1})
    b = Counts(2, 0, 2, 0, 0, {"500": 2})
    c = Counts(1, 0, 1, 0, 0, {"429": 1})
    assert (a + b) + c == a + (b + c)
    assert a + b == b + a


# status lifecycle

BEDROCK_STATUSES = {
    "Submitted",
    "InProgress",
    "Completed",
    "Failed",
    "Stopping",
    "Stopped",
    "PartiallyCompleted",
    "Expired",
    "Validating",
    "Scheduled",
}


def test_status_values_are_bedrock_values() -> None:
    assert {s.value for s in JobStatus} == BEDROCK_STATUSES
    assert JobStatus("InProgress") is JobStatus.IN_PROGRESS
    assert f"{JobStatus.PARTIALLY_COMPLETED}" == "PartiallyCompleted"


def test_every_status_has_a_transition_entry() -> None:
    assert set(TRANSITIONS) == set(JobStatus)


def test_terminal_statuses() -> None:
    terminal = {s for s in JobStatus if s.is_terminal}
    assert terminal == {
        JobStatus.COMPLETED,
        JobStatus.PARTIALLY_COMPLETED,
        JobStatus.FAILED,
        JobStatus.EXPIRED,
    }


def test_finished_statuses_have_no_successors_except_resumable_ones() -> None:
    for status in (JobStatus.COMPLETED, JobStatus.PARTIALLY_COMPLETED, JobStatus.EXPIRED):
        assert TRANSITIONS[status] == frozenset(), status
    # A local run that failed or was stopped may be re-run, and only into InProgress.
    assert TRANSITIONS[JobStatus.FAILED] == {JobStatus.IN_PROGRESS}
    assert TRANSITIONS[JobStatus.STOPPED] == {JobStatus.IN_PROGRESS}


def test_nothing_goes_back_to_submitted() -> None:
    assert all(JobStatus.SUBMITTED not in after for after in TRANSITIONS.values())


def _reachable(start: JobStatus) -> set[JobStatus]:
    seen = {start}
    todo = [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_status_is_reachable_from_submitted() -> None:
    assert _reachable(JobStatus.SUBMITTED) == set(JobStatus)


def test_every_status_can_reach_an_end() -> None:
    ends = {JobStatus.COMPLETED, JobStatus.PARTIALLY_COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED}
    for status in JobStatus:
        assert _reachable(status) & ends, status


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        (JobStatus.SUBMITTED, JobStatus.VALIDATING, True),
        (JobStatus.VALIDATING, JobStatus.SCHEDULED, True),
        (JobStatus.SCHEDULED, JobStatus.IN_PROGRESS, True),
        (JobStatus.SCHEDULED, JobStatus.EXPIRED, True),
        (JobStatus.IN_PROGRESS, JobStatus.COMPLETED, True),
        (JobStatus.IN_PROGRESS, JobStatus.PARTIALLY_COMPLETED, True),
        (JobStatus.IN_PROGRESS, JobStatus.STOPPING, True),
        (JobStatus.STOPPING, JobStatus.STOPPED, True),
        (JobStatus.STOPPED, JobStatus.IN_PROGRESS, True),
        (JobStatus.COMPLETED, JobStatus.IN_PROGRESS, False),
        (JobStatus.COMPLETED, JobStatus.FAILED, False),
        (JobStatus.SUBMITTED, JobStatus.COMPLETED, False),
        (JobStatus.STOPPED, JobStatus.COMPLETED, False),
        (JobStatus.EXPIRED, JobStatus.SCHEDULED, False),
    ],
)
def test_can_transition(current: JobStatus, new: JobStatus, allowed: bool) -> None:
    assert can_transition(current, new) is allowed


# job ids


def test_new_job_id_shape() -> None:
    for _ in range(200):
        job_id = new_job_id()
        assert len(job_id) == JOB_ID_LENGTH == 12
        assert re.fullmatch(r"[a-z0-9]{12}", job_id), job_id


def test_new_job_ids_differ() -> None:
    assert len({new_job_id() for _ in range(500)}) == 500
