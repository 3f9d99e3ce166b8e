"""One component of the model -> one ONNX graph, with torch's dynamo exporter.

Why dynamo (`torch.onnx.export(..., dynamo=True)`) and not the TorchScript tracer: the tracer records
Python-level shape tests as constants, so its SD 1.5 UNet carries two baked branches (batch < 64, sizes
that divide evenly) and breaks on latent sizes the trace did not see; it also writes one file per weight.
The dynamo exporter keeps height, width and batch symbolic through the whole graph (latent 9x13 runs),
writes a smaller graph and a single `model.onnx.data`, and peaked lower (3.9 GB against 4.7 GB for the
SD 1.5 UNet). It is about twice as slow (66 s against 33 s for that UNet), paid once per build.
"""

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from sdexport.export.specs import EXPORT_SIZES, ComponentSpec
from sdexport.models import StableDiffusionConfig
from sdrun.folder_layout import GRAPH_FILE

DEFAULT_OPSET = 18
# The lowest opset whose ops the dynamo exporter emits for these graphs (LayerNormalization is opset 17).
MIN_OPSET = 17


def example_inputs(spec: ComponentSpec, config: StableDiffusionConfig) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    inputs = spec.make_inputs(config, EXPORT_SIZES, generator)
    return tuple(inputs[tensor.name] for tensor in spec.inputs(config))


def export_graph(
    spec: ComponentSpec, module: nn.Module, config: StableDiffusionConfig, folder: Path, opset: int
) -> Path:
    """Export `module` (the spec's wrapper around the model) to `folder/model.onnx`; returns its path."""
    inputs = spec.inputs(config)
    dynamic_shapes = {tensor.name: tensor.dynamic_axes or None for tensor in inputs}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / GRAPH_FILE
    # The exporter narrates each stage on stdout and warns about internals; the build prints its own lines.
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            module,
            example_inputs(spec, config),
            dynamo=True,
            input_names=[tensor.name for tensor in inputs],
            output_names=list(spec.outputs),
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            verbose=False,
        )
    # One file, or (past protobuf's 2 GB) the graph plus one `model.onnx.data`.
    program.save(path)
    return path


@contextlib.contextmanager
def _quiet_exporter():
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
