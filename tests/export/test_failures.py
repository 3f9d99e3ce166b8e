"""Every way a build can stop, through the CLI: each ends with a one-line error and leaves the output as it
was (no folder, or the earlier folder untouched) and no temporary folder behind."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import numpy_helper

import sdexport.embedded
import sdexport.export.folder
from sdexport.cli import main
from sdexport.export import onnx_export

OLD_CONTENT = {"model_index.json": "{}\n", "unet/model.onnx": "an earlier build\n"}


def _build(*args: str) -> Result:
    return CliRunner().invoke(main, ["build", *args])


def _one_line_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), "no traceback"
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def _earlier_folder(target: Path) -> None:
    for relpath, text in OLD_CONTENT.items():
        (target / relpath).parent.mkdir(parents=True, exist_ok=True)
        (target / relpath).write_text(text)


def _assert_untouched(target: Path) -> None:
    files = {p.relative_to(target).as_posix(): p.read_text() for p in target.rglob("*") if p.is_file()}
    assert files == OLD_CONTENT
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name], "no temporary folders left"


def _perturbed_export(*args, **kwargs) -> Path:
    """The real export, then one weight of the graph nudged: a wrong graph that still runs."""
    path = onnx_export.export_graph(*args, **kwargs)
    model = onnx.load(path)
    tensor = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    values = numpy_helper.to_array(tensor)
    tensor.CopyFrom(numpy_helper.from_array((values * 1.01).astype(values.dtype), tensor.name))
    onnx.save(model, path)
    return path


def test_graph_past_tolerance_fails_the_build_and_leaves_nothing(
    tiny_checkpoint_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sdexport.export.folder, "export_graph", _perturbed_export)
    target = tmp_path / "out"
    error = _one_line_error(_build(str(tiny_checkpoint_file), "-o", str(target)))
    assert "text_encoder" in error and "differ" in error and "allowed" in error
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_needs_force(tiny_checkpoint_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "out"
    _earlier_folder(target)
    error = _one_line_error(_build(str(tiny_checkpoint_file), "-o", str(target)))
    assert "already exists" in error and "--force" in error
    _assert_untouched(target)


@pytest.mark.parametrize("content", [None, b"not a checkpoint at all"])
def test_unreadable_source_is_one_line_and_writes_nothing(tmp_path: Path, content: bytes | None) -> None:
    source = tmp_path / "model.safetensors"
    if content is not None:
        source.write_bytes(content)
    target = tmp_path / "out"
    error = _one_line_error(_build(str(source), "-o", str(target)))
    assert str(source) in error
    assert not target.exists()


def test_interrupted_build_leaves_the_earlier_folder(
    tiny_checkpoint_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted_at_unet(spec, *args, **kwargs) -> Path:
        if spec.name == "unet":
            raise KeyboardInterrupt
        return onnx_export.export_graph(spec, *args, **kwargs)

    monkeypatch.setattr(sdexport.export.folder, "export_graph", interrupted_at_unet)
    target = tmp_path / "out"
    _earlier_folder(target)
    result = _build(str(tiny_checkpoint_file), "-o", str(target), "--force")
    assert result.exit_code == 130, result.output
    assert "Interrupted" in result.output
    _assert_untouched(target)


@pytest.mark.parametrize(
    ("options", "expected"),
    [(["--precision", "fp16", "--quantize", "int8"], "choose"), (["--opset", "12"], "opset 12")],
)
def test_conflicting_options_are_refused_before_work(
    tiny_checkpoint_file: Path, tmp_path: Path, options: list[str], expected: str
) -> None:
    error = _one_line_error(_build(str(tiny_checkpoint_file), "-o", str(tmp_path / "out"), *options))
    assert expected in error
    assert list(tmp_path.iterdir()) == []


def test_missing_embedded_model_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdexport.embedded, "CHECKPOINT", tmp_path / "tiny-shapes.safetensors")
    error = _one_line_error(_build())
    assert "embedded model" in error and "sdexport.tiny.train" in error


def test_graph_with_other_io_than_the_layout_fails_the_build(
    tiny_checkpoint_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def renamed_input(*args, **kwargs) -> Path:
        path = onnx_export.export_graph(*args, **kwargs)
        model = onnx.load(path)
        old = model.graph.input[0].name
        model.graph.input[0].name = "ids"
        for node in model.graph.node:
            node.input[:] = ["ids" if name == old else name for name in node.input]
        onnx.save(model, path)
        return path

    monkeypatch.setattr(sdexport.export.folder, "export_graph", renamed_input)
    error = _one_line_error(_build(str(tiny_checkpoint_file), "-o", str(tmp_path / "out")))
    assert "text_encoder" in error and "input ids int64" in error and "input input_ids int64" in error
    assert list(tmp_path.iterdir()) == []
