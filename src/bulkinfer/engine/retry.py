"""Retry jobs: a new job over a finished job's input that keeps the finished job's successes.

A retry job runs over the same input files as its base job. Before its records run, it *carries over*
each success line of the base's output as an already committed record of its own (through the same
committer as any finished record, so a kill during the carry-over resumes like any job). Its pipeline
then runs everything else: the base's error lines and whatever the base never ran (stopped, expired).
Its output is therefore the combined view by construction: every record once, in input order, the
newest success winning.

The base's output line of an input line is found by walking the input and the base's output in
parallel (both are in input order; a stopped base holds only some records) and comparing record ids;
a line is carried only when the base answered it with a ``modelOutput`` for the same ``modelInput``.
Records without a ``recordId`` get the ids their root job generated (``seed``), so those agree too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bulkinfer.domain.job import Counts
from bulkinfer.domain.lineset import LineSet
from bulkinfer.engine.committer import Committer, Finished
from bulkinfer.engine.finalize import MANIFEST_NAME, merged_lines
from bulkinfer.engine.runner import EngineSettings
from bulkinfer.errors import InputError
from bulkinfer.faults import failpoint
from bulkinfer.formats.bedrock import parse_line
from bulkinfer.formats.jsonl import split_lines
from bulkinfer.storage.files import InputFile, read_blocks
from bulkinfer.store.state import ChunkRecord, StateStore

OUTPUT_LINE_FACTOR = 4
"""An output line holds its input line and the answer: lines up to this many times the input limit."""


@dataclass(frozen=True, slots=True)
class RetryBase:
    """The finished job a retry job takes its successes from, as the retry job's options keep it."""

    job_id: str
    seed: str
    """The job id whose seed generated the ids of records without one: the root of a retry chain."""
    outputs: str
    """The base's output folder, holding ``<input file name>.out`` (the server's: fetched here)."""
    input_tokens: int = 0
    output_tokens: int = 0
    estimated_cost_usd: float | None = 0.0
    chunks: str | None = None
    """The base's chunk folder, read for a file that has no ``.out`` (a local run that stopped)."""
    carried: int | None = None
    """How many records were carried over; set once the carry-over has finished."""

    def to_options(self) -> dict[str, Any]:
        return {
            "of": self.job_id,
            "seed": self.seed,
            "outputs": self.outputs,
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "estimatedCostUSD": self.estimated_cost_usd,
            "chunks": self.chunks,
            "carried": self.carried,
        }

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RetryBase:
        return cls(
            job_id=options["of"],
            seed=options["seed"],
            outputs=options["outputs"],
            input_tokens=int(options.get("inputTokens", 0)),
            output_tokens=int(options.get("outputTokens", 0)),
            estimated_cost_usd=options.get("estimatedCostUSD"),
            chunks=options.get("chunks"),
            carried=options.get("carried"),
        )

    def combined(self, own: Counts, own_cost: float | None) -> tuple[Counts, float | None]:
        """The counts and cost a manifest reports: the combined records, the tokens of both jobs."""
        counts = own + Counts(input_tokens=self.input_tokens, output_tokens=self.output_tokens)
        unknown = own_cost is None or self.estimated_cost_usd is None
        return counts, None if unknown else (own_cost or 0.0) + (self.estimated_cost_usd or 0.0)

    def summary(self, processed: int) -> dict[str, Any]:
        """The manifest's ``retry`` object."""
        carried = self.carried or 0
        return {"of": self.job_id, "carriedRecordCount": carried, "retriedRecordCount": processed - carried}


def base_lines(
    base: RetryBase, f: InputFile, chunks: list[ChunkRecord], max_line_bytes: int
) -> Iterator[bytes]:
    """The base's output lines for one input file, in input order.

    A base that wrote its outputs (it has a manifest): the ``.out`` file of an input file its manifest
    names (another job's outputs may sit in its folder). One that did not (a local run that stopped or
    failed): its committed chunks. Never a file reached through a symbolic link; nothing when there
    is none of these."""
    folder = Path(base.outputs)
    out = folder / f"{f.name}.out"
    manifest = read_manifest(folder)
    if manifest is not None:
        if f.name in manifest.get("inputFiles", []) and _plain_file(folder, out):
            yield from _lines(out, max_line_bytes)
    elif base.chunks is not None and chunks and Path(base.chunks).is_dir():
        for _, data in merged_lines(chunks, Path(base.chunks)):
            yield data
    elif _plain_file(folder, out):
        yield from _lines(out, max_line_bytes)


def _lines(path: Path, max_line_bytes: int) -> Iterator[bytes]:
    for _, line in split_lines(read_blocks(path), OUTPUT_LINE_FACTOR * max_line_bytes):
        if isinstance(line, bytes):
            yield line


def _plain_file(folder: Path, path: Path) -> bool:
    """A regular file reached through no symbolic link below ``folder``: jobs write their outputs by
    replacing files, so a link there was put by someone else, and is never read."""
    between = [folder / p for p in path.relative_to(folder).parents if p != Path(".")]
    return path.is_file() and not path.is_symlink() and not any(p.is_symlink() for p in between)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """A job folder's manifest, if it has one that can be read."""
    path = folder / MANIFEST_NAME
    if not _plain_file(folder, path):
        return None
    try:
        manifest = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        return None
    return manifest if isinstance(manifest, dict) else None


def manifest_usage(manifest: dict[str, Any], job_id: str) -> tuple[int, int, float | None]:
    """A base's tokens and cost as its manifest says them (none: 0). The manifest lies where its tenant
    may write, so anything but the counts a job writes is refused, never summed into the retry's."""
    tokens = [manifest.get(key, 0) for key in ("inputTokenCount", "outputTokenCount")]
    cost = manifest.get("estimatedCostUSD", 0.0)
    counts_ok = all(type(t) is int and 0 <= t < 2**63 for t in tokens)
    cost_ok = cost is None or (type(cost) in (int, float) and math.isfinite(cost) and cost >= 0)
    if not (counts_ok and cost_ok):
        raise InputError(
            f"the manifest of job {job_id} does not hold the token counts and cost a job writes "
            "(inputTokenCount, outputTokenCount, estimatedCostUSD): it was changed since; "
            "its successes cannot be kept"
        )
    return tokens[0], tokens[1], None if cost is None else float(cost)


def carried_lines(
    f: InputFile, base: Iterable[bytes], seed: str, max_line_bytes: int
) -> Iterator[tuple[int, bytes]]:
    """``(input line, the base's output line)`` for each record the base answered successfully.

    Walks the input and the base's output together; an output line is matched to the input line
    with its record id, and carried when it has a ``modelOutput`` (no ``error``) for the same
    ``modelInput``. An output line that matches no input line (the input changed since) stops the
    carrying at that point: what follows runs again, which costs calls but loses nothing.
    """
    outputs = _parsed(base)
    pending = next(outputs, None)
    for number, raw in split_lines(read_blocks(f.path), max_line_bytes):
        if pending is None:
            return
        record = parse_line(raw, number, source=f.name, seed=f"{seed}:{f.name}")
        if pending[0].get("recordId") != record.record_id:
            continue
        output, data = pending
        pending = next(outputs, None)
        succeeded = "modelOutput" in output and "error" not in output
        if succeeded and record.error is None and output.get("modelInput") == record.model_input:
            yield number, data


def _parsed(lines: Iterable[bytes]) -> Iterator[tuple[dict[str, Any], bytes]]:
    for data in lines:
        try:
            output = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue  # not a line any job wrote: it matches nothing
        if isinstance(output, dict):
            yield output, data


def carry_over(
    files: Sequence[InputFile],
    base: RetryBase,
    store: StateStore,
    committer: Committer,
    job_id: str,
    settings: EngineSettings,
    stopping: Callable[[], bool] = lambda: False,
) -> tuple[int | None, int]:
    """Carry the base's successes over into the job ``job_id``, committing those not yet committed,
    ``settings.chunk_records`` at a time. Returns how many records are carried in all (those committed by
    an earlier, interrupted carry-over included; None when ``stopping`` ended it part-way: the next run
    goes on from what is committed) and how many were committed now."""
    carried = committed = 0
    for f in files:
        done = LineSet()
        for chunk in store.chunks(job_id, f.index):
            done = done.union(chunk.lines)
        base_chunks = store.chunks(base.job_id, f.index) if base.chunks is not None else []
        lines = base_lines(base, f, base_chunks, settings.max_line_bytes)
        pending: list[Finished] = []
        for number, data in carried_lines(f, lines, base.seed, settings.max_line_bytes):
            carried += 1
            if number in done:
                continue
            pending.append(Finished(number, data))
            if len(pending) >= settings.chunk_records:
                committer.commit_now(f.index, pending)
                committed += len(pending)
                pending = []
                if stopping():
                    return None, committed
        if pending:
            committer.commit_now(f.index, pending)
            committed += len(pending)
    failpoint("carried")
    return carried, committed
