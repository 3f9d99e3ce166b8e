"""Writing an ONNX graph to disk: one file, or one external data file beside it past protobuf's 2 GB."""

from pathlib import Path

import onnx

GRAPH_FILE = "model.onnx"
EXTERNAL_DATA_FILE = GRAPH_FILE + ".data"
# protobuf cannot serialize a message past 2 GiB; keep a margin for the graph itself.
SINGLE_FILE_LIMIT = 2**31 - 2**26


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(tensor.raw_data) for tensor in model.graph.initializer)


def save_graph(model: onnx.ModelProto, path: Path, external: bool = False) -> None:
    """Write `model` to `path`, its weights in `<path>.data` when asked (onnxruntime memory-maps that file
    instead of copying the weights) or when one file cannot hold them."""
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    external = external or initializer_bytes(model) > SINGLE_FILE_LIMIT
    onnx.save_model(
        model, path, save_as_external_data=external, all_tensors_to_one_file=True, location=data.name
    )
    if external:
        # onnx creates the data file owner-only; give it the graph's (umask-default) permissions.
        data.chmod(path.stat().st_mode)
