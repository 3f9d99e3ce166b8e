"""Choosing the onnxruntime execution provider and creating sessions on it."""

import contextlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import onnxruntime as ort

from sdrun.errors import ModelFolderError, ProviderError
from sdrun.folder_layout import ManifestFacts
from sdrun.openvino import OPENVINO, check_folder, inference_precision, provider_options, runs_whole

PROVIDER_CHOICES = ("auto", "cpu", "cuda", "openvino")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_SHORT_NAMES = {CUDA: "cuda", CPU: "cpu", OPENVINO: "openvino"}
_START_HINTS = {
    CUDA: "check that the CUDA and cuDNN libraries onnxruntime-gpu needs are installed",
    OPENVINO: "onnxruntime printed why above",
}
# onnxruntime's warnings (e.g. about nodes it keeps on the CPU) are noise for a user of the CLI.
_LOG_ERRORS_ONLY = 3


@dataclass(frozen=True)
class ProviderRequest:
    """The providers to ask onnxruntime for, in order; `strict`: only the first will do."""

    providers: tuple[str, ...]
    strict: bool
    # Each provider's options by name (the OpenVINO provider's device, precision and cache).
    options: Mapping[str, dict[str, str]] = field(default_factory=dict)


def requested_providers(choice: str, manifest: Mapping[str, Any] | None = None) -> ProviderRequest:
    """What to ask onnxruntime for, for the folder with this manifest: "auto" is CUDA when this onnxruntime
    offers it, else OpenVINO when it is offered and the folder runs whole on it (sdrun.openvino), else the
    CPU, with the CPU behind each; "cuda", "openvino" and "cpu" are strict."""
    facts = ManifestFacts.read(manifest or {})
    if choice not in PROVIDER_CHOICES:
        raise ProviderError(f"unknown provider {choice!r}; choose one of {', '.join(PROVIDER_CHOICES)}")
    available = ort.get_available_providers()
    cuda_offered, openvino_offered = CUDA in available, OPENVINO in available
    if choice == "cuda" and not cuda_offered:
        raise ProviderError(
            f"onnxruntime {ort.__version__} here has no CUDA execution provider "
            "(install onnxruntime-gpu instead of onnxruntime), or use --provider cpu"
        )
    strict = choice != "auto"
    if choice == "openvino" and not openvino_offered:
        raise ProviderError(
            f"onnxruntime {ort.__version__} here has no OpenVINO execution provider (install "
            "onnxruntime-openvino in its own environment: pip install '.[openvino]'), or use --provider cpu"
        )
    openvino_auto = choice == "auto" and not cuda_offered and openvino_offered and runs_whole(facts)
    if choice == "openvino" or openvino_auto:
        check_folder(facts)
        return ProviderRequest((OPENVINO, CPU), strict, {OPENVINO: provider_options(inference_precision())})
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
    """A session on the first requested provider that works; for a strict request, only on the first. A
    graph onnxruntime cannot load is a one-line ModelFolderError.

    onnxruntime-gpu lists CUDA as available even where its CUDA libraries fail to load, and then quietly
    runs on the CPU, so a strict request checks the session's own providers.
    """
    options = options or ort.SessionOptions()
    options.log_severity_level = _LOG_ERRORS_ONLY
    try:
        session = ort.InferenceSession(
            str(path),
            sess_options=options,
            providers=list(request.providers),
            provider_options=[request.options.get(name, {}) for name in request.providers],
        )
    except Exception as error:  # onnxruntime raises its own classes for unreadable or invalid graphs
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFolderError(
            f"onnxruntime cannot load {path}: {first_line}; export the model folder again"
        ) from error
    wanted = request.providers[0]
    if request.strict and session.get_providers()[0] != wanted:
        raise ProviderError(
            f"onnxruntime could not start {wanted} ({_START_HINTS.get(wanted, 'see above')}), "
            "or use --provider cpu"
        )
    return session


def provider_name(session: ort.InferenceSession) -> str:
    """The short name ("cuda", "openvino" or "cpu") of the provider the session runs on."""
    first = session.get_providers()[0]
    return _SHORT_NAMES.get(first, first)
