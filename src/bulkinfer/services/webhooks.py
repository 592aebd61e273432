"""Webhooks on job state changes: who is told (targets), what they are told (payloads), and the signature.

Two payload styles, one per target, so a receiver parses one shape:

* ``eventbridge``: Amazon EventBridge's "Batch Inference Job State Change" event, sent on every status
  change, so a receiver written for Bedrock gets each event once per change.
* ``openai``: the OpenAI webhook event (``batch.completed``, ``batch.failed``, ``batch.cancelled``,
  ``batch.expired``), sent only when a job ends, as OpenAI does. Anthropic batches get this shape too
  (Anthropic has no batch webhooks to copy), with their ``msgbatch_`` id.

A server-wide target (``--webhook``) is the operator's and may be private; a per-job target (a Bedrock
tag ``bulkinfer:webhook``, an OpenAI batch's ``metadata.bulkinfer_webhook``) comes from a tenant, so the
SSRF guard checks it when the job is made and again at every delivery. Every request is signed per
Standard Webhooks (https://www.standardwebhooks.com) with the one server secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson

from bulkinfer.domain.job import JobStatus
from bulkinfer.errors import ConfigError, UserError
from bulkinfer.media.errors import MediaError
from bulkinfer.media.guard import AddressGuard

Style = Literal["openai", "eventbridge"]

JOB_TAG = "bulkinfer:webhook"
"""The Bedrock job tag whose value is the job's own webhook URL."""
METADATA_KEY = "bulkinfer_webhook"
"""The OpenAI (and Anthropic) batch metadata key whose value is the batch's own webhook URL."""
MAX_MESSAGE = 2000
"""Longest job message in a payload: with a job's name (63) and model id (2048) bounded, so is a body."""

_OPENAI_TYPES = {
    JobStatus.COMPLETED: "batch.completed",
    JobStatus.PARTIALLY_COMPLETED: "batch.expired",  # (the OpenAI API shows a timed-out batch as expired)
    JobStatus.FAILED: "batch.failed",
    JobStatus.STOPPED: "batch.cancelled",
    JobStatus.EXPIRED: "batch.expired",
}
_ID_PREFIX = {"openai": "batch_", "anthropic": "msgbatch_"}


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    style: Style
    guarded: bool
    """A tenant's URL: the SSRF guard checks it at every delivery."""


@dataclass(frozen=True, slots=True)
class Webhooks:
    """The server's webhook configuration, built once from its settings."""

    secret: bytes
    """The signing key (the base64 part of ``whsec_...``, decoded)."""
    targets: tuple[Target, ...] = ()
    """Server-wide targets: told of every job's changes."""
    region: str = "us-east-1"
    account: str = "123456789012"
    fetch_allow: tuple[str, ...] = ()
    """Hosts or CIDRs a per-job URL may point to though private or loopback."""
    retry_base_s: float = 5.0
    """The first retry's delay; each later one waits six times longer, up to `MAX_RETRY_S`."""

    @classmethod
    def of(
        cls,
        urls: list[str],
        secret_env: str | None,
        style: Style = "eventbridge",
        environ: Mapping[str, str] = os.environ,
        **rest: Any,
    ) -> Webhooks | None:
        """The configuration, or None when there is no secret (then no webhook is sent, per-job ones
        included); a URL without a secret, or one that is not http(s), is a `ConfigError`."""
        for url in urls:
            check_scheme(url, "--webhook")
        if secret_env is None:
            if urls:
                raise ConfigError("--webhook needs --webhook-secret-env (the variable holding whsec_...)")
            return None
        secret = parse_secret(environ.get(secret_env, ""), f"--webhook-secret-env {secret_env}")
        targets = tuple(Target(url, style, guarded=False) for url in urls)
        return cls(secret, targets, **rest)


def parse_secret(value: str, where: str) -> bytes:
    """The key of a Standard Webhooks secret, ``whsec_`` and the key in base64."""
    if not value.startswith("whsec_"):
        raise ConfigError(f"{where}: the secret must be whsec_ followed by base64 (empty or unset?)")
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise ConfigError(f"{where}: the part after whsec_ is not base64") from None
    if len(key) < 24:
        raise ConfigError(f"{where}: the key must be at least 24 bytes")
    return key


def check_scheme(url: str, where: str) -> None:
    """Raise a `ConfigError` unless ``url`` is http(s) with a host and a valid port (not 0)."""
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError(f"{where}: {url[:200]!r} is not an http(s) URL")


def job_url(request: Mapping[str, Any], details: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """A job's own webhook URL and the field that named it, if it has one."""
    for tag in request.get("tags") or ():
        if tag.get("key") == JOB_TAG:
            return str(tag.get("value", "")), f"tags[{JOB_TAG}]"
    metadata = (details or {}).get("metadata") or {}
    if METADATA_KEY in metadata:
        return str(metadata[METADATA_KEY]), f"metadata.{METADATA_KEY}"
    return None


async def check_job_url(config: Webhooks | None, request: Mapping[str, Any], details: Any) -> None:
    """Refuse (a `UserError` naming the field) a job whose webhook URL is not http(s), names an
    address the SSRF guard refuses, or is given while the server has no webhook secret."""
    found = job_url(request, details)
    if found is None:
        return
    url, field = found
    if config is None:
        raise UserError(f"{field}: this server sends no webhooks (it has no --webhook-secret-env)")
    try:
        check_scheme(url, field)
        await guard_url(config, url)
    except (ConfigError, MediaError) as exc:
        raise UserError(f"{field}: {exc}") from None
    except (ValueError, UnicodeError):  # a port out of range, a bracket left open, a label too long
        raise UserError(f"{field}: {url[:200]!r} is not a valid URL") from None


async def guard_url(config: Webhooks, url: str) -> None:
    """Raise a `MediaError` if the guard refuses any address of the URL's host."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    await AddressGuard(config.fetch_allow).addresses(parts.hostname or "", port)


def targets_of(config: Webhooks, api: str, request: Mapping[str, Any], details: Any) -> list[Target]:
    """Everyone told of one job's changes: the server's targets and the job's own."""
    own = job_url(request, details)
    if own is None:
        return list(config.targets)
    style: Style = "eventbridge" if api == "bedrock" else "openai"
    return [*config.targets, Target(own[0], style, guarded=True)]


@dataclass(frozen=True, slots=True)
class Change:
    """What a payload says of a job after one of its changes."""

    job_id: str
    name: str
    model_id: str
    api: str
    status: JobStatus
    at: float
    message: str | None = None
    total: int | None = None
    processed: int | None = None
    success: int | None = None
    errors: int | None = None
    region: str | None = None
    """The region in the job's ARN as its maker saw it (None: the server's)."""


def payload(config: Webhooks, style: Style, change: Change, webhook_id: str) -> bytes | None:
    """The body telling ``change`` in ``style``, or None when that style tells nothing of it."""
    body = _openai(change, webhook_id) if style == "openai" else _eventbridge(config, change, webhook_id)
    return None if body is None else orjson.dumps(body)


def _openai(change: Change, webhook_id: str) -> dict[str, Any] | None:
    kind = _OPENAI_TYPES.get(change.status)
    if kind is None:
        return None
    batch = _ID_PREFIX.get(change.api, "batch_") + change.job_id
    return {
        "object": "event",
        "id": webhook_id,
        "type": kind,
        "created_at": int(change.at),
        "data": {"id": batch},
    }


def _eventbridge(config: Webhooks, change: Change, webhook_id: str) -> dict[str, Any]:
    region = change.region or config.region
    arn = f"arn:aws:bedrock:{region}:{config.account}:model-invocation-job/{change.job_id}"
    counts = {
        "totalRecordCount": change.total,
        "processedRecordCount": change.processed,
        "successRecordCount": change.success,
        "errorRecordCount": change.errors,
    }
    detail = {
        "batchJobArn": arn,
        "batchJobName": change.name,
        "batchModelId": change.model_id,
        "status": change.status.value,
        "message": (change.message or "")[:MAX_MESSAGE] or None,
        **{key: value for key, value in counts.items() if value is not None},
    }
    return {
        "version": "0",
        "id": webhook_id,
        "detail-type": "Batch Inference Job State Change",
        "source": "aws.bedrock",
        "account": config.account,
        "time": datetime.fromtimestamp(change.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [arn],
        "detail": {key: value for key, value in detail.items() if value is not None},
    }


def new_webhook_id() -> str:
    """The id a receiver dedupes on: one per event and target, the same on every retry."""
    return f"msg_{uuid.uuid4().hex}"


def tenant_key(server_key: bytes, tenant: str) -> bytes:
    """The key a tenant's own URLs are signed with: derived from the server's, one per tenant, so a
    tenant that verifies its webhooks can sign nothing the server's targets or another tenant trust."""
    return hmac.new(server_key, f"bulkinfer webhooks of tenant {tenant}".encode(), hashlib.sha256).digest()


def secret_text(key: bytes) -> str:
    """A key as Standard Webhooks libraries take it."""
    return f"whsec_{base64.b64encode(key).decode()}"


def signature(secret: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: HMAC-SHA256 of ``{id}.{timestamp}.{body}``, Standard Webhooks."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


def headers(secret: bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": "bulkinfer-webhooks",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, webhook_id, timestamp, body),
    }
