"""save_graph: weights past SINGLE_FILE_LIMIT go to one external data file, written tensor by tensor."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from sdexport.export import graph_files
from sdexport.export.graph_files import save_graph
from sdrun.folder_layout import EXTERNAL_DATA_FILE, GRAPH_FILE

WEIGHTS = np.arange(1024, dtype=np.float32)  # 4096 bytes


def _model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1024])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1024])],
        [numpy_helper.from_array(WEIGHTS, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("limit, files", [(4096, [GRAPH_FILE]), (4095, [GRAPH_FILE, EXTERNAL_DATA_FILE])])
def test_weights_past_the_limit_go_beside_the_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int, files: list[str]
) -> None:
    monkeypatch.setattr(graph_files, "SINGLE_FILE_LIMIT", limit)
    path = tmp_path / GRAPH_FILE
    save_graph(_model(), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones(1024, dtype=np.float32)})
    np.testing.assert_array_equal(y, WEIGHTS + 1)
