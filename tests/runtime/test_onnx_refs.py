"""The graph walk of sdrun.onnx_refs against graphs built with the onnx package: every place a tensor can
live is found (each case fails if the walk skips that place), locations that onnxruntime reads in a
special way are refused, and so are subgraphs that run an unbounded number of times and padded files."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from hostile_folders import function_default_graph, loop_graph, stored_externally, weights_graph
from onnx import TensorProto, helper, numpy_helper

from sdrun import onnx_refs
from sdrun.errors import ModelFolderError
from sdrun.onnx_refs import external_data_references

VALUES = np.arange(4, dtype=np.float32)
X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
OPSET = [helper.make_opsetid("", 17)]


def _stored(name: str = "W", location: str = "w.bin") -> TensorProto:
    return stored_externally(numpy_helper.from_array(VALUES, name), location)


def _model(nodes: list, initializer: list | None = None, **fields: object) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [X], [Y], initializer or [])
    return helper.make_model(graph, opset_imports=OPSET, ir_version=10, **fields)


def _add(weight: str = "W") -> onnx.NodeProto:
    return helper.make_node("Add", ["x", weight], ["y"])


def _initializer() -> onnx.ModelProto:
    return _model([_add()], [_stored()])


def _sparse_initializer() -> onnx.ModelProto:
    model = _model([_add()])
    sparse = model.graph.sparse_initializer.add()
    sparse.values.CopyFrom(_stored("W"))
    sparse.indices.CopyFrom(numpy_helper.from_array(np.arange(4, dtype=np.int64), "W_indices"))
    sparse.dims.extend([4])
    return model


def _constant_node() -> onnx.ModelProto:
    return _model([helper.make_node("Constant", [], ["W"], value=_stored()), _add()])


def _attribute_tensor_list() -> onnx.ModelProto:
    node = helper.make_node("Identity", ["x"], ["y"])
    node.attribute.append(helper.make_attribute("tensors", [_stored()]))
    return _model([node])


def _if_branch() -> onnx.ModelProto:
    out = helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])
    then = helper.make_graph([helper.make_node("Identity", ["W"], ["b"])], "then", [], [out], [_stored()])
    otherwise = helper.make_graph([helper.make_node("Identity", ["x"], ["b"])], "else", [], [out])
    condition = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=otherwise)
    return _model([node], [condition])


def _function_node() -> onnx.ModelProto:
    body = [helper.make_node("Constant", [], ["W"], value=_stored()), _add()]
    function = helper.make_function("local", "F", ["x"], ["y"], body, OPSET)
    model = _model([helper.make_node("F", ["x"], ["y"], domain="local")], functions=[function])
    model.opset_import.append(helper.make_opsetid("local", 1))
    return model


def _function_attribute_default() -> onnx.ModelProto:
    return function_default_graph("w.bin", VALUES)


def _training_info() -> onnx.ModelProto:
    model = _model([helper.make_node("Identity", ["x"], ["y"])])
    model.training_info.add().initialization.CopyFrom(helper.make_graph([], "init", [], [], [_stored()]))
    return model


PLACES = {
    "initializer": _initializer,
    "sparse initializer": _sparse_initializer,
    "Constant node": _constant_node,
    "attribute tensor list": _attribute_tensor_list,
    "If branch": _if_branch,
    "function node": _function_node,
    "function attribute default": _function_attribute_default,
    "training info": _training_info,
}


def _save(model: onnx.ModelProto, tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("place", PLACES)
def test_every_place_a_tensor_can_live_is_found(place: str, tmp_path: Path) -> None:
    (reference,) = external_data_references(_save(PLACES[place](), tmp_path))
    assert (reference.tensor, reference.location, reference.offset, reference.length) == ("W", "w.bin", 0, 16)


@pytest.mark.parametrize(
    "location", ["*/_ORT_MEM_ADDR_/*", "_ORT_MEM_ADDR_", "C:weights.bin", "a\\b.bin", "w.bin?x", "w bin", ""]
)
def test_special_locations_are_refused(location: str, tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="plain relative file name|names no location"):
        external_data_references(_save(weights_graph(location, VALUES), tmp_path))


@pytest.mark.parametrize("location", ["model.onnx_data", "model.onnx.data", "weights/part-1+2.bin"])
def test_plain_locations_pass(location: str, tmp_path: Path) -> None:
    (reference,) = external_data_references(_save(weights_graph(location, VALUES), tmp_path))
    assert reference.location == location


def _loop() -> onnx.ModelProto:
    return loop_graph("x", "y", [4])


def _loop_in_a_function() -> onnx.ModelProto:
    model = _loop()
    function = helper.make_function("local", "F", ["x"], ["y"], list(model.graph.node), OPSET)
    model.graph.ClearField("node")
    model.graph.node.append(helper.make_node("F", ["x"], ["y"], domain="local"))
    model.functions.append(function)
    return model


def _beam_search() -> onnx.ModelProto:
    body = helper.make_graph([], "decoder", [], [])
    node = helper.make_node("BeamSearch", ["x"], ["y"], domain="com.microsoft", decoder=body)
    return _model([node])


@pytest.mark.parametrize("build", [_loop, _loop_in_a_function, _beam_search])
def test_subgraphs_of_unbounded_trips_are_refused(build, tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="runs a subgraph a number of times sdrun cannot bound"):
        external_data_references(_save(build(), tmp_path))


def test_the_loop_would_run_for_ever_without_the_check(tmp_path: Path) -> None:
    """The control: onnxruntime accepts the Loop graph (its run is what would not end; not run here)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(_save(_loop(), tmp_path)), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_inputs()] == ["x"]


def test_padded_graphs_are_refused_within_the_field_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_sdexport_dir: Path
) -> None:
    """Padding of unknown fields (which protobuf readers skip) counts against the budget; the tiny model's
    real graphs stay far within the real budget."""
    for component in ("text_encoder", "unet", "vae_decoder"):
        external_data_references(tiny_sdexport_dir / component / "model.onnx")
    monkeypatch.setattr(onnx_refs, "MAX_FIELDS", 1_000)
    padding = bytes([0xA0, 0x06, 0x00]) * 2_000  # field 100, varint 0
    path = tmp_path / "model.onnx"
    path.write_bytes(_initializer().SerializeToString() + padding)
    with pytest.raises(ModelFolderError, match="more than 1,000 protobuf fields"):
        external_data_references(path)
