"""The tenants a server knows: read once at start-up from ``--tenants FILE`` or ``--access-keys``.

The file is TOML, one table per tenant::

    [tenants.team-a]
    access_keys = { AKIDTEAMA = "TEAM_A_SECRET" }  # key id = the environment variable holding its secret
    api_keys_env = "TEAM_A_API_KEYS"  # the variable holding its API keys (OpenAI/Anthropic), comma-separated
    grants = ["s3://team-a/", "s3://shared/team-a/"]
    read_only = ["s3://reference-data/"]
    models = ["*"]
    max_active_jobs = 20

Secrets never appear in the file or on the command line: each key names the variable that holds it.
A tenant has access keys (SigV4, for boto3), API keys (Bearer or X-Api-Key, for the openai and anthropic
SDKs), or both; each is the same tenant with the same grants, models and limits.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from bulkinfer.api.auth import MAX_API_KEY
from bulkinfer.domain.tenant import ALL_GRANTED, Grants, Tenant, Tenants, normalized_grant
from bulkinfer.errors import ConfigError

SINGLE_TENANT = "default"
"""The tenant that ``--access-keys`` keys form."""
_KEY_ID = re.compile(r"[A-Za-z0-9_+=,.@-]{1,128}")
_VARIABLE = re.compile(r"[A-Z_][A-Z0-9_]*")
"""An environment variable's name as they are written: upper case, so a secret pasted in its place (mixed
case) is never taken for one and echoed back in an error."""

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]


class TenantEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    access_keys: dict[str, str] = {}
    api_keys_env: Annotated[str, StringConstraints(pattern=_VARIABLE.pattern)] | None = None
    grants: list[str] = []
    read_only: list[str] = []
    models: list[str] = ["*"]
    max_active_jobs: int | None = Field(None, ge=1, strict=True)

    @field_validator("grants", "read_only")
    @classmethod
    def _prefixes(cls, prefixes: list[str]) -> list[str]:
        return [normalized_grant(p) for p in prefixes]

    @model_validator(mode="after")
    def _some_key(self) -> TenantEntry:
        if not self.access_keys and self.api_keys_env is None:
            raise ValueError("give access_keys, api_keys_env or both: a tenant no key belongs to is no one")
        return self

    @field_validator("access_keys")
    @classmethod
    def _keys(cls, keys: dict[str, str]) -> dict[str, str]:
        for key, variable in keys.items():
            if not _KEY_ID.fullmatch(key):
                raise ValueError(f"{key!r} is not an access key id (letters, digits, _+=,.@-, ≤128)")
            if not _VARIABLE.fullmatch(variable):  # (a secret pasted here is not echoed back)
                raise ValueError(
                    f"{key}: give the name of the environment variable that holds its secret, not the secret"
                )
        return keys


class TenantsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: dict[Name, TenantEntry] = Field(min_length=1)


def load_tenants(path: Path, environ: Mapping[str, str] | None = None) -> Tenants:
    """The tenants of a file; a ``ConfigError`` naming the file, the key and what is wrong."""
    env = os.environ if environ is None else environ
    try:
        parsed = TenantsFile.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ConfigError(f"cannot read tenants file {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    except ValidationError as exc:
        errors = exc.errors()
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a typo first
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"{path}: {where}: unknown key") from exc
        detail = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{path}: {where}: {detail}") from exc
    by_name: dict[str, Tenant] = {}
    keys: dict[str, tuple[str, str]] = {}
    api_keys: dict[str, str] = {}
    for name, entry in parsed.tenants.items():
        by_name[name] = Tenant(
            name,
            Grants(tuple(entry.grants), tuple(entry.read_only)),
            tuple(entry.models),
            entry.max_active_jobs,
        )
        for key, variable in entry.access_keys.items():
            if key in keys:
                raise ConfigError(f"{path}: tenants.{name}.access_keys: {key} also belongs to {keys[key][0]}")
            secret = env.get(variable, "")
            if not secret:
                raise ConfigError(
                    f"{path}: tenants.{name}.access_keys.{key}: the environment variable {variable} that "
                    "holds its secret is not set (export it before starting the server)"
                )
            keys[key] = (name, secret)
        if entry.api_keys_env is not None:
            _add_api_keys(api_keys, name, entry.api_keys_env, env, f"{path}: tenants.{name}.api_keys_env")
    return Tenants(by_name, keys, api_keys=api_keys)


MIN_API_KEY = 16
"""Shortest API key taken: anything shorter could be guessed."""


def _add_api_keys(
    found: dict[str, str], tenant: str, variable: str, env: Mapping[str, str], where: str
) -> None:
    """The tenant's API keys, from the comma-separated list in ``variable``."""
    keys = [k.strip() for k in env.get(variable, "").split(",") if k.strip()]
    if not keys:
        raise ConfigError(
            f"{where}: the environment variable {variable} that holds its API keys is not set or empty "
            "(export it before starting the server)"
        )
    for number, key in enumerate(keys, 1):
        if (
            not MIN_API_KEY <= len(key) <= MAX_API_KEY
            or not (key.isascii() and key.isprintable())
            or " " in key
        ):
            raise ConfigError(
                f"{where}: API key {number} in {variable} is not {MIN_API_KEY}-{MAX_API_KEY} printable ASCII "
                "characters"
            )
        if key in found:
            raise ConfigError(f"{where}: API key {number} in {variable} also belongs to {found[key]}")
        found[key] = tenant


def check_models(tenants: Tenants, known: Iterable[str]) -> None:
    """Every tenant's model patterns match a model of the catalog (a misspelt one would grant none)."""
    names = list(known)
    for tenant in tenants.by_name.values():
        for pattern in tenant.models:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                raise ConfigError(
                    f"tenants.{tenant.name}.models: {pattern!r} matches no model of the catalog "
                    f"({', '.join(names)})"
                )


def single_tenant(keys: Mapping[str, str], api_keys_env: str | None = None) -> Tenants:
    """``--access-keys``: every key is the one tenant ``default``, granted everything; so is every API
    key in the variable ``api_keys_env`` names (``--api-keys-env``)."""
    if not keys and api_keys_env is None:
        raise ConfigError("--access-keys holds no KEY:SECRET pair")
    tenant = Tenant(SINGLE_TENANT, ALL_GRANTED)
    api_keys: dict[str, str] = {}
    if api_keys_env is not None:
        _add_api_keys(api_keys, SINGLE_TENANT, api_keys_env, os.environ, "--api-keys-env")
    access = {key: (SINGLE_TENANT, secret) for key, secret in keys.items()}
    return Tenants({SINGLE_TENANT: tenant}, access, api_keys=api_keys)


def open_tenants() -> Tenants:
    """``--insecure-dev``: any key is a tenant of its own, granted everything."""
    return Tenants(open=True)
