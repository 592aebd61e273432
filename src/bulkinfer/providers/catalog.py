"""The model catalog: built-in entries plus a user's TOML file, validated at the edge."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bulkinfer.domain.tenant import NotGranted
from bulkinfer.errors import ConfigError, UnknownModelError


class PriceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_per_million: float = Field(0.0, ge=0, description="USD per 1M input tokens, on-demand")
    output_per_million: float = Field(0.0, ge=0, description="USD per 1M output tokens, on-demand")
    batch_discount: float = Field(0.0, ge=0, le=1, description="fraction off on-demand for batch jobs")


BATCH_PROVIDERS = frozenset({"openai-batch", "anthropic-batch", "bedrock-batch"})
"""Providers' own batch APIs: a job runs as provider batch jobs (``providers.batchapi``)."""
REMOTE_PROVIDERS = frozenset({"openai", "anthropic", "bedrock"}) | BATCH_PROVIDERS
REMOTE_DEFAULT_DIALECT = {
    "openai": "openai-chat",
    "anthropic": "anthropic",
    "bedrock": "anthropic",
    "openai-batch": "openai-chat",
    "anthropic-batch": "anthropic",
    "bedrock-batch": "anthropic",
}
S3_PREFIX = re.compile(r"s3://[a-z0-9][-.a-z0-9]{1,61}[a-z0-9](/.*)?")
"""A staging prefix: a bucket and, maybe, a folder in it."""
UNLIMITED_CONCURRENCY = 256
"""Records in flight at once for a remote model with no max_concurrency; adaptive concurrency rules below."""


class ImagesEntry(BaseModel):
    """``[models.NAME.images]``: how images are checked and shrunk before this model sees them."""

    model_config = ConfigDict(extra="forbid")

    max_side: int | None = Field(None, ge=1, description="downscale so neither side is longer")
    max_pixels: int | None = Field(None, ge=1, description="downscale to at most this many pixels")
    format: Literal["jpeg", "png", "webp"] | None = Field(None, description="re-encode every image")
    max_bytes: int = Field(20 * 2**20, ge=1, description="larger images are refused")
    max_per_record: int = Field(20, ge=1, description="records with more images are refused")


class ModelEntry(BaseModel):
    """One ``[models.NAME]`` table of a catalog file."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal[
        "echo",
        "transformers",
        "sentence-transformers",
        "ocr",
        "openai",
        "anthropic",
        "bedrock",
        "openai-batch",
        "anthropic-batch",
        "bedrock-batch",
    ]
    description: str = ""
    kind: Literal["chat", "embedding"] = "chat"
    dialects: list[str] = Field(default_factory=lambda: ["anthropic"], min_length=1)
    context_length: int = Field(2048, ge=1)
    default_max_tokens: int = Field(256, ge=1)
    concurrency: int = Field(1, ge=1, le=1024, description="micro-batches in flight at once")
    batch_size: int = Field(8, ge=1, le=65536, description="records per micro-batch")
    token_budget: int = Field(16384, ge=1, description="padded prompt+output tokens per micro-batch")
    price: PriceEntry = Field(default_factory=PriceEntry)
    options: dict[str, Any] = Field(default_factory=dict)
    image_text: Literal["ocr"] | None = Field(
        None, description="give a text-only chat model the text OCR reads in each image, in its place"
    )
    images: ImagesEntry = Field(default_factory=ImagesEntry)
    # Remote providers: where the model is and how hard it may be driven. Unset limits are unlimited.
    base_url: str | None = Field(None, description="API base URL; the SDK's default when unset")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    remote_model: str | None = Field(None, description="the provider's name for the model")
    region: str | None = Field(None, description="AWS region (bedrock)")
    requests_per_minute: float | None = Field(None, gt=0)
    input_tokens_per_minute: float | None = Field(None, gt=0)
    output_tokens_per_minute: float | None = Field(None, gt=0)
    max_concurrency: int | None = Field(None, ge=1, le=4096)
    max_attempts: int = Field(8, ge=1, le=100)
    timeout_seconds: float = Field(60.0, gt=0)
    # Provider batch APIs (provider = "*-batch"): how jobs are cut into provider jobs and followed.
    staging: str | None = Field(
        None, description="s3:// prefix where bedrock-batch stages inputs and outputs"
    )
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint of the staging bucket (bedrock-batch)")
    role_arn: str | None = Field(None, description="IAM role Bedrock reads and writes the staging with")
    max_provider_jobs: int = Field(10, ge=1, le=1000, description="the provider's concurrent batch jobs")
    min_records_per_job: int = Field(1, ge=1, description="smaller provider jobs go to on_demand instead")
    max_records_per_job: int = Field(50_000, ge=1, le=1_000_000)
    max_bytes_per_job: int = Field(200 * 2**20, ge=1024)
    poll_seconds: float = Field(60.0, gt=0, description="the longest wait between polls of a provider job")
    on_demand: str | None = Field(None, description="the catalog model that runs what batch cannot")
    turnaround_hours: float = Field(
        1.0,
        gt=0,
        le=8760,
        description="how long a provider job usually takes; a nearer deadline goes on_demand",
    )


class CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelEntry] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Price:
    input_per_million: float = 0.0
    output_per_million: float = 0.0
    batch_discount: float = 0.0

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        full = input_tokens * self.input_per_million + output_tokens * self.output_per_million
        return full / 1_000_000 * (1 - self.batch_discount)


@dataclass(frozen=True, slots=True)
class ImageSettings:
    max_side: int | None = None
    max_pixels: int | None = None
    format: str | None = None
    max_bytes: int = 20 * 2**20
    max_per_record: int = 20


@dataclass(frozen=True, slots=True)
class RemoteSpec:
    """How to reach a remote model and the limits every job on it shares."""

    base_url: str | None = None
    api_key_env: str | None = None
    remote_model: str = ""
    region: str | None = None
    requests_per_minute: float | None = None
    input_tokens_per_minute: float | None = None
    output_tokens_per_minute: float | None = None
    max_concurrency: int | None = None
    max_attempts: int = 8
    timeout_seconds: float = 60.0
    batch: BatchSpec | None = None
    """Set for a provider batch API (``provider = "*-batch"``)."""


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """How a job on a provider's batch API is cut into provider jobs, and how those are followed."""

    staging: str | None = None
    s3_endpoint_url: str | None = None
    role_arn: str | None = None
    max_provider_jobs: int = 10
    """The provider's concurrent batch jobs for this model, shared by every job on it."""
    min_records_per_job: int = 1
    max_records_per_job: int = 50_000
    max_bytes_per_job: int = 200 * 2**20
    poll_seconds: float = 60.0
    on_demand: str | None = None
    """The catalog model (an on-demand provider) that runs records batch cannot: too few, or too late."""
    turnaround_hours: float = 1.0
    """How long a provider job may take: a job whose deadline is nearer runs on ``on_demand``."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    provider: str
    kind: Literal["chat", "embedding"]
    dialects: tuple[str, ...]
    context_length: int
    default_max_tokens: int
    concurrency: int
    batch_size: int
    token_budget: int
    price: Price
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    remote: RemoteSpec | None = None
    images: ImageSettings = ImageSettings()
    image_text: Literal["ocr"] | None = None
    """``"ocr"``: image parts reach the model as the text read in them (``providers.image_text``)."""
    price_known: bool = True
    """False for a remote model whose entry sets no price: its cost is unknown, not zero."""
    context_known: bool = True
    """False for a remote model whose entry states no context length: only its provider knows it."""

    def estimated_cost(self, input_tokens: int, output_tokens: int) -> float | None:
        """The cost of these tokens in USD; None where the price is not known."""
        return self.price.cost(input_tokens, output_tokens) if self.price_known else None

    @property
    def default_dialect(self) -> str:
        return self.dialects[0]


class Catalog:
    """Models by name."""

    def __init__(self, specs: dict[str, ModelSpec]) -> None:
        self._specs = specs

    @classmethod
    def load(cls, user_file: Path | None = None) -> Catalog:
        builtin = resources.files("bulkinfer.providers").joinpath("catalog.toml").read_text()
        specs = _parse(builtin, "built-in catalog")
        if user_file is not None:
            try:
                text = user_file.read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read model catalog {user_file}: {exc.strerror}") from exc
            specs.update(_parse(text, str(user_file)))
        _check_on_demand(specs, str(user_file))
        return cls(specs)

    def get(self, name: str, visible: Callable[[str], bool] | None = None) -> ModelSpec:
        """A model by name; ``visible`` says which models the caller may use (an unknown name's error
        lists only those; one it may not use is `NotGranted`)."""
        if visible is not None and not visible(name):
            raise NotGranted(f"model {name!r} is not granted to this tenant")
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(n for n in sorted(self._specs) if visible is None or visible(n)) or "none"
            raise UnknownModelError(f"unknown model {name!r}; available models: {known}") from None

    def __iter__(self) -> Any:
        return iter(sorted(self._specs.values(), key=lambda s: s.name))


def _parse(text: str, source: str) -> dict[str, ModelSpec]:
    try:
        data = tomllib.loads(text)
        parsed = CatalogFile.model_validate(data)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"{source}: {where}: unknown key") from exc
        raise ConfigError(f"{source}: {where}: {first['msg']}") from exc
    return {name: _spec(name, entry, source) for name, entry in parsed.models.items()}


def _check_on_demand(specs: dict[str, ModelSpec], source: str) -> None:
    """Each provider batch API's ``on_demand`` names a model of the catalog that is not one itself."""
    for spec in specs.values():
        name = spec.remote.batch.on_demand if spec.remote and spec.remote.batch else None
        if name is None:
            continue
        other = specs.get(name)
        if other is None:
            raise ConfigError(f"{source}: models.{spec.name}.on_demand: no model {name!r} in the catalog")
        if other.remote is not None and other.remote.batch is not None:
            raise ConfigError(f"{source}: models.{spec.name}.on_demand: {name!r} is a batch API itself")
        if other.kind != spec.kind:
            raise ConfigError(f"{source}: models.{spec.name}.on_demand: {name!r} is a {other.kind} model")


def _spec(name: str, entry: ModelEntry, source: str) -> ModelSpec:
    from bulkinfer.dialects.registry import get_dialect

    remote = _remote(name, entry, source)
    dialects = entry.dialects
    if remote is not None and "dialects" not in entry.model_fields_set:
        dialects = [_remote_default_dialect(entry)]
    for dialect in dialects:
        try:
            get_dialect(dialect)
        except ConfigError as exc:
            raise ConfigError(f"{source}: models.{name}.dialects: {exc}") from None
    if entry.image_text is not None and entry.kind != "chat":
        raise ConfigError(f"{source}: models.{name}.image_text: only chat models take this key")
    return ModelSpec(
        name=name,
        provider=entry.provider,
        kind=entry.kind,
        dialects=tuple(dialects),
        context_length=entry.context_length,
        default_max_tokens=entry.default_max_tokens,
        # A remote model takes one record per call; its limits, not micro-batches, bound the work.
        concurrency=_concurrency(entry, remote),
        batch_size=_batch_size(entry, remote),
        token_budget=entry.token_budget,
        price=Price(**entry.price.model_dump()),
        description=entry.description,
        options=dict(entry.options),
        remote=remote,
        images=ImageSettings(**entry.images.model_dump()),
        image_text=entry.image_text,
        price_known=remote is None or "price" in entry.model_fields_set,
        context_known=remote is None or "context_length" in entry.model_fields_set,
    )


def _remote(name: str, entry: ModelEntry, source: str) -> RemoteSpec | None:
    if entry.provider not in REMOTE_PROVIDERS:
        remote_keys = (set(RemoteSpec.__dataclass_fields__) | set(BatchSpec.__dataclass_fields__)) & (
            entry.model_fields_set
        )
        if remote_keys:
            key = sorted(remote_keys)[0]
            raise ConfigError(f"{source}: models.{name}.{key}: only remote providers take this key")
        return None
    return RemoteSpec(
        base_url=entry.base_url,
        api_key_env=entry.api_key_env,
        remote_model=entry.remote_model or name,
        region=entry.region,
        requests_per_minute=entry.requests_per_minute,
        input_tokens_per_minute=entry.input_tokens_per_minute,
        output_tokens_per_minute=entry.output_tokens_per_minute,
        max_concurrency=entry.max_concurrency,
        max_attempts=entry.max_attempts,
        timeout_seconds=entry.timeout_seconds,
        batch=_batch(name, entry, source),
    )


def _batch(name: str, entry: ModelEntry, source: str) -> BatchSpec | None:
    batch_keys = set(BatchSpec.__dataclass_fields__) & entry.model_fields_set
    if entry.provider not in BATCH_PROVIDERS:
        if batch_keys:
            key = sorted(batch_keys)[0]
            raise ConfigError(
                f"{source}: models.{name}.{key}: only provider batch APIs (*-batch) take this key"
            )
        return None
    if entry.provider == "bedrock-batch":
        for key in ("staging", "role_arn"):
            if getattr(entry, key) is None:
                raise ConfigError(f"{source}: models.{name}.{key}: bedrock-batch needs it")
        if S3_PREFIX.fullmatch(str(entry.staging)) is None:
            raise ConfigError(f"{source}: models.{name}.staging: an s3:// prefix, as s3://bucket/prefix/")
    elif entry.staging is not None or entry.role_arn is not None or entry.s3_endpoint_url is not None:
        key = next(k for k in ("staging", "role_arn", "s3_endpoint_url") if getattr(entry, k) is not None)
        raise ConfigError(f"{source}: models.{name}.{key}: only bedrock-batch takes this key")
    if entry.min_records_per_job > entry.max_records_per_job:
        raise ConfigError(f"{source}: models.{name}.min_records_per_job: more than max_records_per_job")
    if entry.on_demand == name:
        raise ConfigError(f"{source}: models.{name}.on_demand: names this model itself")
    return BatchSpec(**{key: getattr(entry, key) for key in BatchSpec.__dataclass_fields__})


def _concurrency(entry: ModelEntry, remote: RemoteSpec | None) -> int:
    if remote is None:
        return entry.concurrency
    if remote.batch is not None:  # a batch is a provider job: as many at once as the provider runs
        return remote.batch.max_provider_jobs
    return remote.max_concurrency or UNLIMITED_CONCURRENCY


def _batch_size(entry: ModelEntry, remote: RemoteSpec | None) -> int:
    if remote is None:
        return entry.batch_size
    # A provider batch API takes a provider job's worth of records at once; any other remote, one.
    return remote.batch.max_records_per_job if remote.batch is not None else 1


def _remote_default_dialect(entry: ModelEntry) -> str:
    if entry.kind == "embedding":
        return "openai-embeddings" if entry.provider in ("openai", "openai-batch") else "titan-embed"
    return REMOTE_DEFAULT_DIALECT[entry.provider]
