"""The cost of a job: its committed tokens at its model's catalog price, and the prices used.

One function, `job_cost`, that the manifest, the CLI, the service's job objects and the metrics share,
so a job's cost is worked out one way everywhere. It is given committed tokens only (the state store's
committed sums, or an ended job's final counts), never records still in flight, so a job killed and
resumed counts each record once.

What "no price" means depends on where the model runs:

- a **local** model (echo, transformers, ...) whose entry sets no price costs $0: it runs on your own
  hardware, so there is no per-token charge. That is a known price, not an unknown one.
- a **remote** model whose entry sets no price has an unknown cost: ``usd`` is ``None`` (written as
  ``null``, shown as ``unknown``), never $0.
- a model no longer in the catalog (``spec`` is ``None``) has an unknown cost too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bulkinfer.errors import UserError
from bulkinfer.providers.catalog import Catalog, ModelSpec

PRICE_UNIT = "USD per 1M tokens"
UNKNOWN = "unknown"
FROM_CATALOG = "catalog"
LOCAL_FREE = "local model: no per-token charge"
NO_PRICE = "unknown: the model's catalog entry sets no price"
NOT_IN_CATALOG = "unknown: the model is not in the catalog"


@dataclass(frozen=True, slots=True)
class Prices:
    """The per-token rates a cost was worked out with."""

    source: str
    """Where they came from: `FROM_CATALOG`, `LOCAL_FREE`, `NO_PRICE` or `NOT_IN_CATALOG`."""
    input_per_million: float | None = None
    """On-demand USD per 1M input tokens; None where unknown."""
    output_per_million: float | None = None
    batch_discount: float | None = None
    """The fraction off on-demand that batch jobs get; applied to every job's cost."""

    @property
    def known(self) -> bool:
        return self.input_per_million is not None

    def as_json(self) -> dict[str, Any]:
        """The manifest's and the service's ``prices`` object."""
        return {
            "unit": PRICE_UNIT,
            "inputPerMillion": self.input_per_million,
            "outputPerMillion": self.output_per_million,
            "batchDiscount": self.batch_discount,
            "batchDiscountApplied": self.known,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class JobCost:
    usd: float | None
    """None where the price is unknown: never a made-up $0."""
    prices: Prices


def prices_of(spec: ModelSpec | None) -> Prices:
    """The prices a job on this model is charged at (see the module's docstring)."""
    if spec is None:
        return Prices(NOT_IN_CATALOG)
    if not spec.price_known:
        return Prices(NO_PRICE)
    p = spec.price
    free = p.input_per_million == 0 and p.output_per_million == 0
    source = LOCAL_FREE if spec.remote is None and free else FROM_CATALOG
    return Prices(source, p.input_per_million, p.output_per_million, p.batch_discount)


def job_cost(spec: ModelSpec | None, input_tokens: int, output_tokens: int) -> JobCost:
    """The cost of a job's committed tokens at its model's batch price, with the prices used."""
    usd = None if spec is None else spec.estimated_cost(input_tokens, output_tokens)
    return JobCost(usd, prices_of(spec))


def cost_in(catalog: Catalog, model: str, input_tokens: int, output_tokens: int) -> JobCost:
    """`job_cost` of a model named by a job: unknown where the catalog no longer has it."""
    try:
        spec: ModelSpec | None = catalog.get(model)
    except UserError:
        spec = None
    return job_cost(spec, input_tokens, output_tokens)


def usd_text(usd: float | None) -> str:
    """A cost as the CLI shows it: ``$0.012346``, or ``unknown`` (never ``$0.00`` for unknown)."""
    return UNKNOWN if usd is None else f"${usd:,.6f}"
