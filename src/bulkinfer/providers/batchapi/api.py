"""The seam to one provider's batch API: create, follow, read and cancel a provider job.

An adapter knows only its wire: how one request is written as a line of the provider's input, how a
job is created under an idempotency token, what its status says, and how its result lines map back to
outcomes. Slots, polling, merging, resubmission and restarts are `BatchProvider`'s, the same for all.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from bulkinfer.domain.request import Outcome, RecordError, Request
from bulkinfer.store.provider_jobs import ProviderJob

log = logging.getLogger(__name__)
RETRYABLE_CODES = frozenset({408, 429})

Save = Callable[..., Awaitable[ProviderJob]]
"""Writes changes of a provider job's row (``provider_file=...``) before the adapter goes on."""


@dataclass(frozen=True, slots=True)
class Status:
    """A provider job as its provider sees it."""

    state: str
    """The provider's own word (``in_progress``, ``Completed``, ``ended``...), shown as it is."""
    ended: bool
    """No more records will be answered: its results (all, some or none) can be read."""
    total: int = 0
    done: int = 0
    failed: int = 0
    message: str | None = None
    """Why the provider job failed as a whole, where it did."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One result line: the provider's body for a record, or why the record failed there."""

    body: dict[str, Any] | None = None
    error: RecordError | None = None


class SlotsFull(Exception):
    """The provider refused a create because its concurrent-job quota is reached: wait for a slot."""


class BatchApi(ABC):
    """One provider's batch API for one model."""

    native_dialects: frozenset[str] = frozenset()
    keeps_inputs: bool = True
    """Its inputs are kept at the provider before the create (an uploaded file, a staged object), so a
    create a kill interrupted can be sent again without the records (``create(job, None, save)``)."""

    @abstractmethod
    def line(self, custom_id: str, request: Request) -> bytes:
        """The input line that asks for ``request`` under ``custom_id``; raises ``Permanent`` for a
        request the provider cannot be asked (that record's error line)."""

    @abstractmethod
    async def create(self, job: ProviderJob, lines: list[bytes] | None, save: Save) -> str:
        """Create the provider job (idempotently, under ``job.token``) and return the provider's id.
        ``lines`` is None for a create a kill interrupted: one that ``keeps_inputs`` sends it again
        from what it kept (``job.provider_file``); one that does not raises ``Permanent``."""

    @abstractmethod
    async def status(self, provider_id: str) -> Status:
        """Where the provider job is."""

    @abstractmethod
    async def results(self, job: ProviderJob) -> dict[int, Answer]:
        """An ended job's answers by record index; an index missing was not answered."""

    @abstractmethod
    def outcome(self, body: dict[str, Any], request: Request) -> Outcome:
        """A record's result from the body its provider answered with."""

    @abstractmethod
    async def cancel(self, provider_id: str) -> None:
        """Ask the provider to cancel the job (what it finished stays readable)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Close the clients."""


def read_line(raw: bytes, read: Callable[[Any, dict[int, Answer]], None], answers: dict[int, Answer]) -> None:
    """Read one result line with ``read``; a line the provider garbled is skipped (its record, with
    no answer, is sent again), never the end of the file's other answers."""
    if not raw.strip():
        return
    try:
        read(orjson.loads(raw), answers)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("a provider's result line could not be read (%s): %.200r", exc, raw)


def retryable(error: RecordError) -> bool:
    """Whether a record the provider failed may succeed if sent again (resubmitted in a new job)."""
    return error.code >= 500 or error.code in RETRYABLE_CODES
