"""Attention fusion: the exported graphs with MultiHeadAttention still compute what the PyTorch modules do,
every unmasked attention is fused, and CLIP's causal one is left alone."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sdexport.export.attention_fusion import FUSED_OP, fuse_attention
from sdexport.export.onnx_export import export_graph
from sdexport.export.specs import Sizes, component
from sdexport.models import StableDiffusion, StableDiffusionConfig

# Not the export's example size, a latent side the UNet's halvings do not divide, and batch 2.
CHECK_SIZES = Sizes(batch=2, height=9, width=14)


@pytest.fixture(scope="module")
def tiny_model() -> StableDiffusion:
    torch.manual_seed(0)
    return StableDiffusion(StableDiffusionConfig.tiny()).eval()


def _export(model: StableDiffusion, name: str, folder: Path) -> tuple[Path, torch.nn.Module]:
    spec = component(name)
    module = spec.wrap(model).eval()
    return export_graph(spec, module, model.config, folder / name, opset=18), module


def _attention_modules(module: torch.nn.Module) -> int:
    """Unmasked attentions in the PyTorch module: the UNet's self and cross, the VAE's mid-block one."""
    names = [name for name, _ in module.named_modules()]
    return sum(name.endswith((".attn1", ".attn2", "decoder.mid.attn_1")) for name in names)


@pytest.mark.parametrize("name", ["unet", "vae_decoder"])
def test_fused_graph_matches_pytorch(tiny_model: StableDiffusion, tmp_path: Path, name: str) -> None:
    path, module = _export(tiny_model, name, tmp_path)
    graph = onnx.load(path)
    count = fuse_attention(graph)
    onnx.checker.check_model(graph)
    assert count == _attention_modules(module) > 0
    assert sum(node.op_type == FUSED_OP for node in graph.graph.node) == count
    assert not any(node.op_type == "Softmax" for node in graph.graph.node)

    spec = component(name)
    inputs = spec.make_inputs(tiny_model.config, CHECK_SIZES, torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(*inputs.values()).numpy()
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {key: value.numpy() for key, value in inputs.items()})
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4 + 1e-4 * np.abs(expected).max())


def test_causal_text_attention_is_left_as_exported(tiny_model: StableDiffusion, tmp_path: Path) -> None:
    path, _ = _export(tiny_model, "text_encoder", tmp_path)
    graph = onnx.load(path)
    before = graph.SerializeToString()
    assert fuse_attention(graph) == 0
    assert graph.SerializeToString() == before


def test_fusion_reads_no_external_weights(tiny_model: StableDiffusion, tmp_path: Path) -> None:
    """A graph whose weights live in an external file is rewritten without loading them."""
    path, _ = _export(tiny_model, "unet", tmp_path)
    external = tmp_path / "external" / "model.onnx"
    external.parent.mkdir()
    onnx.save_model(
        onnx.load(path), external, save_as_external_data=True, location="model.onnx.data", size_threshold=0
    )
    graph = onnx.load(external, load_external_data=False)
    assert fuse_attention(graph, external.parent) == _attention_modules(component("unet").wrap(tiny_model))
    stored = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert stored and all(not t.raw_data for t in stored)
