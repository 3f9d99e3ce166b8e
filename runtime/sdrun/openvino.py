"""onnxruntime's OpenVINO execution provider: its options, and whether a model folder runs whole on it.

The `onnxruntime-openvino` wheel bundles OpenVINO and replaces the `onnxruntime` package (same import
name), so it lives in its own environment (README). What sdrun asks of it:
- the CPU device, in bfloat16 where the CPU has bfloat16 arithmetic (AVX512_BF16 or AMX; OpenVINO's CPU
  plugin then runs the convolutions and matrix products in bf16, the one large lever left on the CPU
  step: onnxruntime's own CPU provider has no bf16 kernels on x86), else f32; `SDRUN_OPENVINO_PRECISION`
  forces either. The provider's own `precision` option accepts only FP32 and ACCURACY on the CPU, so the
  hint goes through `load_config`, OpenVINO's properties as a JSON string;
- OpenVINO's compiled-model cache in the user's cache folder when `SDRUN_OPENVINO_CACHE=1` (OpenVINO keys
  each entry by the graph and the compile properties, so folders and precisions do not mix). It is off
  by default: on the CPU it made starts slower, not faster, and holds a copy of the weights per folder
  and precision (BENCHMARKS.md, "OpenVINO execution provider").
Folders built with `sdexport build --target openvino` run whole on it. Other sdexport folders carry
onnxruntime's fused `com.microsoft.MultiHeadAttention`, which the provider leaves to onnxruntime's CPU
provider (the graph is cut in pieces around each), and int8 folders carry `DynamicQuantizeMatMul`, on
which onnxruntime-openvino 1.24.1 crashes the process (segmentation fault) while creating the session.
"""

import json
import os
import warnings
from pathlib import Path

from sdrun.errors import ProviderError
from sdrun.folder_layout import OPENVINO_TARGET, ManifestFacts

OPENVINO = "OpenVINOExecutionProvider"
PRECISION_ENV = "SDRUN_OPENVINO_PRECISION"
PRECISION_CHOICES = ("auto", "bf16", "f32")
# "1": keep OpenVINO's compiled models in cache_folder(). Off by default: on the CPU, OpenVINO compiles an
# SD 1.5 UNet in about a second, and reading its 3.4 GB cache entry back takes longer (BENCHMARKS.md).
CACHE_ENV = "SDRUN_OPENVINO_CACHE"
# /proc/cpuinfo flags of CPUs with bfloat16 arithmetic (AMD Zen 4+, Intel Cooper Lake; Sapphire Rapids+).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


class SplitGraphWarning(UserWarning):
    """Part of the folder's graphs runs on onnxruntime's CPU provider beside OpenVINO."""


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU lists a bfloat16 arithmetic flag (False where /proc/cpuinfo cannot be read)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()}
    return not BF16_CPU_FLAGS.isdisjoint(flags)


def inference_precision(choice: str | None = None) -> str:
    """"bf16" or "f32": `choice`, else `SDRUN_OPENVINO_PRECISION`, else "auto" (bf16 where the CPU has it)."""
    choice = choice or os.environ.get(PRECISION_ENV) or "auto"
    if choice not in PRECISION_CHOICES:
        raise ProviderError(
            f"OpenVINO precision {choice!r} (from {PRECISION_ENV}): choose one of "
            f"{', '.join(PRECISION_CHOICES)}"
        )
    if choice == "auto":
        return "bf16" if cpu_has_bf16() else "f32"
    return choice


def cache_folder() -> Path:
    """OpenVINO's compiled-model cache: `$XDG_CACHE_HOME/sdrun/openvino`, else `~/.cache/sdrun/openvino`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sdrun" / "openvino"


def provider_options(precision: str) -> dict[str, str]:
    """The OpenVINO provider's options (onnxruntime-openvino 1.24): CPU, `precision`, and the cache when
    `SDRUN_OPENVINO_CACHE=1`."""
    options = {
        "device_type": "CPU",
        "load_config": json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": precision}}),
    }
    if os.environ.get(CACHE_ENV) != "1":
        return options
    cache = cache_folder()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        warnings.warn(f"OpenVINO compiles at every start: no cache folder {cache}: {error}", stacklevel=2)
    else:
        options["cache_dir"] = str(cache)
    return options


def runs_whole(facts: ManifestFacts) -> bool:
    """Whether every node of the folder's graphs runs on OpenVINO: what `sdexport build --target openvino`
    writes. A folder without a manifest is not known to (it may hold nodes that split the graph or crash)."""
    return facts.target == OPENVINO_TARGET and not facts.int8


def check_folder(facts: ManifestFacts) -> None:
    """Refuse a folder the OpenVINO provider would crash on; warn when part of it will run beside."""
    if facts.int8:
        raise ProviderError(
            "int8 folders hold onnxruntime's DynamicQuantizeMatMul, on which onnxruntime's OpenVINO provider "
            "crashes: use `sdexport build --target openvino` (OpenVINO picks bf16 itself), or --provider cpu"
        )
    if facts.fused_attentions and facts.target != OPENVINO_TARGET:
        warnings.warn(
            f"this folder's {facts.fused_attentions} fused attentions run on onnxruntime's CPU provider, "
            "between pieces on OpenVINO; a `sdexport build --target openvino` folder runs whole on OpenVINO",
            SplitGraphWarning,
            stacklevel=2,
        )
