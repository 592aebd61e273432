"""Job changes announced across replicas: PostgreSQL's NOTIFY on every status change, LISTEN in a
thread, so a replica's scheduler wakes the moment another replica submits, stops or ends a job instead of
finding out at its next look at the store."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

CHANNEL = "bulkinfer_jobs"
RECONNECT_S = 1.0
log = logging.getLogger(__name__)


def announce(conn: Connection, job_id: str) -> None:
    """Tell every listening replica that a job changed; sent when the transaction commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, :job_id)"), {"channel": CHANNEL, "job_id": job_id})


class Listener:
    """Calls ``on_change`` (from its own thread) for each job change another connection announces."""

    def __init__(self, url: str, on_change: Callable[[], None]) -> None:
        self._conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-change-listener", daemon=True)

    def start(self) -> Listener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._on_change()  # anything missed while (re)connecting
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=RECONNECT_S):
                            self._on_change()
            except psycopg.Error as exc:  # the database went away: the poll covers us until it is back
                log.warning("job-change listener: %s; reconnecting", exc)
                self._stop.wait(RECONNECT_S)
