"""The files table's store on a real SQLite file and, with BULKINFER_TEST_POSTGRES_URL set, on a fresh
PostgreSQL database: rows scoped to their tenant, idempotent adds, paging, expiry."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from bulkinfer.store.files import FileStore, StoredFile
from tests.integration.test_bedrock_api import database

T0 = 1_800_000_000.0


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FileStore]:
    with database(request.param) as url:
        opened = FileStore(url or f"sqlite:///{tmp_path / 'files.db'}")
        yield opened
        opened.close()


def row(
    n: int, tenant: str = "team-a", purpose: str = "batch", expires_at: float | None = None
) -> StoredFile:
    file_id = f"file-{tenant.replace('-', '')}{n:04d}"
    uri = f"s3://bulkinfer-files/{tenant}/files/{file_id}.jsonl"
    return StoredFile(file_id, tenant, f"name {n}.jsonl", purpose, 10 * n, T0 + n, expires_at, uri)


def test_a_row_reads_back_only_for_its_tenant(store: FileStore) -> None:
    added = store.add(row(1))
    assert store.get("team-a", added.file_id) == added
    assert store.get("team-b", added.file_id) is None
    assert store.delete("team-b", added.file_id) is None  # another tenant cannot delete it either
    assert store.get("team-a", added.file_id) == added


def test_adding_an_id_again_returns_the_first_row(store: FileStore) -> None:
    first = store.add(row(1))
    assert store.add(first) == first
    changed = StoredFile(first.file_id, "team-a", "other.jsonl", "batch_output", 99, T0 + 50, None, first.uri)
    assert store.add(changed) == first  # the row as first added, not the second one's values
    with ThreadPoolExecutor(8) as pool:  # registered concurrently: one row, every caller gets it
        assert set(pool.map(lambda _: store.add(row(2)), range(8))) == {row(2)}


def test_an_id_another_tenant_holds_is_refused(store: FileStore) -> None:
    store.add(row(1))
    with pytest.raises(IntegrityError):
        store.add(replace(row(1), tenant="team-b"))
    assert store.get("team-b", row(1).file_id) is None


def test_find_pages_in_creation_order_after_a_cursor(store: FileStore) -> None:
    for n in range(1, 6):
        store.add(row(n, purpose="evals" if n % 2 else "batch"))
    store.add(row(1, tenant="team-b"))
    ids = [row(n).file_id for n in range(1, 6)]
    assert [f.file_id for f in store.find("team-a")] == ids[::-1]
    assert [f.file_id for f in store.find("team-a", order="asc", limit=2)] == ids[:2]
    assert [f.file_id for f in store.find("team-a", order="asc", after=ids[1])] == ids[2:]
    assert [f.file_id for f in store.find("team-a", after=ids[3], limit=2)] == [ids[2], ids[1]]
    assert [f.file_id for f in store.find("team-a", purpose="evals")] == [ids[4], ids[2], ids[0]]
    assert store.find("team-a", after=row(1, tenant="team-b").file_id) == []  # not a cursor of team-a's
    assert [f.file_id for f in store.find("team-b")] == [row(1, tenant="team-b").file_id]


def test_files_made_in_the_same_instant_page_by_id(store: FileStore) -> None:
    same = [replace(row(n), created_at=T0) for n in range(1, 5)]
    for stored in same:
        store.add(stored)
    first = store.find("team-a", limit=2)
    second = store.find("team-a", after=first[-1].file_id, limit=2)
    assert [f.file_id for f in first + second] == sorted((f.file_id for f in same), reverse=True)


def test_expired_lists_rows_whose_time_is_up_and_alive_at_hides_them(store: FileStore) -> None:
    store.add(row(1, expires_at=T0 + 100))
    store.add(row(2, tenant="team-b", expires_at=T0 + 50))
    store.add(row(3, expires_at=T0 + 1000))
    store.add(row(4))
    assert store.expired(T0 + 10) == []
    assert [f.file_id for f in store.expired(T0 + 100)] == [row(2, "team-b").file_id, row(1).file_id]
    assert [f.file_id for f in store.expired(T0 + 100, limit=1)] == [row(2, "team-b").file_id]
    alive = store.find("team-a", alive_at=T0 + 100)
    assert [f.file_id for f in alive] == [row(4).file_id, row(3).file_id]
    assert store.delete("team-a", row(1).file_id) == row(1, expires_at=T0 + 100)
    assert store.delete("team-a", row(1).file_id) is None
    assert [f.file_id for f in store.expired(T0 + 100)] == [row(2, "team-b").file_id]
