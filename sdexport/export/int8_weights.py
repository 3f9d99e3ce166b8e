"""What the int8 rewrites share: symmetric int8 weights, and the float32 constants a rewrite may take over.

Symmetric quantization: zero point 0, scale = max|w| / 127 over the tensor or over each output channel,
values rounded to the nearest (ties to even) and kept within [-127, 127], as onnxruntime's quantizer does.
"""

import numpy as np
import onnx

INT8_MAX = 127


def symmetric_int8(weight: np.ndarray, axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights and float32 scales: one scale for the whole tensor (`axis` None, a 0-d array), or one
    per index along `axis`."""
    if axis is None:
        peak = np.abs(weight).max(initial=0.0)
        shape: tuple[int, ...] = ()
    else:
        peak = np.abs(np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)).max(axis=1)
        shape = tuple(-1 if dim == axis else 1 for dim in range(weight.ndim))
    scale = np.where(peak > 0, peak / INT8_MAX, 1.0).astype(np.float32)
    quantized = np.clip(np.round(weight / scale.reshape(shape)), -INT8_MAX, INT8_MAX)
    return quantized.astype(np.int8), scale


class OwnedConstants:
    """The float32 initializers of a graph that exactly one node reads: a rewrite of that node may replace
    them without touching any other."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self._initializers = {tensor.name: tensor for tensor in graph.initializer}
        self._readers: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                self._readers[name] = self._readers.get(name, 0) + 1

    def get(self, name: str) -> onnx.TensorProto | None:
        tensor = self._initializers.get(name)
        if tensor is None or self._readers[name] != 1 or tensor.data_type != onnx.TensorProto.FLOAT:
            return None
        return tensor
