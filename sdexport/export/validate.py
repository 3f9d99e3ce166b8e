"""Check an exported graph against the PyTorch module it came from, on fresh random inputs at several shapes.

Unlike optimum, which only warns, a result past the component's tolerance raises ValidationError: the
build fails and leaves no folder behind.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from sdexport.export.errors import ValidationError
from sdexport.export.specs import ComponentSpec, Sizes, Tolerance
from sdexport.models import StableDiffusionConfig

# Not the export example's seed: validation inputs are ones the exporter never saw.
VALIDATION_SEED = 1234


@dataclass(frozen=True)
class Check:
    """One output at one input shape: the largest absolute difference and the bound it had to meet."""

    sizes: Sizes
    input_shapes: str
    output: str
    max_abs_error: float
    limit: float

    @property
    def passed(self) -> bool:
        return bool(self.max_abs_error <= self.limit)  # NaN fails

    def as_json(self) -> dict[str, object]:
        return {
            "batch": self.sizes.batch,
            "latent_height": self.sizes.height,
            "latent_width": self.sizes.width,
            "inputs": self.input_shapes,
            "output": self.output,
            "max_abs_error": self.max_abs_error,
            "limit": self.limit,
        }


def check_signature(spec: ComponentSpec, config: StableDiffusionConfig, signature: dict[str, Any]) -> None:
    """The graph's inputs are the spec's (names, dtypes, fixed sizes, dynamic axes) and its outputs are
    named as the spec says: the folder's contract with every runtime that reads it."""
    declared = [_describe(t.name, t.dtype, t.shape) for t in spec.inputs(config)]
    declared += list(spec.outputs)
    found = [_describe(v["name"], v["dtype"], v["shape"]) for v in signature["inputs"]]
    found += [value["name"] for value in signature["outputs"]]
    if found != declared:
        raise ValidationError(
            f"{spec.name}: the graph has {'; '.join(found)} where the folder needs {'; '.join(declared)}"
        )


def _describe(name: str, dtype: str, shape: Sequence[int | str]) -> str:
    dims = ", ".join(str(d) if isinstance(d, int) else "dynamic" for d in shape)
    return f"input {name} {dtype} [{dims}]"


def open_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: fp16 graphs log a line per CPU fallback
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def validate_graph(
    spec: ComponentSpec,
    module: nn.Module,
    config: StableDiffusionConfig,
    graph: Path,
    tolerance: Tolerance,
    shapes: tuple[Sizes, ...],
) -> list[Check]:
    """Run `graph` with onnxruntime (CPU) and `module` with PyTorch on the same inputs at each shape.

    Returns every check; raises ValidationError naming the worst one when any is past `tolerance`.
    """
    session = open_session(graph)
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    checks = []
    for sizes in shapes:
        inputs = spec.make_inputs(config, sizes, generator)
        with torch.no_grad():
            expected = module(*(inputs[tensor.name] for tensor in spec.inputs(config)))
        expected = expected if isinstance(expected, tuple) else (expected,)
        feeds = {name: tensor.numpy() for name, tensor in inputs.items()}
        shapes = ", ".join(f"{name} {list(array.shape)}" for name, array in feeds.items())
        actual = session.run(list(spec.outputs), feeds)
        for name, want, got in zip(spec.outputs, expected, actual, strict=True):
            want = want.numpy()
            if got.shape != want.shape:
                raise ValidationError(
                    f"{spec.name}: output {name} has shape {list(got.shape)} from onnxruntime and "
                    f"{list(want.shape)} from PyTorch, for inputs {shapes}"
                )
            error = float(np.max(np.abs(got.astype(np.float64) - want)))
            checks.append(Check(sizes, shapes, name, error, tolerance.limit(float(np.max(np.abs(want))))))
    failed = [check for check in checks if not check.passed]
    if failed:
        worst = max(failed, key=lambda check: check.max_abs_error / check.limit)
        raise ValidationError(
            f"{spec.name}: onnxruntime and PyTorch differ by {worst.max_abs_error:.3g} in {worst.output} "
            f"(allowed {worst.limit:.3g}), for inputs {worst.input_shapes}"
        )
    return checks
