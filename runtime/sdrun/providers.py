"""Choosing the onnxruntime execution provider and creating sessions on it."""

import contextlib
import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import onnxruntime as ort

from sdrun.errors import ProviderError

PROVIDER_CHOICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_SHORT_NAMES = {CUDA: "cuda", CPU: "cpu"}
# onnxruntime's warnings (e.g. about nodes it keeps on the CPU) are noise for a user of the CLI.
_LOG_ERRORS_ONLY = 3


@dataclass(frozen=True)
class ProviderRequest:
    """The providers to ask onnxruntime for, in order; `strict`: only the first will do."""

    providers: tuple[str, ...]
    strict: bool


def requested_providers(choice: str) -> ProviderRequest:
    """What to ask onnxruntime for: "auto" is CUDA when this onnxruntime offers it (else the CPU), with
    the CPU behind it; "cuda" and "cpu" are strict."""
    if choice not in PROVIDER_CHOICES:
        raise ProviderError(f"unknown provider {choice!r}; choose one of {', '.join(PROVIDER_CHOICES)}")
    cuda_offered = CUDA in ort.get_available_providers()
    if choice == "cuda" and not cuda_offered:
        raise ProviderError(
            f"onnxruntime {ort.__version__} here has no CUDA execution provider "
            "(install onnxruntime-gpu instead of onnxruntime), or use --provider cpu"
        )
    strict = choice != "auto"
    if choice == "cpu" or not cuda_offered:
        return ProviderRequest((CPU,), strict)
    _preload_cuda_libraries()
    return ProviderRequest((CUDA, CPU), strict)


@cache
def _preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries of the nvidia-* wheels (`pip install onnxruntime-gpu[cuda,cudnn]`),
    which onnxruntime does not find by itself. Failures are left to show when the session is created;
    what onnxruntime prints about them would land on our stdout."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
            preload()


def create_session(
    path: Path, request: ProviderRequest, options: ort.SessionOptions | None = None
) -> ort.InferenceSession:
    """A session on the first requested provider that works; for a strict request, only on the first.

    onnxruntime-gpu lists CUDA as available even where its CUDA libraries fail to load, and then quietly
    runs on the CPU, so a strict request checks the session's own providers.
    """
    options = options or ort.SessionOptions()
    options.log_severity_level = _LOG_ERRORS_ONLY
    session = ort.InferenceSession(str(path), sess_options=options, providers=list(request.providers))
    if request.strict and session.get_providers()[0] != request.providers[0]:
        raise ProviderError(
            f"onnxruntime could not start {request.providers[0]} (check that the CUDA and cuDNN "
            "libraries onnxruntime-gpu needs are installed), or use --provider cpu"
        )
    return session


def provider_name(session: ort.InferenceSession) -> str:
    """The short name ("cuda" or "cpu") of the provider the session runs on."""
    first = session.get_providers()[0]
    return _SHORT_NAMES.get(first, first)
