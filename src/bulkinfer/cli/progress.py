"""Progress display: a live rich bar on a terminal, periodic plain lines otherwise (logs, CI)."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_EVERY_S = 5.0


class JobProgress:
    """Counts finished records and shows them; usable as the engine's ``ProgressSink``.

    ``tokens`` says whether token counts arrive at all (a server's job reports none): without them the
    display has no token rate rather than a false ``0 tok/s``. ``since`` is when ``already_done`` was
    counted (``time.monotonic()``), if before now: rates are taken from then.
    """

    def __init__(
        self,
        console: Console,
        total: int,
        already_done: int,
        *,
        tokens: bool = True,
        since: float | None = None,
    ) -> None:
        self._console = console
        self._with_tokens = tokens
        self._total = max(total, already_done)
        self._done = already_done
        self._run_done = 0
        self._errors = 0
        self._tokens = 0
        self._started = time.monotonic() if since is None else since
        self._last_plain = self._started
        self._live = console.is_terminal
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rec/s"),
            *([TextColumn("{task.fields[tps]} tok/s")] if tokens else []),
            TextColumn("[red]{task.fields[errors]} errors"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        ]
        self._progress = Progress(*columns, console=console, transient=False)
        self._task: TaskID | None = None

    def __enter__(self) -> JobProgress:
        if self._live:
            self._progress.start()
            self._task = self._progress.add_task(
                "records", total=self._total, completed=self._done, rate="0.0", tps="0", errors=0
            )
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live:
            self._progress.stop()
        else:
            self._plain_line()

    def advance(self, records: int, errors: int, input_tokens: int, output_tokens: int) -> None:
        self._done += records
        self._run_done += records
        self._errors += errors
        self._tokens += input_tokens + output_tokens
        elapsed = max(time.monotonic() - self._started, 1e-6)
        if self._task is not None:
            self._progress.update(
                self._task,
                completed=self._done,
                total=max(self._total, self._done),
                rate=f"{self._run_done / elapsed:,.1f}",
                tps=f"{self._tokens / elapsed:,.0f}",
                errors=self._errors,
            )
        elif time.monotonic() - self._last_plain >= PLAIN_EVERY_S:
            self._plain_line()

    def _plain_line(self) -> None:
        self._last_plain = time.monotonic()
        elapsed = max(self._last_plain - self._started, 1e-6)
        tokens = f"{self._tokens / elapsed:,.0f} tok/s, " if self._with_tokens else ""
        self._console.print(
            f"progress: {self._done}/{self._total} records, {self._run_done / elapsed:,.1f} rec/s, "
            f"{tokens}{self._errors} errors",
            highlight=False,
        )
