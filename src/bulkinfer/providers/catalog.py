"""The model catalog: built-in entries plus a user's TOML file, validated at the edge."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bulkinfer.errors import ConfigError, UnknownModelError


class PriceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_per_million: float = Field(0.0, ge=0, description="USD per 1M input tokens, on-demand")
    output_per_million: float = Field(0.0, ge=0, description="USD per 1M output tokens, on-demand")
    batch_discount: float = Field(0.0, ge=0, le=1, description="fraction off on-demand for batch jobs")


class ModelEntry(BaseModel):
    """One ``[models.NAME]`` table of a catalog file."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["echo", "transformers", "sentence-transformers"]
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
        return cls(specs)

    def get(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(sorted(self._specs))
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
        raise ConfigError(f"{source}: {where}: {first['msg']}") from exc
    return {name: _spec(name, entry, source) for name, entry in parsed.models.items()}


def _spec(name: str, entry: ModelEntry, source: str) -> ModelSpec:
    from bulkinfer.dialects.registry import get_dialect

    for dialect in entry.dialects:
        try:
            get_dialect(dialect)
        except ConfigError as exc:
            raise ConfigError(f"{source}: models.{name}.dialects: {exc}") from None
    return ModelSpec(
        name=name,
        provider=entry.provider,
        kind=entry.kind,
        dialects=tuple(entry.dialects),
        context_length=entry.context_length,
        default_max_tokens=entry.default_max_tokens,
        concurrency=entry.concurrency,
        batch_size=entry.batch_size,
        token_budget=entry.token_budget,
        price=Price(**entry.price.model_dump()),
        description=entry.description,
        options=dict(entry.options),
    )
