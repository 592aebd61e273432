"""The state store and the chunk folder mend what a crash, a full disk or a damaged file leaves behind.

Real SQLite files in a temporary folder; no engine run (tests/integration/test_engine_repair.py has those).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import event

from bulkinfer.domain.job import Counts, IllegalTransition, JobStatus
from bulkinfer.domain.lineset import LineSet
from bulkinfer.engine.committer import Committer, chunk_name, rebuild_chunks
from bulkinfer.engine.finalize import IncompleteOutput, write_output
from bulkinfer.formats.bedrock import generated_record_id
from bulkinfer.storage.files import DiskFull, list_inputs, remove_temp_files, write_durably
from bulkinfer.store.state import ChunkRecord, CorruptStateFile, JobRecord, StateStore, moving_aside
from tests.conftest import anthropic_record, write_jsonl

MAX_LINE = 1_000_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    state = StateStore.at(tmp_path / "state" / "state.db")
    yield state
    state.close()


def new_job(store: StateStore, job_id: str = "job1") -> JobRecord:
    job = JobRecord(job_id, "echo", "in", "out", JobStatus.SUBMITTED, 0.0)
    store.create_job(job)
    return job


def output_line(record_id: str, model_input: object, error_code: int | None = None) -> bytes:
    line: dict[str, object] = {"recordId": record_id, "modelInput": model_input}
    if error_code is None:
        line["modelOutput"] = {"content": [{"type": "text", "text": "ok"}]}
    else:
        line["error"] = {"errorCode": error_code, "errorMessage": "bad"}
    return orjson.dumps(line) + b"\n"


# temp files


def test_a_failed_or_interrupted_write_leaves_no_temp_file(tmp_path: Path) -> None:
    def parts(fault: BaseException) -> Iterator[bytes]:
        yield b"first part\n"
        raise fault

    target = tmp_path / "out" / "a.jsonl.out"
    for fault in (ValueError("broken"), KeyboardInterrupt()):
        with pytest.raises(type(fault)):
            write_durably(target, parts(fault))
        assert list((tmp_path / "out").iterdir()) == []


def test_a_full_disk_is_named_with_its_folder_and_free_space(tmp_path: Path) -> None:
    target = tmp_path / "out" / "a.jsonl.out"
    target.parent.mkdir()
    (target.parent / f".{target.name}.tmp").symlink_to("/dev/full")  # every write there: ENOSPC
    with pytest.raises(DiskFull) as caught:
        write_durably(target, [b"x" * 100_000])
    message = str(caught.value)
    assert message.startswith(f"disk full: no space left on the filesystem of {target.parent} (")
    assert message.endswith(" MB free)")
    assert caught.value.folder == target.parent
    assert list(target.parent.iterdir()) == []


def test_a_merge_that_fails_leaves_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_bytes(b'{"line": 1}\n')
    chunk = ChunkRecord(0, "c.jsonl", LineSet.of([1, 2]), 1, Counts(processed=2))  # the file has one
    target = tmp_path / "out" / "in.jsonl.out"
    with pytest.raises(IncompleteOutput, match="does not match its lines"):
        write_output([chunk], tmp_path, target, 2, [])
    assert list(target.parent.iterdir()) == []


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path: Path) -> None:
    keep = [tmp_path / "a.jsonl.out", tmp_path / "sub" / "b.jsonl.out", tmp_path / "notes.tmp"]
    stale = [tmp_path / ".a.jsonl.out.tmp", tmp_path / "sub" / ".b.jsonl.out.tmp"]
    for path in keep + stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert sorted(remove_temp_files(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
    assert remove_temp_files(tmp_path / "missing") == []


# the state store


def test_status_changes_follow_the_transition_table_as_stored(store: StateStore) -> None:
    job = new_job(store)
    running = store.update_job(job, status=JobStatus.IN_PROGRESS)
    done = store.update_job(running, status=JobStatus.COMPLETED)
    with pytest.raises(IllegalTransition, match="job1: Completed may not become InProgress"):
        store.update_job(done, status=JobStatus.IN_PROGRESS, message="again")
    # a stale copy that still says Submitted may not move the stored Completed either
    with pytest.raises(IllegalTransition, match="Completed may not become Failed"):
        store.update_job(job, status=JobStatus.FAILED)
    stored = store.get_job("job1")
    assert stored is not None and stored.status == JobStatus.COMPLETED and stored.message is None


def test_an_update_writes_only_the_fields_it_names(store: StateStore) -> None:
    job = new_job(store)
    store.update_job(job, status=JobStatus.IN_PROGRESS)
    store.update_job(job, message="paused: provider down")  # job is stale: it still says Submitted
    stored = store.get_job("job1")
    assert stored is not None
    assert stored.status == JobStatus.IN_PROGRESS and stored.message == "paused: provider down"


def test_a_status_change_of_a_missing_job_raises(store: StateStore) -> None:
    ghost = JobRecord("ghost", "echo", "in", "out", JobStatus.SUBMITTED, 0.0)
    with pytest.raises(LookupError, match="ghost"):
        store.update_job(ghost, status=JobStatus.IN_PROGRESS)


def test_writes_repeated_after_a_lost_answer_add_nothing_twice(store: StateStore) -> None:
    job = new_job(store)
    store.create_job(job)  # as a retry would, after a commit whose answer was lost
    chunk = ChunkRecord(0, "00000-a.jsonl", LineSet.of([1, 2]), 1, Counts(processed=2, success=2))
    store.add_chunk("job1", chunk)
    store.add_chunk("job1", chunk)
    assert len(store.list_jobs()) == 1
    assert len(store.chunks("job1")) == 1 and store.counts("job1").processed == 2
    store.forget_chunk("job1", chunk.path)
    assert store.chunks("job1") == [] and store.counts("job1") == Counts()


def test_a_full_sqlite_database_is_named_disk_full(tmp_path: Path) -> None:
    state = StateStore.at(tmp_path / "state.db")
    try:
        engine = state._engine  # cap the file at its current size: SQLite then reports SQLITE_FULL

        @event.listens_for(engine, "connect")
        def _cap(dbapi_conn: object, _record: object) -> None:
            cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
            pages = cursor.execute("PRAGMA page_count").fetchone()[0]
            cursor.execute(f"PRAGMA max_page_count = {pages}")
            cursor.close()

        engine.dispose()
        new_job(state)
        big = Counts(processed=1, error_codes={f"code{i}": 1 for i in range(20_000)})
        with pytest.raises(DiskFull, match=f"disk full: no space left on the filesystem of {tmp_path} "):
            state.add_chunk("job1", ChunkRecord(0, "00000-a.jsonl", LineSet.of([1]), 1, big))
    finally:
        state.close()


def test_a_damaged_state_file_names_the_command_that_moves_it_aside(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    StateStore.at(db).close()
    with db.open("r+b") as f:
        f.write(b"\0" * 100)  # the header gone: "file is not a database"

    with pytest.raises(CorruptStateFile) as caught:
        StateStore.at(db)
    message = str(caught.value)
    assert f"the state file {db} is damaged (file is not a database)" in message
    mv = caught.value.aside
    assert mv.startswith(f"mv {db} {db}.corrupt-") and mv in message
    assert str(caught.value.with_rerun("bulkinfer run x")).endswith("chunk files):\n  bulkinfer run x")

    subprocess.run(mv, shell=True, check=True)
    fresh = StateStore.at(db)
    try:
        assert fresh.list_jobs() == []
    finally:
        fresh.close()


def test_moving_aside_takes_the_journal_files_along(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (tmp_path / name).write_bytes(b"x")
    subprocess.run(moving_aside(db), shell=True, check=True)
    assert sorted(p.name.split(".corrupt-")[0] for p in tmp_path.iterdir()) == [
        "state.db",
        "state.db-shm",
        "state.db-wal",
    ]
    assert all(".corrupt-" in p.name for p in tmp_path.iterdir())


def test_journal_files_left_without_their_state_file_are_set_aside(tmp_path: Path) -> None:
    (tmp_path / "state.db-wal").write_bytes(b"a journal of a file that is gone")
    state = StateStore.at(tmp_path / "state.db")
    try:
        new_job(state)
        assert [j.job_id for j in state.list_jobs()] == ["job1"]
    finally:
        state.close()
    assert len(list(tmp_path.glob("state.db-wal.orphan-*"))) == 1


# repairing and rebuilding chunks


def test_repair_forgets_chunks_whose_file_is_missing_or_short(
    store: StateStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    new_job(store)
    folder = tmp_path / "chunks"
    folder.mkdir()
    for name, lines, written in [
        ("good.jsonl", [1, 2], 2),
        ("short.jsonl", [3, 4], 1),
        ("gone.jsonl", [5], 0),
    ]:
        if written:
            (folder / name).write_bytes(b"{}\n" * written)
        store.add_chunk(
            "job1", ChunkRecord(0, name, LineSet.of(lines), lines[0], Counts(processed=len(lines)))
        )
    committer = Committer(store, "job1", folder, 100, 1.0)
    with caplog.at_level(logging.WARNING):
        found = committer.repair()
    assert len(found) == 2
    assert "chunk short.jsonl holds 1 lines, not 2: its 2 records run again" in caplog.text
    assert "chunk gone.jsonl is missing: its 1 records run again" in caplog.text
    assert [c.path for c in store.chunks("job1")] == ["good.jsonl"]
    assert sorted(p.name for p in folder.iterdir()) == ["good.jsonl"]
    assert committer.repair() == []


def test_rebuild_places_every_output_line_on_its_input_line(tmp_path: Path) -> None:
    records = [anthropic_record(f"R{i:04d}", f"text {i}") for i in range(6)]
    records[2] = anthropic_record(None, "no id: one is generated")
    source = write_jsonl(tmp_path / "in" / "a.jsonl", [*records[:4], b"not json", *records[4:]])
    files = list_inputs(source)
    generated = generated_record_id("job1:a.jsonl", 3)
    bad = generated_record_id("job1:a.jsonl", 5)
    folder = tmp_path / "chunks"
    folder.mkdir()
    first = chunk_name(0, Counts(input_tokens=30, output_tokens=7))
    (folder / first).write_bytes(
        output_line("R0000", records[0]["modelInput"])
        + output_line(generated, records[2]["modelInput"])
        + output_line(bad, None, error_code=400)
    )
    second = chunk_name(0, Counts(input_tokens=5, output_tokens=5))
    (folder / second).write_bytes(output_line("R0005", records[5]["modelInput"]))

    rebuilt = rebuild_chunks(folder, files, "job1", MAX_LINE)
    assert rebuilt.dropped == {}
    by_name = {c.path: c for c in rebuilt.chunks}
    assert list(by_name[first].lines) == [1, 3, 5] and by_name[first].first_line == 1
    assert by_name[first].counts == Counts(3, 2, 1, 30, 7, {"400": 1})
    assert list(by_name[second].lines) == [7]


def test_rebuild_drops_what_it_cannot_place_exactly(tmp_path: Path) -> None:
    records = [anthropic_record(f"R{i:04d}", f"text {i}") for i in range(4)]
    write_jsonl(tmp_path / "in" / "a.jsonl", records)
    write_jsonl(tmp_path / "in" / "b.jsonl", [records[0], records[0]])  # an id twice in one file
    files = list_inputs(tmp_path / "in")
    folder = tmp_path / "chunks"
    folder.mkdir()
    names = [chunk_name(0, Counts()) for _ in range(4)]
    (folder / names[0]).write_bytes(output_line("R0000", records[0]["modelInput"]))
    (folder / names[1]).write_bytes(output_line("R0000", records[0]["modelInput"]))  # line 1 again
    (folder / names[2]).write_bytes(output_line("R0001", {"messages": "changed since"}))
    (folder / names[3]).write_bytes(output_line("NOSUCHID", records[2]["modelInput"]))
    in_b = chunk_name(1, Counts())
    (folder / in_b).write_bytes(output_line("R0000", records[0]["modelInput"]))
    (folder / "00000-old-style.jsonl").write_bytes(output_line("R0003", records[3]["modelInput"]))

    rebuilt = rebuild_chunks(folder, files, "job1", MAX_LINE)
    assert [c.path for c in rebuilt.chunks] == [min(names[:2])]
    dropped = rebuilt.dropped
    assert set(dropped) == {max(names[:2]), names[2], names[3], in_b, "00000-old-style.jsonl"}
    assert "line 1 is there twice" in dropped[max(names[:2])]
    assert "input differs" in dropped[names[2]]
    assert "names no record id" in dropped[names[3]]
    assert "not all unique" in dropped[in_b]
