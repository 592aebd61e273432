"""The access log: one ``http.request`` line per HTTP request, written when its answer has been sent.

A line holds the method, the path (never the query string), the status, how long the request took, the
tenant once the `Gate` has found it, and the request id the answer carries (an error's). It never holds
a header or a body: no API key, signature or record reaches the log through it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bulkinfer import logs

log = logging.getLogger(__name__)

REQUEST_ID_HEADERS = (b"x-amzn-requestid", b"x-request-id", b"request-id")
"""Where each API's answers carry their request id (Bedrock's, OpenAI's, Anthropic's)."""
UNANSWERED = 500
"""The status logged for a request whose route raised before any answer started (the server's own
error handler answers it 500)."""


class AccessLog:
    """ASGI middleware; put it outside the `Gate`, so refused requests are logged too."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.WARNING):  # (a 5xx is a warning)
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        answer: dict[str, Any] = {}

        async def send_noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                answer["request_id"] = _request_id(message.get("headers", []))
            await send(message)

        try:
            await self._app(scope, receive, send_noting)
        finally:
            status = int(answer.get("status", UNANSWERED))
            caller = scope.get("state", {}).get("caller")
            logs.event(
                log,
                "http.request",
                f"{scope['method']} {scope['path']} {status}",
                level=logging.WARNING if status >= 500 else logging.INFO,
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
                tenant=caller.tenant.name if caller is not None else None,
                request_id=answer.get("request_id"),
            )


def _request_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() in REQUEST_ID_HEADERS:
            return value.decode("latin-1")
    return None
