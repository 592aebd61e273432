"""The provider seam."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bulkinfer.domain.request import ChatRequest, EmbeddingRequest, ImagePart, Outcome, RecordError, Request

if TYPE_CHECKING:
    from bulkinfer.store.provider_jobs import ProviderJobs


@dataclass(frozen=True, slots=True)
class Capabilities:
    chat: bool = False
    embeddings: bool = False
    images: bool = False
    needs_images: bool = False
    """A chat request without an image has nothing for it to answer (the ocr model)."""
    padded_batches: bool = False
    """Batches are padded to their longest request, so sorting by length pays (local models)."""
    native_dialects: frozenset[str] = frozenset()
    """Dialects the model speaks itself: records in them are sent as written (``Request.native``)."""
    keyed: bool = False
    """Requests carry a ``key`` naming their record, sent as an idempotency key (remote providers)."""


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a provider that runs a whole job (a provider batch API) must know of it."""

    job_id: str
    provider_jobs: ProviderJobs
    """Where the job's provider jobs are recorded (its state store)."""
    deadline: float | None = None
    """When the job times out (epoch seconds); None: never."""
    on_demand: Callable[[], Provider] | None = None
    """Loads the model that runs what the batch API cannot (too few records, too late), if there is one."""


class Provider(ABC):
    """A model that answers canonical requests.

    ``infer`` returns exactly one outcome per request, in order; a request it cannot serve gets a
    ``RecordError``, never an exception; one it gave up unsent after ``stop`` gets ``UNSENT``.
    """

    capabilities: Capabilities = Capabilities()

    @abstractmethod
    async def infer(self, requests: Sequence[Request]) -> list[Outcome]:
        """Run a batch of requests."""

    def count_tokens(self, request: Request) -> int:
        """Prompt length in tokens, used to sort and cap micro-batches; a rough estimate by default."""
        return request.char_count() // 4 + 1

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the model."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """The job is stopping: send nothing more. Requests not yet sent may come back ``UNSENT``."""

    def paused(self) -> str | None:
        """Why dispatch is held back right now (a provider that is down), or None while it runs."""
        return None

    def activity(self) -> str | None:
        """What the job's message shows while it runs (the provider jobs behind it), or None."""
        return None

    def refusal(self, request: Request) -> RecordError | None:
        """Why this provider cannot serve a request at all, or None."""
        return refusal(self.capabilities, request)


def refusal(capabilities: Capabilities, request: Request) -> RecordError | None:
    """Why a model of these capabilities cannot serve a request at all, or None: the one judgment of a
    record's kind against a model's, made by the engine per record and by validation from the catalog
    entry alone (``providers.registry.capabilities_of``)."""
    if isinstance(request, EmbeddingRequest) and not capabilities.embeddings:
        message = "modelInput is an embeddings body, but this model does not produce embeddings"
        return RecordError(400, f"{message}; send a chat body")
    if isinstance(request, ChatRequest):
        if not capabilities.chat:
            message = "modelInput is a chat body, but this model only produces embeddings"
            return RecordError(400, f"{message}; send an embeddings body")
        if not capabilities.images and _has_image(request):
            return RecordError(400, "modelInput holds an image, but this model does not accept images")
        if capabilities.needs_images and not _has_image(request):
            message = "modelInput holds no image, but this model reads images and replies with their text"
            return RecordError(400, f"{message}; send an image")
    return None


def _has_image(request: ChatRequest) -> bool:
    return any(isinstance(p, ImagePart) for m in request.messages for p in m.parts)
