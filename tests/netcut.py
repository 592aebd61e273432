"""A loopback TCP proxy whose network a test can cut and restore: the S3 server or database "goes away".

``NetCut(target_port)`` listens on a free 127.0.0.1 port and forwards bytes both ways to the target.
``cut()`` resets every open connection and refuses new ones, so clients see a connection error at once
(not a hang); ``restore()`` forwards again on the *same* port, so a client keeps its endpoint URL.

    with NetCut(moto_port) as net:
        client = boto3.client("s3", endpoint_url=net.url, ...)
        net.cut()       # ConnectionRefusedError / ConnectionResetError from here on
        net.restore()   # works again
        net.cut_after(300_000)  # cuts by itself once clients sent 300 kB more: mid-upload

How the port is kept: a *reservation* socket stays bound to the port (never listening) for the proxy's
whole life, and the listening socket binds the same port beside it (both with SO_REUSEADDR, which Linux
allows while at most one of them listens). While cut, nothing listens, so the kernel answers a connect
with a reset (ECONNREFUSED at once), and because the port stays bound the kernel never hands it out as
the local port of some outgoing connection in the meantime. Linux only, as the test machines are.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

_CHUNK = 64 * 1024


class NetCut:
    """A TCP proxy on 127.0.0.1 in a background thread (an asyncio loop) that can cut the network."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self._reservation = _bound_socket(0)
        self.port: int = self._reservation.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._budget: int | None = None  # bytes clients may still send before cut_after cuts
        self._cutting: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="netcut", daemon=True)
        self._thread.start()
        self.restore()

    @property
    def is_cut(self) -> bool:
        return self._server is None

    def cut(self) -> None:
        """Reset every open connection and refuse new ones; returns once that is so."""
        self._call(self._cut())

    def cut_after(self, nbytes: int) -> None:
        """Cut by itself once ``nbytes`` more bytes have gone from clients to the target, so the network
        fails in the middle of a request (an upload, say), at a place that does not depend on timing."""
        self._call(self._arm(nbytes))

    def restore(self) -> None:
        """Accept and forward connections again, on the same port."""
        self._call(self._restore())

    def close(self) -> None:
        """Cut, stop the loop thread and free the port."""
        if self._loop.is_closed():
            return
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._reservation.close()

    def __enter__(self) -> NetCut:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _restore(self) -> None:
        if self._server is None:
            listener = _bound_socket(self.port)
            listener.listen(128)
            self._server = await asyncio.start_server(self._handle, sock=listener)

    async def _arm(self, nbytes: int) -> None:
        self._budget = nbytes

    async def _cut(self) -> None:
        self._budget = None
        if self._server is not None:
            self._server.close()  # closes the listening socket; connects are refused from now on
            self._server = None
        for task in list(self._handlers):
            task.cancel()  # each handler resets its two connections as it ends
        await asyncio.gather(*self._handlers, return_exceptions=True)
        self._cutting = None

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        writers = [client_w]
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self.target)
            writers.append(upstream_w)
            await asyncio.gather(
                self._pump(client_r, upstream_w, writers, counted=True),
                self._pump(upstream_r, client_w, writers, counted=False),
            )
        except asyncio.CancelledError:
            for writer in writers:  # cut: a reset (RST), as when a server dies, not an orderly close
                _reset(writer)
        except OSError:
            _reset(client_w)  # the target is not there: the client sees its connection reset
        finally:
            for writer in writers:
                writer.close()
            self._handlers.discard(task)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        both: list[asyncio.StreamWriter],
        *,
        counted: bool,
    ) -> None:
        """Copy one direction until end of stream, then pass the end on (a half-close, as HTTP allows).
        A reset on either side is passed on as a reset of both, which also ends the other direction.
        ``counted``: the client-to-target direction, which spends what `cut_after` allows."""
        try:
            while data := await reader.read(_CHUNK):
                if counted and self._budget is not None:
                    data = data[: self._budget]
                    self._budget -= len(data)
                writer.write(data)
                await writer.drain()
                if counted and self._budget == 0:
                    # Not awaited here: the cut cancels this very handler (and every other one).
                    self._cutting = self._cutting or asyncio.create_task(self._cut())
                    await asyncio.Event().wait()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            for each in both:
                _reset(each)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort a connection with a TCP reset: SO_LINGER with a zero timeout makes close() send RST."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _bound_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock
