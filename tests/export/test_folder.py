"""The folder a build writes: layout, configs, manifest (checked with independent readers), console lines."""

import hashlib
import json
from importlib import metadata
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from diffusers import PNDMScheduler
from export_helpers import STALE_FILE, Built
from transformers import CLIPTokenizer

from sdexport.export.attention_fusion import FUSED_OP
from sdexport.export.manifest import SOURCE_CHECKOUT, versions
from sdrun.folder import open_model_folder

COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
EXPECTED_IO = {
    "text_encoder": (["input_ids"], ["last_hidden_state", "pooler_output"]),
    "unet": (["sample", "timestep", "encoder_hidden_states"], ["out_sample"]),
    "vae_encoder": (["sample"], ["latent_parameters"]),
    "vae_decoder": (["latent_sample"], ["sample"]),
}


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_layout_is_the_hugging_face_onnx_layout(built: Built) -> None:
    folder = built.folder
    for component in COMPONENTS:
        assert (folder / component / "model.onnx").is_file()
        assert (folder / component / "config.json").is_file()
        # Small graphs are single files.
        assert not (folder / component / "model.onnx.data").exists()
    assert not (folder / STALE_FILE).exists(), "--force replaces the older folder whole"
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name], "no temporary folders left"

    index = _json(folder / "model_index.json")
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"]

    assert _json(folder / "vae_decoder" / "config.json")["scaling_factor"] == 0.18215
    assert _json(folder / "vae_encoder" / "config.json")["scaling_factor"] == 0.18215
    # The tiny source was trained at 64x64 pixels: runtimes take their default size from these.
    assert _json(folder / "unet" / "config.json")["sample_size"] == 8
    assert _json(folder / "vae_decoder" / "config.json")["sample_size"] == 64

    scheduler = PNDMScheduler.from_pretrained(folder / "scheduler")
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.00085, 0.012)
    assert scheduler.config.num_train_timesteps == 1000
    assert scheduler.config.steps_offset == 1 and scheduler.config.skip_prk_steps

    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    assert tokenizer.model_max_length == 77
    assert tokenizer("a cat").input_ids[0] == 49406


def test_graph_io_names_dtypes_and_dynamic_axes(built: Built) -> None:
    for component, (inputs, outputs) in EXPECTED_IO.items():
        session = ort.InferenceSession(built.folder / component / "model.onnx")
        assert [i.name for i in session.get_inputs()] == inputs
        assert [o.name for o in session.get_outputs()] == outputs
        for value in session.get_inputs():
            if value.name == "input_ids":
                assert value.type == "tensor(int64)" and value.shape[1] == 77
            else:
                assert value.type == "tensor(float)"
            if value.name == "timestep":
                assert value.shape == []  # a scalar, as optimum exports it
            elif value.shape:
                assert isinstance(value.shape[0], str), f"{component}.{value.name}: batch must be dynamic"
            if len(value.shape) == 4:
                assert all(isinstance(d, str) for d in value.shape[2:]), f"{component}: height/width dynamic"


def test_attention_is_fused_except_the_text_encoders_causal_one(built: Built) -> None:
    """The graphs as shipped run onnxruntime's MultiHeadAttention (validated against PyTorch like the rest),
    and the manifest says how many attentions each graph fused."""
    manifest = _json(built.folder / "sdexport_manifest.json")
    for component in EXPECTED_IO:
        ops = [node.op_type for node in onnx.load(built.folder / component / "model.onnx").graph.node]
        fused = ops.count(FUSED_OP)
        assert manifest["components"][component]["fused_attentions"] == fused
        if component == "text_encoder":
            assert fused == 0 and "Softmax" in ops
        else:
            assert fused > 0 and "Softmax" not in ops, component


def test_manifest_lists_every_file_with_size_and_sha256(built: Built) -> None:
    folder = built.folder
    manifest = _json(folder / "sdexport_manifest.json")
    on_disk = {
        p.relative_to(folder).as_posix(): p for p in folder.rglob("*")
        if p.is_file() and p.name != "sdexport_manifest.json"
    }
    assert set(manifest["files"]) == set(on_disk)
    for relpath, entry in manifest["files"].items():
        data = on_disk[relpath].read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    open_model_folder(folder, verify_checksums=True)  # the runtime accepts it


def test_versions_need_no_distribution_of_the_same_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # As under `python -m sdexport` from a checkout, beside onnxruntime-gpu (whose module is onnxruntime).
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    found = versions()
    assert found["sdexport"] == SOURCE_CHECKOUT
    assert (found["onnxruntime"], found["torch"]) == (ort.__version__, torch.__version__)


def test_manifest_records_source_versions_graphs_and_validation(
    built: Built, tiny_diffusers_dir: Path
) -> None:
    manifest = _json(built.folder / "sdexport_manifest.json")
    assert manifest["source"]["path"] == str(tiny_diffusers_dir.resolve())
    assert manifest["source"]["kind"] == "diffusers"
    assert len(manifest["source"]["sha256"]) == 64
    assert manifest["source"]["weights"] == built.loaded.weights
    assert {"sdexport", "torch", "onnx", "onnxruntime"} <= set(manifest["versions"])
    assert manifest["opset"] == 18
    assert (manifest["precision"], manifest["quantization"]) == ("fp32", "none")
    # Any latent side: sdrun reads this, and the UNet was checked at an odd size.
    assert manifest["latent_size_multiple"] == 1
    unet_checks = manifest["components"]["unet"]["validation"]["checks"]
    assert any(c["latent_height"] % 2 and c["latent_width"] % 2 for c in unet_checks)
    for component, (inputs, outputs) in EXPECTED_IO.items():
        recorded = manifest["components"][component]
        assert [i["name"] for i in recorded["inputs"]] == inputs
        assert [o["name"] for o in recorded["outputs"]] == outputs
        checks = recorded["validation"]["checks"]
        assert {c["batch"] for c in checks} == {1, 2}
        assert any(c["latent_height"] != c["latent_width"] for c in checks)
        assert {c["output"] for c in checks} == set(outputs)
        assert all(0 <= c["max_abs_error"] <= c["limit"] for c in checks)
        assert recorded["validation"]["max_abs_error"] == max(c["max_abs_error"] for c in checks)


def test_console_reports_each_component_and_a_summary(built: Built) -> None:
    text = "\n".join(built.log)
    for component in COMPONENTS:
        line = next(line for line in built.log if line.strip().startswith(component))
        assert "exported" in line and " s" in line and "B" in line and "max error" in line
    assert built.log[-1].startswith("Done in") and str(built.folder) in built.log[-1]
    assert "weights:" in text
