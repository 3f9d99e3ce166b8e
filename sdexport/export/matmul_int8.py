"""Dynamic int8 matrix products: each product with a constant 2-D weight gets its weight stored in int8
with one symmetric scale (sdexport.export.int8_weights), and its activation quantized to uint8 afresh
on every call, by onnxruntime's contrib ops (com.microsoft): DynamicQuantizeMatMul where the activation
feeds one such product, and one DynamicQuantizeLinear shared by MatMulIntegerToFloat nodes where it feeds
several (attention's query, key and value projections).

This is the graph that onnxruntime makes when it loads the output of its own `quantize_dynamic` (whose
DynamicQuantizeLinear, MatMulInteger, Cast and Mul nodes it fuses into these), made here in place in the
loaded model: `quantize_dynamic` held three copies of the SD 1.5 UNet while it worked (10 GB).

The exporter writes a Linear layer as MatMul, or as Gemm (transposed weight, bias) where its input has
no sequence axis (the UNet's timestep embedding); both are rewritten. Products of two activations
(attention's Q K^T and softmax V) have no constant operand and stay float32.
"""

from collections import Counter
from collections.abc import Callable

import onnx
from onnx import helper, numpy_helper

from sdexport.export.int8_weights import OwnedConstants, symmetric_int8

MS_DOMAIN = "com.microsoft"


def quantize_matmuls(model: onnx.ModelProto) -> int:
    """Rewrite every MatMul, and every Gemm that is one with a bias, of `model` (weights loaded) that has
    its own constant 2-D float32 weight; returns how many. A weight shared with other nodes is left alone."""
    graph = model.graph
    owned_constant = OwnedConstants(graph).get
    found = {index: _weight_of(node, owned_constant) for index, node in enumerate(graph.node)}
    weights = {index: weight for index, weight in found.items() if weight is not None}
    readers = Counter(graph.node[index].input[0] for index in weights)
    quantized_inputs: dict[str, list[str]] = {}
    nodes = []
    for index, node in enumerate(graph.node):
        if index in weights:
            transposed = bool(_attribute(node, "transB", 0))
            weight, scale = _int8_weight(graph, weights[index], transposed)
            activation = node.input[0]
            # The weight's zero point is left out (0), then the bias if there is one.
            tail = ["", node.input[2]] if _has_bias(node) else []
            if readers[activation] == 1:
                # DynamicQuantizeMatMul(A, B, b_scale, b_zero_point, bias)
                _become(node, "DynamicQuantizeMatMul", [activation, weight, scale, *tail])
            else:
                if activation not in quantized_inputs:
                    outputs = [f"{activation}_uint8", f"{activation}_scale", f"{activation}_zero_point"]
                    name = f"{activation}_quantize"
                    nodes.append(helper.make_node("DynamicQuantizeLinear", [activation], outputs, name=name))
                    quantized_inputs[activation] = outputs
                a, a_scale, a_zero_point = quantized_inputs[activation]
                # MatMulIntegerToFloat(A, B, a_scale, b_scale, a_zero_point, b_zero_point, bias)
                _become(node, "MatMulIntegerToFloat", [a, weight, a_scale, scale, a_zero_point, *tail])
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    if weights and all(opset.domain != MS_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(weights)


def _weight_of(
    node: onnx.NodeProto, owned_constant: Callable[[str], onnx.TensorProto | None]
) -> onnx.TensorProto | None:
    """B of a MatMul, or of a Gemm computing A B (+ C), when it is the node's own constant 2-D float32
    weight and the bias, if any, is one constant value per output column (all the contrib ops add)."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm"):
        return None
    weight = owned_constant(node.input[1])
    if weight is None or len(weight.dims) != 2:
        return None
    if node.op_type == "MatMul":
        return weight
    plain = _attribute(node, "transA", 0) == 0
    if not plain or _attribute(node, "alpha", 1.0) != 1.0 or _attribute(node, "beta", 1.0) != 1.0:
        return None
    if _has_bias(node) and ((bias := owned_constant(node.input[2])) is None or len(bias.dims) != 1):
        return None
    return weight


def _has_bias(node: onnx.NodeProto) -> bool:
    return len(node.input) > 2 and bool(node.input[2])


def _int8_weight(graph: onnx.GraphProto, weight: onnx.TensorProto, transposed: bool) -> tuple[str, str]:
    """Replace the weight initializer by its int8 form (K x N) and add its scale; their names."""
    array = numpy_helper.to_array(weight)
    if transposed:
        array = array.T
    quantized, scale = symmetric_int8(array)
    name = weight.name
    weight.CopyFrom(numpy_helper.from_array(quantized, f"{name}_int8"))  # the float32 data goes now
    graph.initializer.append(numpy_helper.from_array(scale, f"{name}_scale"))
    return f"{name}_int8", f"{name}_scale"


def _become(node: onnx.NodeProto, op_type: str, inputs: list[str]) -> None:
    node.op_type, node.domain = op_type, MS_DOMAIN
    del node.input[:], node.attribute[:]
    node.input.extend(inputs)


def _attribute(node: onnx.NodeProto, name: str, default: float) -> float:
    found = [helper.get_attribute_value(attr) for attr in node.attribute if attr.name == name]
    return found[0] if found else default
