"""k-diffusion 0.1.1.post1 (the package AUTOMATIC1111's samplers come from), as a test reference only.

scripts/setup.sh test installs it without its dependencies into .venv/k-diffusion (its own pins pull
torchvision, clean-fid and wandb). Its package __init__ imports all of them, so only k_diffusion.sampling
and k_diffusion.external are loaded, under a bare package module, with a stub for the one torchvision
module that k_diffusion.utils imports at the top (neither module uses it).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

KDIFFUSION = Path(__file__).resolve().parents[1] / ".venv" / "k-diffusion"
_PACKAGE = KDIFFUSION / "k_diffusion"

requires_kdiffusion = pytest.mark.skipif(
    not (_PACKAGE / "sampling.py").is_file(),
    reason=f"k-diffusion is not installed at {KDIFFUSION} (bash scripts/setup.sh test installs it)",
)


def _load(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"k_diffusion.{name}", _PACKAGE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load() -> tuple[types.ModuleType, types.ModuleType]:
    """(k_diffusion.sampling, k_diffusion.external)."""
    if "k_diffusion.sampling" not in sys.modules:
        package = types.ModuleType("k_diffusion")
        package.__path__ = [str(_PACKAGE)]
        sys.modules["k_diffusion"] = package
        stubs = []
        if importlib.util.find_spec("torchvision") is None:
            stubs = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional"]
            for name in stubs:
                sys.modules[name] = types.ModuleType(name)
            functional = sys.modules["torchvision.transforms.functional"]
            sys.modules["torchvision.transforms"].functional = functional
        try:
            for name in ("utils", "sampling", "external"):
                setattr(package, name, _load(name))
        finally:
            # A stub left behind has no __spec__, and transformers' and diffusers' checks for torchvision
            # (find_spec) would raise on it in every later test of the same process.
            for name in stubs:
                del sys.modules[name]
    return sys.modules["k_diffusion.sampling"], sys.modules["k_diffusion.external"]
