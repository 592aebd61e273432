"""What local (in-process) model providers share: lazy imports, devices, weight caches."""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from bulkinfer.errors import ProviderError

INSTALL_HINT = "install the local extra and a torch build: pip install 'bulkinfer[local]' torch"


def require(module: str, hint: str = INSTALL_HINT) -> ModuleType:
    """Import an optional dependency, or say which install provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ProviderError(f"{module} is not installed: {hint}") from exc


def package_dir(package: str, hint: str) -> Path:
    """A package's folder, found without importing it (some model packages import heavy plug-ins)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ProviderError(f"package {package} is not installed: {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_root() -> Path:
    """Where converted weights are kept: $BULKINFER_CACHE, else the user's cache folder."""
    env = os.environ.get("BULKINFER_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bulkinfer"


def pick_device_and_dtype(torch: Any, wanted: str) -> tuple[str, Any]:
    """cuda when present; bf16 on GPUs and on CPUs with native bf16 math, fp32 otherwise."""
    if torch.cuda.is_available():
        device = "cuda"
        native_bf16 = True
    else:
        device = "cpu"
        native_bf16 = _cpu_has_bf16()
    if wanted == "auto":
        return device, torch.bfloat16 if native_bf16 else torch.float32
    try:
        return device, getattr(torch, wanted)
    except AttributeError:
        raise ProviderError(f"unknown dtype {wanted!r}") from None


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
