"""Jobs whose data lives on an S3-protocol server: inputs are staged to local disk, outputs published.

The engine works on local files (durable chunks need fsync and rename, which object stores lack), so a
job's input objects are copied into the data dir while it validates, and its output folder is uploaded
to ``<output-uri>/<job-id>/`` when it ends, as Bedrock's own outputs appear when a job ends.
Credentials come from the standard AWS environment variables.

Both directions survive an S3 server that goes away for a while: a transient failure (connection
refused or reset, a timeout, a 5xx, throttling) is retried with backoff (`bulkinfer.transient`) and
reported to ``on_wait`` as an `Outage`; a refusal (no such bucket or object, access denied, a bad
key or signature) is an `InputError` naming the ``s3://`` URI, at once. Both are idempotent: a fetch
stages afresh, and a publish overwrites every object from its local file, so either can be run again
after a crash at any point. The staged copies stay on disk until `S3Staging.discard`.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bulkinfer.domain.tenant import is_plain_key
from bulkinfer.errors import InputError
from bulkinfer.faults import failpoint
from bulkinfer.transient import Outage, retrying_call

T = TypeVar("T")

#: How long one outage may last before a fetch or publish gives up with its last error. Progress (a
#: listing, an object copied) starts the count again.
PATIENCE_S = 300.0
#: Per request. s3fs's own retry loop and botocore's retries are turned off, so our backoff governs and a
#: dead endpoint is noticed in seconds rather than minutes.
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 15
#: A wall-clock bound on one upload, plus a second per MiB. botocore sends uploads with ``Expect:
#: 100-continue`` and aiohttp waits for the server's interim answer with no timeout at all, so an
#: endpoint that accepts the connection and stays silent would hang an upload forever.
UPLOAD_TIMEOUT_S = 60.0
UPLOAD_MIN_BYTES_PER_S = 1 << 20

# Error codes that say "try again later", whatever their HTTP status.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "ServiceUnavailable",
        "InternalError",
        "XAmzContentSHA256Mismatch",  # the body was damaged on the way (s3fs retries it too)
    }
)
# What s3fs raises, translated from an error response (FileNotFoundError for NoSuchBucket and NoSuchKey,
# PermissionError for AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch), or by itself when a
# path holds nothing; never passes by itself.
_REFUSALS = (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError)


def is_transient_s3(exc: BaseException) -> bool:
    """An S3 failure that may pass by itself: the server unreachable, slow, overloaded or failing (5xx).

    What s3fs raises on a dead endpoint is botocore's own error, not an OSError:
    ``EndpointConnectionError`` (refused), ``ConnectionClosedError`` (reset), ``ReadTimeoutError``;
    an error response becomes an OSError subclass whose ``__cause__`` is botocore's ``ClientError``.
    """
    response = _error_response(exc)
    if response is not None:
        code = response.get("Error", {}).get("Code", "")
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in _TRANSIENT_CODES or status >= 500 or status == 429
    if isinstance(exc, _REFUSALS):
        return False
    if isinstance(exc, OSError):  # refused, reset, timed out (fsspec's FSTimeoutError too)
        return True
    import aiohttp
    from botocore import exceptions as boto
    from botocore.parsers import ResponseParserError

    return isinstance(
        exc,
        boto.ConnectionError  # EndpointConnectionError, ConnectTimeoutError
        | boto.HTTPClientError  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
        | boto.IncompleteReadError
        | ResponseParserError  # a throttling answer that is not even XML (s3fs#484)
        | aiohttp.ClientConnectionError
        | aiohttp.ClientPayloadError,
    )


class S3Staging:
    def __init__(self, endpoint_url: str, data_dir: Path) -> None:
        import s3fs  # the serve extra

        self._fs: Any = s3fs.S3FileSystem(
            endpoint_url=endpoint_url,
            skip_instance_cache=True,  # our own instance: its settings and listing cache are not shared
            config_kwargs={
                "connect_timeout": CONNECT_TIMEOUT_S,
                "read_timeout": READ_TIMEOUT_S,
                "retries": {"total_max_attempts": 1},  # ("max_attempts": 1 would still retry once)
            },
        )
        self._fs.retries = 1  # s3fs's own loop: one try
        self._root = data_dir / "staging"

    def input_dir(self, job_id: str) -> Path:
        return self._root / job_id / "input"

    def output_dir(self, job_id: str) -> Path:
        return self._root / job_id / "output"

    def fetch(
        self,
        job_id: str,
        uri: str,
        on_wait: Callable[[Outage], None] | None = None,
        patience_s: float = PATIENCE_S,
        max_bytes: int | None = None,
    ) -> Path:
        """Copy the job's ``.jsonl`` objects (one object, or every one under a prefix) to local disk and
        return the local file or folder. The objects are copied beside it and moved into place once all
        are there, so the input folder exists only complete. Objects over ``max_bytes`` in all are
        refused from their listing, before a byte is downloaded, and so is a key that would be staged
        outside the job's folder (see `_staged_paths`)."""
        key = _key(uri)
        attempts = _Attempts(on_wait, patience_s)
        found = attempts(uri, "list", functools.partial(self._list, key))
        sizes = {name: size for name, size in found.items() if name.endswith(".jsonl")}
        objects = sorted(sizes)
        if not objects:
            raise InputError(f"{uri}: no .jsonl object there")
        total = sum(sizes.values())
        if max_bytes is not None and total > max_bytes:
            raise InputError(f"{uri}: {total:,} bytes in all, over the {max_bytes:,} a job may hold")
        single = objects == [key]
        base = key.rsplit("/", 1)[0] if single else key
        target = self.input_dir(job_id)
        partial = target.with_name("input.partial")
        for folder in (partial, target):
            shutil.rmtree(folder, ignore_errors=True)
        paths = _staged_paths(objects, base, partial)  # every key is checked before a byte is written
        for name, local in paths.items():
            local.parent.mkdir(parents=True, exist_ok=True)
            attempts(f"s3://{name}", "download", functools.partial(self._fs.get_file, name, str(local)))
        partial.rename(target)
        failpoint("staged")
        return target / key.rsplit("/", 1)[1] if single else target

    def base_dir(self, job_id: str) -> Path:
        """Where a retry job's base outputs are fetched to."""
        return self._root / job_id / "base"

    def fetch_outputs(
        self,
        job_id: str,
        uri: str,
        on_wait: Callable[[Outage], None] | None = None,
        patience_s: float = PATIENCE_S,
    ) -> Path:
        """Copy the output files (``*.out``) under ``uri`` (another job's output folder) for the retry job
        ``job_id``, once: the folder appears only complete, and a later call returns it as it is."""
        target = self.base_dir(job_id)
        if target.is_dir():
            return target
        key = _key(uri)
        attempts = _Attempts(on_wait, patience_s)
        found = attempts(uri, "list", functools.partial(self._list, key))
        objects = sorted(name for name in found if name.startswith(f"{key}/") and name.endswith(".out"))
        partial = target.with_name("base.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name, local in _staged_paths(objects, key, partial).items():
            local.parent.mkdir(parents=True, exist_ok=True)
            attempts(f"s3://{name}", "download", functools.partial(self._fs.get_file, name, str(local)))
        partial.rename(target)
        return target

    def publish(
        self,
        job_id: str,
        uri: str,
        on_wait: Callable[[Outage], None] | None = None,
        patience_s: float = PATIENCE_S,
    ) -> None:
        """Upload the job's outputs to ``<uri>/<job-id>/``. Every object is written whole from its local
        file, so running this again after a crash or a partial upload ends with the same objects."""
        failpoint("publishing")
        local = self.output_dir(job_id) / job_id
        destination = f"{_key(uri)}/{job_id}"
        attempts = _Attempts(on_wait, patience_s)
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            remote = f"{destination}/{path.relative_to(local).as_posix()}"
            attempts(f"s3://{remote}", "upload", functools.partial(self._upload, path, remote))
        failpoint("published")

    def staged_jobs(self) -> list[str]:
        """The jobs with a staging folder here."""
        return sorted(p.name for p in self._root.iterdir() if p.is_dir()) if self._root.is_dir() else []

    def discard(self, job_id: str) -> None:
        """Remove the job's staged input and outputs (once its row says it ended)."""
        shutil.rmtree(self._root / job_id, ignore_errors=True)

    def _upload(self, path: Path, remote: str) -> None:
        timeout = UPLOAD_TIMEOUT_S + path.stat().st_size / UPLOAD_MIN_BYTES_PER_S
        try:
            self._fs.put_file(str(path), remote, timeout=timeout)  # fsspec cancels the call at timeout
        except TimeoutError as exc:  # fsspec's FSTimeoutError
            raise TimeoutError(f"no answer to the upload of {remote} within {timeout:.0f} s") from exc

    def _list(self, key: str) -> dict[str, int]:
        """Every object under the prefix (or the one object ``key`` names) with its size."""
        self._fs.invalidate_cache()  # a retried listing must ask the server, not a cache of before
        found = self._fs.find(key, detail=True)
        return {name: int(info.get("size") or 0) for name, info in found.items()}


@dataclass(frozen=True, slots=True)
class _Attempts:
    """Runs one S3 call with retries of transient failures; turns a refusal into an InputError."""

    on_wait: Callable[[Outage], None] | None
    patience_s: float

    def __call__(self, uri: str, action: str, fn: Callable[[], T]) -> T:
        try:
            return retrying_call(
                fn, what="S3", transient=is_transient_s3, patience_s=self.patience_s, on_wait=self.on_wait
            )
        except Exception as exc:
            refusal = _refusal(exc)
            if refusal is None:
                raise  # a transient failure that outlasted our patience, or not an S3 error at all
            raise InputError(f"{uri}: cannot {action}: {refusal}") from exc


def _key(uri: str) -> str:
    return uri.removeprefix("s3://").rstrip("/")


def _staged_paths(names: list[str], base: str, folder: Path) -> dict[str, Path]:
    """Where each listed object (``bucket/key``) is staged under ``folder``.

    An object key is any string, so a key such as ``in/../../x.jsonl`` would be written outside the job's
    folder; a key holding a ``..``, ``.`` or empty segment is refused rather than normalised (two keys
    could normalise to one file), and so is any path that still resolves elsewhere.
    """
    inside = folder.resolve()
    paths = {}
    for name in names:
        key = name.partition("/")[2]
        if not key or key.endswith("/") or not is_plain_key(key):
            raise InputError(
                f"s3://{name}: an object key may not hold '..', '.' or empty segments; refusing to stage it"
            )
        local = folder / name[len(base) :].lstrip("/")
        if not local.resolve().is_relative_to(inside):
            raise InputError(f"s3://{name}: would be staged outside the job's folder; refusing to stage it")
        paths[name] = local
    return paths


def _error_response(exc: BaseException) -> dict[str, Any] | None:
    """The S3 error response behind an exception (s3fs keeps botocore's ClientError as its cause)."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict) and "Error" in response:
            return response
        seen = seen.__cause__
    return None


def _refusal(exc: BaseException) -> str | None:
    """Why S3 refused, as ``Code: message``; None when ``exc`` is not an S3 refusal."""
    if is_transient_s3(exc):
        return None
    response = _error_response(exc)
    if response is not None:
        error = response["Error"]
        return f"{error.get('Code', '?')}: {error.get('Message', '') or exc}"
    if isinstance(exc, _REFUSALS) and exc.errno is None:  # s3fs's own, not the local disk's (errno set)
        return f"{type(exc).__name__}: {exc}"
    return None
