"""The simulator's HTTP plumbing: reading bodies, writing provider-shaped answers, resetting connections."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson
from aiohttp import web

from bulkinfer.testing import _anthropic, _openai
from bulkinfer.testing._wire import InvalidRequest, Provider, new_id


@dataclass(frozen=True, slots=True)
class Dialect:
    error_body: Callable[[int, str | None], dict[str, Any]]
    rate_limit_message: Callable[[str, str, int, float], str]


DIALECTS = {
    "openai": Dialect(_openai.error_body, _openai.rate_limit_message),
    "anthropic": Dialect(_anthropic.error_body, _anthropic.rate_limit_message),
}
REQUEST_ID_HEADER = {"openai": "x-request-id", "anthropic": "request-id"}


async def read_json(request: web.Request) -> Mapping[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"could not parse the JSON body of your request: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def raw_response(provider: Provider, status: int, body: bytes, headers: Mapping[str, str]) -> web.Response:
    headers = {**headers, REQUEST_ID_HEADER[provider]: new_id("req_")}
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def json_response(
    provider: Provider, status: int, body: Mapping[str, Any], headers: Mapping[str, str]
) -> web.Response:
    return raw_response(provider, status, orjson.dumps(body), headers)


def error_response(
    provider: Provider, status: int, message: str | None, headers: Mapping[str, str]
) -> web.Response:
    return json_response(provider, status, DIALECTS[provider].error_body(status, message), headers)


def reset_connection(transport: asyncio.Transport) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed server or a load balancer would."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def flushed(request: web.Request) -> None:
    """Wait until everything written has left asyncio's buffer for the kernel's."""
    transport = request.transport
    while transport is not None and transport.get_write_buffer_size() > 0:
        if transport.is_closing():
            raise ConnectionResetError("the connection closed before the answer was sent")
        await asyncio.sleep(0.001)
    if transport is None:
        raise ConnectionResetError("the connection closed before the answer was sent")


async def drop_connection(request: web.Request) -> NoReturn:
    """Reset the call's connection without answering."""
    if request.transport is not None:
        reset_connection(request.transport)
    # handler_cancellation cancels this handler as soon as the loop sees the connection gone.
    await asyncio.Future()
    raise ConnectionResetError("the simulator reset the connection")
