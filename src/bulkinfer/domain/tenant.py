"""Who may touch what: tenants, and the ``s3://`` prefixes each is granted.

A grant is a folder prefix (``s3://team-a/`` or ``s3://shared/team-a/``): a tenant may read and write
every URI under one of its grants, and only read under one of its read-only prefixes. Every URI a
tenant's request names (job input and output, image references in its records, the watch folder, the
results routes) is checked here before anything is read or written.

A URI is matched as the literal string it is, so one that a path normalizer (ours, an HTTP client's, an
S3 server's) could read as another (``..``, ``.`` or empty segments) is never granted.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from bulkinfer.errors import UserError

ANONYMOUS = "anonymous"
"""Development mode's tenant for a request without a key."""
_KEY_ID = re.compile(r"[A-Za-z0-9_+=,.@-]{1,128}")
"""What an access key id may be."""
SECRET_KEY_PREFIX = "sk-"
"""How OpenAI's and Anthropic's API keys begin: development mode names such a key's tenant by its hash,
never by the secret itself (a tenant's name is stored, listed and made a folder)."""
EVERYTHING = "s3://"
"""A grant of every bucket."""


class NotGranted(UserError):
    """The caller may not touch this URI or model."""


def is_plain_key(key: str) -> bool:
    """Whether an object key names one place however it is read: no ``..``, ``.`` or empty segment
    (a trailing ``/``, naming a folder, is allowed)."""
    segments = key.removesuffix("/").split("/")
    return key == "" or all(s not in ("", ".", "..") for s in segments)


_BUCKET = re.compile(r"[a-z0-9][-.a-z0-9]{1,61}[a-z0-9]")


def normalized_grant(prefix: str) -> str:
    """A grant as a folder prefix: ``s3://bucket/folder/``. Raises ValueError for anything that could
    never match a URI as written (an upper-case bucket, spaces, a wildcard, a climbing segment)."""
    if prefix == EVERYTHING:
        return prefix
    if not prefix.startswith("s3://"):
        raise ValueError(f"{prefix!r} is not an s3://bucket/prefix/ URI")
    bucket, _, key = prefix.removeprefix("s3://").partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"{prefix!r}: {bucket!r} is not a bucket name (3-63 of a-z, 0-9, '.', '-')")
    if not is_plain_key(key) or key != key.strip() or "*" in key:
        raise ValueError(
            f"{prefix!r}: a grant is a plain prefix (no '..', '.' or empty segment, no spaces at its ends, "
            "no wildcard)"
        )
    return prefix if prefix.endswith("/") else prefix + "/"


@dataclass(frozen=True, slots=True)
class Grants:
    """Prefixes a tenant may read and write, and prefixes it may only read (each ``normalized_grant``)."""

    read_write: tuple[str, ...] = ()
    read_only: tuple[str, ...] = ()

    def may_read(self, uri: str) -> bool:
        return _under(uri, self.read_write + self.read_only)

    def may_write(self, uri: str) -> bool:
        return _under(uri, self.read_write)


ALL_GRANTED = Grants((EVERYTHING,))


def _under(uri: str, prefixes: tuple[str, ...]) -> bool:
    if not uri.startswith("s3://"):
        return False
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not is_plain_key(key):
        return False
    folder = uri if uri.endswith("/") else uri + "/"  # a URI naming a granted folder itself is under it
    return any(uri.startswith(p) or folder == p for p in prefixes)


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    grants: Grants = ALL_GRANTED
    models: tuple[str, ...] = ("*",)
    """Catalog models it may use, as glob patterns."""
    max_active_jobs: int | None = None
    """Jobs from Submitted to Stopping it may have at once; None for no limit."""

    def may_use(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def check_read(self, uri: str, what: str) -> None:
        if not self.grants.may_read(uri):
            raise NotGranted(f"{what}: {uri} is not granted to tenant {self.name!r} for reading")

    def check_write(self, uri: str, what: str) -> None:
        if not self.grants.may_write(uri):
            raise NotGranted(f"{what}: {uri} is not granted to tenant {self.name!r} for writing")

    def check_model(self, model: str) -> None:
        if not self.may_use(model):
            raise NotGranted(f"model {model!r} is not granted to tenant {self.name!r}")


@dataclass(frozen=True, slots=True)
class Tenants:
    """Every tenant, by name and by access key id; built once at start-up.

    ``open`` is the development mode: any key is accepted, each key id is a tenant of its own granted
    everything, and a request with no key at all is the tenant ``anonymous``.
    """

    by_name: Mapping[str, Tenant] = field(default_factory=dict)
    keys: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Access key id to (tenant name, secret)."""
    open: bool = False
    api_keys: Mapping[str, str] = field(default_factory=dict)
    """API key (sent as ``Authorization: Bearer`` or ``X-Api-Key``) to tenant name."""

    def for_key(self, key_id: str) -> tuple[Tenant, str] | None:
        """The tenant an access key belongs to and the key's secret; None for a key not known."""
        found = self.keys.get(key_id)
        if found is None:
            return (Tenant(_dev_name(key_id)), "") if self.open else None
        name, secret = found
        return self.by_name[name], secret

    def for_api_key(self, api_key: str) -> Tenant | None:
        """The tenant an API key belongs to; None for a key not known. In development mode any key is
        accepted: one that could be an access key id is the tenant that key id is (so one person's
        boto3 and openai clients see the same jobs), a provider's secret key (``sk-...``) a tenant named
        by its hash, any other ``anonymous``."""
        name = self.api_keys.get(api_key)
        if name is not None:
            return self.by_name[name]
        if not self.open:
            return None
        if api_key.startswith(SECRET_KEY_PREFIX):  # a real OpenAI or Anthropic key, sent by habit
            return Tenant(SECRET_KEY_PREFIX + hashlib.sha256(api_key.encode()).hexdigest()[:20])
        return Tenant(_dev_name(api_key))

    def get(self, name: str) -> Tenant:
        """A tenant by name; one no longer configured is granted nothing (its jobs read and write
        nothing more)."""
        tenant = self.by_name.get(name)
        if tenant is not None:
            return tenant
        return Tenant(name) if self.open else Tenant(name, Grants(), models=())


def _dev_name(key: str) -> str:
    """Development mode's tenant for a key: the key itself where it could be an access key id and names a
    folder (its files' folder: ``.`` would be the bucket's top, ``..`` above it), else ``anonymous``."""
    return key if _KEY_ID.fullmatch(key) and key not in (".", "..") else ANONYMOUS


def own_area(bucket: str, tenant: str) -> str:
    """The folder of the server's files bucket that is the tenant's own: where the files it uploads
    through the OpenAI Files API, and its batches' outputs, are kept."""
    return f"s3://{bucket}/{tenant}/"


def with_own_areas(tenants: Tenants, bucket: str) -> Tenants:
    """Each tenant granted, besides its grants, its own folder of the server's files bucket."""
    if tenants.open:
        return tenants
    by_name = {
        name: replace(t, grants=replace(t.grants, read_write=(*t.grants.read_write, own_area(bucket, name))))
        for name, t in tenants.by_name.items()
    }
    return replace(tenants, by_name=by_name)
