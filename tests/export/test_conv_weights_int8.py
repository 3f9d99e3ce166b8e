"""int8 convolution weights: the graph still computes what the PyTorch UNet does (within int8's tolerance),
the large convolutions' weights are stored as int8, and onnxruntime keeps them int8 in its session."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sdexport.export.conv_weights_int8 import MIN_WEIGHTS, quantize_conv_weights
from sdexport.export.onnx_export import export_graph
from sdexport.export.specs import Sizes, component
from sdexport.models import StableDiffusion, StableDiffusionConfig

CHECK_SIZES = Sizes(batch=2, height=10, width=14)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, StableDiffusionConfig]:
    torch.manual_seed(0)
    model = StableDiffusion(StableDiffusionConfig.tiny()).eval()
    spec = component("unet")
    module = spec.wrap(model).eval()
    path = export_graph(spec, module, model.config, tmp_path_factory.mktemp("unet"), opset=18)
    return path, module, model.config


def _large_convolutions(module: torch.nn.Module) -> int:
    return sum(
        isinstance(layer, torch.nn.Conv2d) and layer.weight.numel() >= MIN_WEIGHTS
        for layer in module.modules()
    )


def test_int8_convolutions_match_pytorch(exported) -> None:  # noqa: ANN001
    path, module, config = exported
    graph = onnx.load(path)
    assert quantize_conv_weights(graph) == _large_convolutions(module) > 0
    onnx.checker.check_model(graph)

    inputs = component("unet").make_inputs(config, CHECK_SIZES, torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = module(*inputs.values()).numpy()
    options = ort.SessionOptions()
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {name: value.numpy() for name, value in inputs.items()})
    # Per-channel int8 weights: about 1% relative error through the tiny UNet's random weights.
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.03


def test_the_session_keeps_the_weights_int8(exported, tmp_path: Path) -> None:  # noqa: ANN001
    path, module, _ = exported
    graph = onnx.load(path)
    count = quantize_conv_weights(graph)
    quantized = tmp_path / "int8.onnx"
    onnx.save(graph, quantized)

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(tmp_path / "optimized.onnx")
    assert sum(node.op_type == "DequantizeLinear" for node in optimized.graph.node) == count
    int8 = [
        t for t in optimized.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4
    ]
    assert len(int8) == count


def test_sliced_convolutions_compute_what_whole_ones_do(exported) -> None:  # noqa: ANN001
    """Slicing a large Conv's output channels (to bound its float32 weight in memory) changes no value:
    the per-channel scales are the same, each slice computes its own channels."""
    path, module, config = exported
    whole, sliced = onnx.load(path), onnx.load(path)
    count = quantize_conv_weights(whole)
    assert quantize_conv_weights(sliced, max_chunk_weights=MIN_WEIGHTS) == count
    def ops(graph: onnx.ModelProto, op_type: str) -> int:
        return sum(node.op_type == op_type for node in graph.graph.node)

    assert ops(sliced, "Concat") > ops(whole, "Concat") and ops(sliced, "Conv") > ops(whole, "Conv")
    onnx.checker.check_model(sliced)

    inputs = component("unet").make_inputs(config, CHECK_SIZES, torch.Generator().manual_seed(3))
    feeds = {name: value.numpy() for name, value in inputs.items()}
    (expected,), (got,) = (
        ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
        for graph in (whole, sliced)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_small_and_shared_weights_are_left_alone() -> None:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    small = numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3), dtype=np.float32), "small")
    shared = numpy_helper.from_array(rng.standard_normal((64, 64, 3, 3), dtype=np.float32), "shared")
    nodes = [
        helper.make_node("Conv", ["x", "small"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["y", "shared"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["z", "shared"], ["c"], pads=[1, 1, 1, 1]),
    ]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
        for name, shape in (("x", [1, 4, 8, 8]), ("y", [1, 64, 8, 8]), ("z", [1, 64, 8, 8]))
    ]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in "abc"]
    graph = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, [small, shared]))
    assert quantize_conv_weights(graph) == 0
