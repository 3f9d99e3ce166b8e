"""Writing an ONNX graph to disk: one file, or one external data file beside it for large weights."""

from pathlib import Path

import onnx

# protobuf cannot serialize a message past 2 GiB, and serializing one holds it twice more (protobuf's
# buffer and Python's bytes: +3.2 GB for the SD 1.5 fp16 UNet's 1.7 GB); past 1 GiB of weights, they are
# written tensor by tensor to the external file instead.
SINGLE_FILE_LIMIT = 2**30


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(tensor.raw_data) for tensor in model.graph.initializer)


def save_graph(model: onnx.ModelProto, path: Path, external: bool = False) -> None:
    """Write `model` to `path`, its weights in `<path>.data` when asked (onnxruntime memory-maps that file
    instead of copying the weights) or when they are large (SINGLE_FILE_LIMIT)."""
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    external = external or initializer_bytes(model) > SINGLE_FILE_LIMIT
    onnx.save_model(
        model, path, save_as_external_data=external, all_tensors_to_one_file=True, location=data.name
    )
    if external:
        # onnx creates the data file owner-only; give it the graph's (umask-default) permissions.
        data.chmod(path.stat().st_mode)
