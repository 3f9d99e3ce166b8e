"""Rewrite the exported attention (split heads, Q K^T, softmax, times V, merge heads) into onnxruntime's
fused `com.microsoft.MultiHeadAttention`.

Why: the unfused graph materialises every head's full score matrix. For the SD 1.5 UNet at 512x512 that
is 2 x 8 x 4096 x 4096 floats (1 GiB) per self-attention at the top level, which made onnxruntime's peak
twice PyTorch's. The fused CPU kernel tiles the softmax (flash attention), so the score matrix never
exists whole; it measured 0.41 s against 0.88 s and 165 MB against 2.3 GB for one such attention alone.
MultiHeadAttention takes Q, K and V as [batch, length, heads * head_dim], exactly the tensors the model's
`attention()` starts from, and is implemented by onnxruntime's CPU and CUDA providers.

Only attention without a mask is fused (the UNet's and the VAE's); CLIP's causal attention over 77
tokens costs little and stays as exported.
"""

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor

MS_DOMAIN = "com.microsoft"
FUSED_OP = "MultiHeadAttention"
SPLIT_PERM = [0, 2, 1, 3]  # [B, L, H, D] -> [B, H, L, D], and back when merging
KEY_PERM = [0, 2, 3, 1]  # [B, L, H, D] -> [B, H, D, L]: K^T with the heads split in one step
# Constants this small (head counts, scales, shapes) are read from an external data file when stored there.
SMALL_CONSTANT_BYTES = 64


class _Graph:
    """Look-ups over one graph: who produces a tensor, who reads it, what a constant holds."""

    def __init__(self, graph: onnx.GraphProto, base_dir: Path | None) -> None:
        self.graph = graph
        self.base_dir = base_dir
        self.producer = {output: node for node in graph.node for output in node.output}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}

    def node(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(tensor)
        return node if node is not None and node.op_type == op_type else None

    def only_reader(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        readers = self.readers.get(tensor, [])
        if len(readers) == 1 and readers[0].op_type == op_type:
            return readers[0]
        return None

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of an initializer or Constant node output (a small one also from external data)."""
        if tensor in self.initializers:
            return self._initializer(self.initializers[tensor])
        node = self.node(tensor, "Constant")
        if node is None:
            return None
        value = next((attr for attr in node.attribute if attr.name == "value"), None)
        return numpy_helper.to_array(value.t) if value is not None else None

    def _initializer(self, proto: onnx.TensorProto) -> np.ndarray | None:
        if proto.data_location != onnx.TensorProto.EXTERNAL:
            return numpy_helper.to_array(proto)
        length = next((int(entry.value) for entry in proto.external_data if entry.key == "length"), None)
        if self.base_dir is None or length is None or length > SMALL_CONSTANT_BYTES:
            return None
        copy = onnx.TensorProto()
        copy.CopyFrom(proto)
        load_external_data_for_tensor(copy, str(self.base_dir))
        return numpy_helper.to_array(copy)


def _perm(node: onnx.NodeProto | None) -> list[int] | None:
    if node is None:
        return None
    return next((list(attr.ints) for attr in node.attribute if attr.name == "perm"), None)


def _split_input(graph: _Graph, tensor: str, perm: list[int]) -> tuple[str, onnx.NodeProto] | None:
    """For Transpose(Reshape(x, [B, L, H, -1]), perm): x [B, L, H*D] and the Reshape (read for H)."""
    transpose = graph.node(tensor, "Transpose")
    if _perm(transpose) != perm:
        return None
    reshape = graph.node(transpose.input[0], "Reshape")
    return (reshape.input[0], reshape) if reshape is not None else None


def _heads(graph: _Graph, reshape: onnx.NodeProto) -> int | None:
    """H from the split's target shape [B, L, H, D], built either as a constant or by a Concat."""
    shape = graph.constant(reshape.input[1])
    if shape is not None and shape.size == 4:
        return int(shape[2])
    concat = graph.node(reshape.input[1], "Concat")
    if concat is None or len(concat.input) != 4:
        return None
    heads = graph.constant(concat.input[2])
    return int(heads.reshape(-1)[0]) if heads is not None and heads.size == 1 else None


def _match(graph: _Graph, softmax: onnx.NodeProto) -> tuple[onnx.NodeProto, list[str], int, float] | None:
    """The merge Reshape, [q, k, v], heads and scale of one unmasked attention around `softmax`."""
    axis = next((attr.i for attr in softmax.attribute if attr.name == "axis"), -1)
    if axis not in (-1, 3):
        return None
    scores = graph.node(softmax.input[0], "MatMul")
    if scores is None:
        return None
    scaled_q = graph.node(scores.input[0], "Mul")
    if scaled_q is None:
        return None
    q_side = [(name, graph.constant(other)) for name, other in (scaled_q.input, scaled_q.input[::-1])]
    found = [(name, value) for name, value in q_side if value is not None and value.size == 1]
    if not found:
        return None
    q_tensor, scale = found[0]
    q = _split_input(graph, q_tensor, SPLIT_PERM)
    k = _split_input(graph, scores.input[1], KEY_PERM)
    weighted = graph.only_reader(softmax.output[0], "MatMul")
    if q is None or k is None or weighted is None or weighted.input[0] != softmax.output[0]:
        return None
    v = _split_input(graph, weighted.input[1], SPLIT_PERM)
    merge_transpose = graph.only_reader(weighted.output[0], "Transpose")
    if v is None or _perm(merge_transpose) != SPLIT_PERM:
        return None
    merge = graph.only_reader(merge_transpose.output[0], "Reshape")
    heads = _heads(graph, q[1])
    if merge is None or heads is None or heads != _heads(graph, k[1]) or heads != _heads(graph, v[1]):
        return None
    return merge, [q[0], k[0], v[0]], heads, float(scale.reshape(-1)[0])


def fuse_attention(model: onnx.ModelProto, base_dir: Path | None = None) -> int:
    """Replace each unmasked attention in `model`'s main graph by MultiHeadAttention; returns how many.

    Works on a model loaded without its external data (`onnx.load(path, load_external_data=False)`,
    with `base_dir` the graph's folder): no weight is read or changed; nodes are replaced, and
    initializers left unused are dropped from the graph (their bytes stay in the external file).
    """
    graph = _Graph(model.graph, base_dir)
    fused = []
    for softmax in [node for node in model.graph.node if node.op_type == "Softmax"]:
        match = _match(graph, softmax)
        if match is None:
            continue
        merge, qkv, heads, scale = match
        fused.append(
            (
                merge,
                helper.make_node(
                    FUSED_OP,
                    qkv,
                    list(merge.output),
                    name=f"{merge.name or merge.output[0]}_fused",
                    domain=MS_DOMAIN,
                    num_heads=heads,
                    scale=scale,
                ),
            )
        )
    if not fused:
        return 0
    replacements = {id(old): new for old, new in fused}
    nodes = [replacements.get(id(node), node) for node in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _remove_unused(model.graph)
    if not any(opset.domain == MS_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(fused)


def fuse_attention_in_file(path: Path) -> int:
    """fuse_attention on the graph file at `path`, rewritten in place when anything was fused; the
    weights, in the file or in an external data file beside it, stay as written."""
    model = onnx.load(path, load_external_data=False)
    fused = fuse_attention(model, path.parent)
    if fused:
        onnx.save_model(model, path)
    return fused


def _remove_unused(graph: onnx.GraphProto) -> None:
    """Drop the nodes, initializers and shape records that no longer lead to a graph output."""
    needed = {output.name for output in graph.output}
    producer = {output: node for node in graph.node for output in node.output}
    stack = list(needed)
    kept: set[int] = set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in kept:
            continue
        kept.add(id(node))
        new_inputs = [name for name in _all_inputs(node) if name not in needed]
        needed.update(new_inputs)
        stack.extend(new_inputs)
    nodes = [node for node in graph.node if id(node) in kept]
    del graph.node[:]
    graph.node.extend(nodes)
    initializers = [tensor for tensor in graph.initializer if tensor.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    produced = {output for node in nodes for output in node.output}
    value_info = [info for info in graph.value_info if info.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(value_info)


def _all_inputs(node: onnx.NodeProto) -> Iterable[str]:
    """A node's inputs, including those its subgraphs (If/Loop bodies) read from the outer scope."""
    yield from (name for name in node.input if name)
    for attr in node.attribute:
        for subgraph in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in subgraph.node:
                yield from _all_inputs(inner)
