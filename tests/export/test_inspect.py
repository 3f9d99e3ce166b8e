"""`sdexport inspect`: what a folder holds, read from its graphs and manifest; --verify catches damage."""

import json
import shutil
from pathlib import Path

from click.testing import CliRunner
from export_helpers import Built

from sdexport.cli import main


def test_inspect_shows_graphs_io_precision_sizes_and_validation(built: Built) -> None:
    result = CliRunner().invoke(main, ["inspect", str(built.folder)])
    assert result.exit_code == 0, result.output
    out = result.output
    for component in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
        assert f"  {component}  fp32  " in out
    assert "<- timestep: float32 []" in out
    assert "-> out_sample: float32 [batch, 4, height, width]" in out
    assert "<- input_ids: int64 [batch, 77]" in out
    assert out.count("validated (") == 4
    assert "precision fp32, quantization none, opset 18" in out
    assert " MB" in out
    unet_line = next(line for line in out.splitlines() if line.startswith("  unet  "))
    assert unet_line.endswith("attentions fused"), "the UNet's attention runs fused"


def test_inspect_reads_a_folder_without_manifest(built: Built, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(built.folder, copy)
    (copy / "sdexport_manifest.json").unlink()
    result = CliRunner().invoke(main, ["inspect", str(copy), "--verify"])
    assert result.exit_code == 0, result.output
    assert "no sdexport manifest" in result.output
    assert "-> latent_parameters: float32" in result.output


def test_verify_catches_a_damaged_file(built: Built, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(built.folder, copy)
    assert CliRunner().invoke(main, ["inspect", str(copy), "--verify"]).exit_code == 0
    graph = copy / "unet" / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["inspect", str(copy), "--verify"])
    assert result.exit_code == 1
    assert "Error:" in result.output and "unet/model.onnx" in result.output and "SHA-256" in result.output


def test_inspect_refuses_what_is_not_a_model_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "model_index.json" in result.output


def test_inspect_on_a_damaged_manifest_is_one_line(built: Built, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(built.folder, copy)
    for damaged, message in (
        ("{", "is not valid JSON"),
        ("[]", "is not a JSON object"),
        ('{"components": 5}', "its manifest is damaged"),
        ('{"components": {"unet": {"validation": {"checks": [1]}}}}', "its manifest is damaged"),
        ('{"source": "x"}', "its manifest is damaged"),
    ):
        (copy / "sdexport_manifest.json").write_text(damaged)
        result = CliRunner().invoke(main, ["inspect", str(copy)])
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1 and message in result.output, result.output


def test_inspect_shows_the_build_target(built: Built, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", str(built.folder)])
    assert "opset 18, target onnxruntime" in result.output, result.output
    copy = tmp_path / "copy"
    shutil.copytree(built.folder, copy)
    manifest = json.loads((copy / "sdexport_manifest.json").read_text())
    manifest["target"] = "openvino"
    (copy / "sdexport_manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["inspect", str(copy)])
    assert result.exit_code == 0 and "opset 18, target openvino" in result.output, result.output
    assert "vae_decoder_tiny" not in result.output  # optional graphs are shown only when present
