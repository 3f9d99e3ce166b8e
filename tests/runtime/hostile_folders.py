"""Crafting the hostile model folders and files of test_hostile_inputs.py: what a stranger could hand out."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MANIFEST = "sdexport_manifest.json"


def reseal(folder: Path) -> None:
    """Rewrite the manifest's sizes and digests for the files as they are now, as an attacker who
    edits a folder would (so that the check under test, not the manifest, is what refuses it)."""
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    for name, entry in manifest["files"].items():
        file = folder / name
        if file.is_file():
            entry["size"] = file.stat().st_size
            entry["sha256"] = hashlib.sha256(file.read_bytes()).hexdigest()
    path.write_text(json.dumps(manifest))


def edit_json(folder: Path, name: str, **changes: object) -> None:
    path = folder / name
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
    reseal(folder)


def write_text(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text)
    if name != MANIFEST:
        reseal(folder)


def copy_folder(source: Path, target: Path) -> Path:
    return Path(shutil.copytree(source, target, symlinks=True))


def stored_externally(tensor: TensorProto, location: str) -> TensorProto:
    """`tensor` with its bytes moved to `location` (which onnx leaves as written)."""
    size = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def weights_graph(location: str, values: np.ndarray) -> onnx.ModelProto:
    """y = x + W, W stored as external data at `location` (which onnx leaves as written)."""
    weight = stored_externally(numpy_helper.from_array(values.astype(np.float32), "W"), location)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])],
        "reads_weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(values.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(values.shape))],
        initializer=[weight],
    )
    # IR 10 (onnx 1.16): what onnxruntime 1.23 reads, for tests/runtime/test_old_onnxruntime.py.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def unet_graph(out: str) -> onnx.ModelProto:
    """A UNet-shaped graph (sample, timestep, encoder_hidden_states -> out_sample) whose output is NaN
    (`out` "nan") or has one channel instead of the sample's (`out` "shape")."""
    sample = helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["b", 4, "h", "w"])
    timestep = helper.make_tensor_value_info("timestep", TensorProto.FLOAT, [])
    context = helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, ["b", 77, "c"])
    result = helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, None)
    if out == "nan":
        nan = numpy_helper.from_array(np.array(np.nan, dtype=np.float32), "nan")
        nodes, initializers = [helper.make_node("Mul", ["sample", "nan"], ["out_sample"])], [nan]
    else:
        nodes = [helper.make_node("ReduceMean", ["sample"], ["out_sample"], axes=[1], keepdims=1)]
        initializers = []
    graph = helper.make_graph(nodes, "hostile_unet", [sample, timestep, context], [result], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def function_default_graph(location: str, values: np.ndarray) -> onnx.ModelProto:
    """y = x + W, W the default value of an attribute of a model-local function (FunctionProto field 11),
    stored as external data at `location`: a node calls the function without giving the attribute."""
    weight = stored_externally(numpy_helper.from_array(values.astype(np.float32), "W"), location)
    constant = helper.make_node("Constant", [], ["c"])
    reference = helper.make_attribute_ref("value", onnx.AttributeProto.TENSOR)
    reference.ref_attr_name = "w"
    constant.attribute.append(reference)
    function = helper.make_function(
        "local",
        "AddDefault",
        ["x"],
        ["y"],
        [constant, helper.make_node("Add", ["x", "c"], ["y"])],
        [helper.make_opsetid("", 17)],
    )
    function.attribute_proto.append(helper.make_attribute("w", weight))
    graph = helper.make_graph(
        [helper.make_node("AddDefault", ["x"], ["y"], domain="local")],
        "reads_a_default",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(values.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(values.shape))],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    return helper.make_model(graph, opset_imports=opsets, functions=[function], ir_version=10)


def loop_graph(source: str, out: str, shape: list | None) -> onnx.ModelProto:
    """out = `source` passed through a Loop of 10^15 iterations (a graph whose run would not end)."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["c_in"], ["c_out"]),
            helper.make_node("Identity", ["v_in"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, shape),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, shape),
        ],
    )
    trips = numpy_helper.from_array(np.array(10**15, dtype=np.int64), "trips")
    keep = numpy_helper.from_array(np.array(True), "keep")
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "keep", source], [out], body=body)],
        "loops",
        [helper.make_tensor_value_info(source, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, shape)],
        [trips, keep],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
