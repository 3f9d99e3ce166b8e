"""LoRA files merged into the weights: our merge against diffusers' `load_lora_weights` + `fuse_lora` on the
same tiny random pipeline (tests/conftest.py), for each file layout, scale and several LoRAs at once; what
is refused; and `sdexport build --lora` to the exported graphs, the manifest and `sdexport inspect`.

The LoRA files are written from diffusers' own module names (or, for the original names, mapped to them by
diffusers' own converter), so a wrong name mapping on our side shows as a parity failure.
"""

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from checkpoint_helpers import random_model
from click.testing import CliRunner
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import save_file
from torch import Tensor, nn

from sdexport.checkpoints import CheckpointError, load_model
from sdexport.checkpoints.diffusers_configs import unet_config_to_diffusers
from sdexport.checkpoints.lora import LayerUpdate, LoraSpec, merge_loras, parse_lora_option
from sdexport.cli import main
from sdexport.models import StableDiffusion, StableDiffusionConfig
from sdrun.defaults import GenerationDefaults
from sdrun.folder import open_model_folder, sha256_of

TOLERANCE = 1e-4  # relative, as the other parity tests of the checkpoint readers
# Layers diffusers' kohya converter names wrongly (its key rewriting drops or mangles them); their own test
# checks them against diffusers' loading of the same tensors under diffusers' names.
KOHYA_UNRESOLVED_BY_DIFFUSERS = ("conv_in", "conv_out", "time_embedding.")


def rel_err(ours: Tensor, ref: Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


def layers(module: nn.Module) -> dict[str, nn.Module]:
    """The layers a LoRA can adapt, by name: linear and convolution layers."""
    return {name: layer for name, layer in module.named_modules() if isinstance(layer, nn.Linear | nn.Conv2d)}


def random_pair(layer: nn.Module, rank: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(down, up) for the layer, large enough to move its outputs far past the tolerance."""
    if isinstance(layer, nn.Conv2d):
        down_shape, up_shape = (rank, layer.in_channels, *layer.kernel_size), (layer.out_channels, rank, 1, 1)
    else:
        down_shape, up_shape = (rank, layer.in_features), (layer.out_features, rank)
    down = 0.3 * torch.randn(down_shape, generator=generator)
    return down, 0.3 * torch.randn(up_shape, generator=generator)


def kohya_tensors(prefix: str, named: dict[str, nn.Module], seed: int, rank: int = 4, alpha: float = 2.0):
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, layer in named.items():
        key = prefix + name.replace(".", "_")
        down, up = random_pair(layer, rank, generator)
        tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up}
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
    return tensors


def write(path: Path, tensors: dict[str, Tensor]) -> Path:
    save_file({key: t.contiguous() for key, t in tensors.items()}, str(path))
    return path


# Fixed inputs: latents, two timesteps, a context, and token ids shaped like the tokenizer's.
_GEN = torch.Generator().manual_seed(7)
SAMPLE = torch.randn(2, 4, 8, 8, generator=_GEN)
TIMESTEPS = torch.tensor([10.0, 700.0])
CONTEXT = torch.randn(2, 77, 32, generator=_GEN)
IDS = torch.tensor([[49406, 320, 1929, 539, 3309, 49407] + [49407] * 71, [49406, 7, 49407] + [0] * 74])


@torch.no_grad()
def outputs_ours(model: StableDiffusion) -> tuple[Tensor, Tensor]:
    return model.unet(SAMPLE, TIMESTEPS, CONTEXT), model.text_encoder(IDS)[0]


@torch.no_grad()
def outputs_reference(pipe: StableDiffusionPipeline) -> tuple[Tensor, Tensor]:
    eps = pipe.unet(SAMPLE, TIMESTEPS, encoder_hidden_states=CONTEXT).sample
    return eps, pipe.text_encoder(IDS).last_hidden_state


@pytest.fixture(scope="module")
def base_outputs(tiny_diffusers_dir: Path) -> tuple[Tensor, Tensor]:
    """The outputs without any LoRA: each LoRA must move them far past the tolerance."""
    return outputs_ours(load_model(tiny_diffusers_dir).model)


@pytest.fixture
def reference(tiny_diffusers_dir: Path) -> StableDiffusionPipeline:
    """A fresh diffusers pipeline of the tiny model (fusing changes its weights)."""
    return StableDiffusionPipeline.from_pretrained(tiny_diffusers_dir)


def fused(pipe: StableDiffusionPipeline, loras: list[tuple[Path | dict, float]]) -> StableDiffusionPipeline:
    """diffusers' merge: load_lora_weights, then fuse_lora at the scale (several: set_adapters' weights)."""
    names = [f"lora{i}" for i in range(len(loras))]
    for name, (lora, _) in zip(names, loras, strict=True):
        pipe.load_lora_weights(lora, adapter_name=name)
    if len(loras) == 1:
        pipe.fuse_lora(lora_scale=loras[0][1], adapter_names=names)
    else:
        pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])
        pipe.fuse_lora(adapter_names=names)
    return pipe


def assert_parity(
    tiny_diffusers_dir: Path,
    reference: StableDiffusionPipeline,
    ours: list[LoraSpec],
    theirs: list[tuple[Path | dict, float]],
    base_outputs: tuple[Tensor, Tensor],
    components: tuple[str, ...] = ("unet", "text_encoder"),
) -> None:
    model = load_model(tiny_diffusers_dir).model
    merge_loras(model, ours)
    expected = outputs_reference(fused(reference, theirs))
    for name, got, want, base in zip(
        ("unet", "text_encoder"), outputs_ours(model), expected, base_outputs, strict=True
    ):
        if name in components:
            assert rel_err(base, want) > 100 * TOLERANCE, f"the LoRA barely changes the {name}: no power"
            assert rel_err(got, want) < TOLERANCE, f"the {name} differs from diffusers'"
        else:
            assert torch.equal(got, base), f"the {name} changed"


@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_kohya_diffusers_names_match_diffusers(
    tiny_diffusers_dir: Path, reference: StableDiffusionPipeline, base_outputs, tmp_path: Path, scale: float
) -> None:
    """Linear layers, 1x1 convolutions (proj_in/out, shortcuts) and 3x3 ones (LoCon: resnets, samplers)."""
    unet = {
        n: m for n, m in layers(reference.unet).items() if not n.startswith(KOHYA_UNRESOLVED_BY_DIFFUSERS)
    }
    tensors = kohya_tensors("lora_unet_", unet, 1) | kohya_tensors(
        "lora_te_", layers(reference.text_encoder), 2
    )
    path = write(tmp_path / "kohya.safetensors", tensors)
    assert_parity(tiny_diffusers_dir, reference, [LoraSpec(path, scale)], [(path, scale)], base_outputs)


def test_kohya_original_names_match_diffusers(
    tiny_diffusers_dir: Path, reference: StableDiffusionPipeline, base_outputs, tmp_path: Path
) -> None:
    """`lora_unet_input_blocks_1_1_...`: the names of the original checkpoint, which diffusers maps to its
    own with its SGM block converter (it cannot map the upsampler of a level without attention)."""
    model = load_model(tiny_diffusers_dir).model
    skipped = ("input_blocks.0.", "out.", "time_embed.", "output_blocks.1.1.conv")
    original = {name: layer for name, layer in layers(model.unet).items() if not name.startswith(skipped)}
    tensors = kohya_tensors("lora_unet_", original, 3, alpha=8.0)
    path = write(tmp_path / "original-names.safetensors", tensors)
    as_diffusers = _maybe_map_sgm_blocks_to_diffusers(dict(tensors), reference.unet.config)
    assert_parity(
        tiny_diffusers_dir, reference, [LoraSpec(path, 0.7)], [(as_diffusers, 0.7)], base_outputs, ("unet",)
    )


def test_kohya_names_diffusers_cannot_resolve_match_its_diffusers_named_twin(
    tiny_diffusers_dir: Path, reference: StableDiffusionPipeline, base_outputs, tmp_path: Path
) -> None:
    """conv_in, conv_out, the time embedding and an upsampler, under kohya names of both styles, against
    diffusers loading the same tensors under its own names (a peft file)."""
    kohya_names = {
        "conv_in": "conv_in",
        "time_embedding.linear_1": "time_embedding_linear_1",
        "time_embedding.linear_2": "time_embed_2",  # original name
        "conv_out": "out_2",  # original name
        "up_blocks.0.upsamplers.0.conv": "output_blocks_1_1_conv",  # original name
    }
    generator = torch.Generator().manual_seed(4)
    kohya, peft = {}, {}
    for name, kohya_name in kohya_names.items():
        down, up = random_pair(layers(reference.unet)[name], 4, generator)
        kohya |= {
            f"lora_unet_{kohya_name}.lora_down.weight": down,
            f"lora_unet_{kohya_name}.lora_up.weight": up,
        }
        peft |= {f"unet.{name}.lora_A.weight": down, f"unet.{name}.lora_B.weight": up}
    path = write(tmp_path / "kohya.safetensors", kohya)
    twin = write(tmp_path / "peft.safetensors", peft)
    assert_parity(tiny_diffusers_dir, reference, [LoraSpec(path)], [(twin, 1.0)], base_outputs, ("unet",))


def diffusers_written_lora(tiny_diffusers_dir: Path, folder: Path) -> Path:
    """A LoRA as diffusers' training scripts save it (peft lora_A/lora_B, LoraConfig in the header), with
    alpha != rank, an alpha_pattern and another rank for the text encoder."""
    pipe = StableDiffusionPipeline.from_pretrained(tiny_diffusers_dir)
    unet_config = LoraConfig(
        r=4,
        lora_alpha=8,
        alpha_pattern={"attn2.to_k": 1.0, "conv_in": 12.0},
        target_modules=list(layers(pipe.unet)),
        init_lora_weights=False,  # random A and B (peft's default B is zero)
    )
    text_config = LoraConfig(
        r=2, lora_alpha=3, target_modules=["q_proj", "v_proj", "fc1"], init_lora_weights=False
    )
    pipe.unet.add_adapter(unet_config)
    pipe.text_encoder.add_adapter(text_config)
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
        unet_lora_adapter_metadata=unet_config.to_dict(),
        text_encoder_lora_adapter_metadata=text_config.to_dict(),
    )
    return folder / "pytorch_lora_weights.safetensors"


@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_diffusers_peft_lora_matches_diffusers(
    tiny_diffusers_dir: Path, reference: StableDiffusionPipeline, base_outputs, tmp_path: Path, scale: float
) -> None:
    path = diffusers_written_lora(tiny_diffusers_dir, tmp_path)
    assert_parity(tiny_diffusers_dir, reference, [LoraSpec(path, scale)], [(path, scale)], base_outputs)


def test_older_diffusers_names_match_diffusers(
    tiny_diffusers_dir: Path, reference: StableDiffusionPipeline, base_outputs, tmp_path: Path
) -> None:
    """`unet.<layer>.lora.down.weight` and `text_encoder.<layer>.lora_linear_layer.down.weight`, no alpha."""
    generator = torch.Generator().manual_seed(5)
    tensors = {}
    for prefix, module, part in (
        ("unet", reference.unet, "lora"),
        ("text_encoder", reference.text_encoder, "lora_linear_layer"),
    ):
        for name, layer in layers(module).items():
            down, up = random_pair(layer, 2, generator)
            tensors |= {f"{prefix}.{name}.{part}.down.weight": down, f"{prefix}.{name}.{part}.up.weight": up}
    path = write(tmp_path / "old.safetensors", tensors)
    assert_parity(tiny_diffusers_dir, reference, [LoraSpec(path, 0.7)], [(path, 0.7)], base_outputs)


def test_several_loras_each_at_its_scale_match_diffusers(
    tiny_diffusers_dir: Path, reference: StableDiffusionPipeline, base_outputs, tmp_path: Path
) -> None:
    peft = diffusers_written_lora(tiny_diffusers_dir, tmp_path)
    unet = {n: m for n, m in layers(reference.unet).items() if "attentions" in n}
    kohya = write(
        tmp_path / "kohya.safetensors",
        kohya_tensors("lora_unet_", unet, 6) | kohya_tensors("lora_te_", layers(reference.text_encoder), 7),
    )
    ours = [LoraSpec(peft, 0.8), LoraSpec(kohya, -0.5)]
    assert_parity(tiny_diffusers_dir, reference, ours, [(peft, 0.8), (kohya, -0.5)], base_outputs)


def test_pickled_lora_is_read_like_its_safetensors_twin(tiny_diffusers_dir: Path, tmp_path: Path) -> None:
    reference_unet = UNet2DConditionModel.from_pretrained(tiny_diffusers_dir / "unet")
    tensors = kohya_tensors("lora_unet_", layers(reference_unet), 8)
    torch.save(tensors, tmp_path / "lora.pt")
    merged = []
    for path in (tmp_path / "lora.pt", write(tmp_path / "lora.safetensors", tensors)):
        model = load_model(tiny_diffusers_dir).model
        merge_loras(model, [LoraSpec(path)])
        merged.append(model.state_dict())
    assert all(torch.equal(merged[0][key], merged[1][key]) for key in merged[0])


# Neighbouring mistakes the parity tests must catch: each one, swapped into our merge, fails them.
def _transposed(delta: Callable[[LayerUpdate], Tensor]) -> Callable[[LayerUpdate], Tensor]:
    def mutant(update: LayerUpdate) -> Tensor:
        d = delta(update)
        return d.transpose(0, 1) if d.shape[0] == d.shape[1] else d

    return mutant


def _alpha_ignored(delta: Callable[[LayerUpdate], Tensor]) -> Callable[[LayerUpdate], Tensor]:
    return lambda update: delta(update) * update.down.shape[0] / update.alpha


def _half_scale(delta: Callable[[LayerUpdate], Tensor]) -> Callable[[LayerUpdate], Tensor]:
    return lambda update: 0.5 * delta(update)


@pytest.mark.parametrize("mutation", [_transposed, _alpha_ignored, _half_scale])
def test_parity_fails_for_neighbouring_mistakes(
    tiny_diffusers_dir: Path,
    reference: StableDiffusionPipeline,
    base_outputs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mutation: Callable,
) -> None:
    monkeypatch.setattr(LayerUpdate, "delta", mutation(LayerUpdate.delta))
    path = diffusers_written_lora(tiny_diffusers_dir, tmp_path)
    with pytest.raises(AssertionError, match="differs from diffusers"):
        assert_parity(tiny_diffusers_dir, reference, [LoraSpec(path)], [(path, 1.0)], base_outputs)


# Refusals: one line, naming the file and the cause; the model (tests/checkpoints/conftest.py) is left
# as it was.
def refused(model: StableDiffusion, path: Path) -> str:
    before = {key: t.clone() for key, t in model.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        merge_loras(model, [LoraSpec(path)])
    assert all(torch.equal(before[key], t) for key, t in model.state_dict().items())
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"LoRA {path}: ")
    return message


def _attention_lora(model: StableDiffusion, *extra: str) -> dict[str, Tensor]:
    named = {name: layer for name, layer in layers(model.unet).items() if "attn" in name}
    tensors = kohya_tensors("lora_unet_", named, 9)
    for key in extra:
        tensors[key] = torch.zeros(4, 32)
    return tensors


def test_unmatched_keys_refuse_the_whole_file(tiny_model: StableDiffusion, tmp_path: Path) -> None:
    stray = "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight"
    path = write(tmp_path / "stray.safetensors", _attention_lora(tiny_model, stray, "lora_te_nothing.weight"))
    message = refused(tiny_model, path)
    assert "2 of its" in message and stray in message and "lora_te_nothing.weight" in message


@pytest.mark.parametrize(
    "key, shape",
    [
        ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", (4, 768)),
        ("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight", (4, 1280)),
        ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight", (4, 2048)),
    ],
)
def test_sdxl_lora_is_refused_by_name(tiny_model: StableDiffusion, tmp_path: Path, key: str, shape) -> None:
    path = write(tmp_path / "sdxl.safetensors", {key: torch.zeros(shape)})
    assert "is an SDXL LoRA" in refused(tiny_model, path)


def test_misshaped_lora_is_refused(tiny_model: StableDiffusion, tmp_path: Path) -> None:
    key = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    tensors = {f"{key}.lora_down.weight": torch.zeros(4, 48), f"{key}.lora_up.weight": torch.zeros(32, 4)}
    message = refused(tiny_model, write(tmp_path / "wide.safetensors", tensors))
    assert "does not fit its weight [32, 32]" in message


def test_other_adapter_kinds_are_refused(tiny_model: StableDiffusion, tmp_path: Path) -> None:
    tensors = {
        "lora_unet_conv_in.hada_w1_a": torch.zeros(2, 2),
        "lora_unet_conv_in.hada_w1_b": torch.zeros(2, 2),
    }
    assert "is a LoHa adapter" in refused(tiny_model, write(tmp_path / "loha.safetensors", tensors))


class RunsCode:
    """Unpickling this calls os.system, as a malicious file would."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_pickle_is_refused_unopened(tiny_model: StableDiffusion, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"lora_unet_conv_in.lora_down.weight": torch.zeros(2, 4, 3, 3), "x": RunsCode(marker)}, path)
    message = refused(tiny_model, path)
    assert "refused to unpickle" in message and "system" in message
    assert not marker.exists()


def test_lora_option_parsing(tmp_path: Path) -> None:
    plain = tmp_path / "a.safetensors"
    plain.touch()
    colon = tmp_path / "b:c.safetensors"
    colon.touch()
    assert parse_lora_option(str(plain)) == LoraSpec(plain, 1.0)
    assert parse_lora_option(f"{plain}:0.7") == LoraSpec(plain, 0.7)
    assert parse_lora_option(f"{plain}:-1") == LoraSpec(plain, -1.0)
    assert parse_lora_option(str(colon)) == LoraSpec(colon, 1.0)
    assert parse_lora_option(f"{colon}:2") == LoraSpec(colon, 2.0)
    for bad, why in (
        (f"{plain}:strong", "is not a number"),
        (f"{plain}:nan", "finite"),
        (f"{plain}:inf", "finite"),
    ):
        with pytest.raises(CheckpointError, match=why):
            parse_lora_option(bad)


# `sdexport build --lora`: one small build, its graphs against diffusers' fused pipeline.
@pytest.fixture(scope="module")
def lora_build(tiny_diffusers_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    folder = tmp_path_factory.mktemp("lora-build")
    path = diffusers_written_lora(tiny_diffusers_dir, folder / "lcm")
    out = folder / "built"
    command = [
        "build", str(tiny_diffusers_dir), "-o", str(out), "--lora", f"{path}:0.7", "--skip-validation",
        "--default-sampler", "lcm", "--default-steps", "4", "--default-guidance", "1",
    ]  # fmt: skip
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output
    return out, path, result.output


def test_build_records_the_lora_and_its_defaults(lora_build) -> None:
    out, path, log = lora_build
    assert f"Merged LoRA {path.name} at scale 0.7" in log
    manifest = json.loads((out / "sdexport_manifest.json").read_text())
    [lora] = manifest["loras"]
    assert (lora["file"], lora["sha256"], lora["scale"], lora["layout"]) == (
        path.name, sha256_of(path), 0.7, "diffusers"
    )  # fmt: skip
    assert manifest["generation_defaults"] == {"sampler": "lcm", "steps": 4, "guidance_scale": 1.0}
    # sdrun opens the folder and takes those defaults.
    open_model_folder(out, verify_checksums=True)
    defaults = GenerationDefaults.from_manifest(manifest)
    assert (defaults.sampler, defaults.steps, defaults.guidance_scale) == ("lcm", 4, 1.0)
    inspected = CliRunner().invoke(main, ["inspect", str(out)])
    assert inspected.exit_code == 0, inspected.output
    assert f"LoRA merged: {path.name} at scale 0.7 (diffusers, {lora['layers']} layers)" in inspected.output


def test_built_graphs_match_diffusers_fused_lora(
    lora_build, reference: StableDiffusionPipeline, base_outputs
) -> None:
    out, path, _ = lora_build
    eps, hidden = outputs_reference(fused(reference, [(path, 0.7)]))
    text = ort.InferenceSession(str(out / "text_encoder" / "model.onnx"), providers=["CPUExecutionProvider"])
    unet = ort.InferenceSession(str(out / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    got_hidden = text.run(["last_hidden_state"], {"input_ids": IDS.numpy()})[0]
    got_eps = np.concatenate(
        [
            unet.run(
                None,
                {
                    "sample": s[None].numpy(),
                    "timestep": np.array(t.item(), np.float32),
                    "encoder_hidden_states": c[None].numpy(),
                },
            )[0]
            for s, t, c in zip(SAMPLE, TIMESTEPS, CONTEXT, strict=True)
        ]
    )
    assert rel_err(torch.from_numpy(got_hidden), hidden) < TOLERANCE
    assert rel_err(torch.from_numpy(got_eps), eps) < TOLERANCE
    assert rel_err(base_outputs[0], eps) > 100 * TOLERANCE


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lora", "missing.safetensors"], "no such file"),
        (["--default-sampler", "fastest"], "names the sampler 'fastest', which sdrun does not have"),
        (["--default-steps", "0"], "steps=0: expected a whole number from 1"),
    ],
)
def test_build_refuses_bad_lora_options(tiny_diffusers_dir: Path, tmp_path: Path, flags, message) -> None:
    result = CliRunner().invoke(main, ["build", str(tiny_diffusers_dir), "-o", str(tmp_path / "x"), *flags])
    assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "x").exists()


def test_build_refuses_a_bad_scale_before_any_work(tmp_path: Path) -> None:
    lora = tmp_path / "a.safetensors"
    lora.touch()
    result = CliRunner().invoke(main, ["build", "unused", "--lora", f"{lora}:strong"])
    assert result.exit_code == 2 and "is not a number" in result.output


@pytest.mark.slow
@torch.no_grad()
def test_sd15_shaped_lora_matches_diffusers(tmp_path: Path) -> None:
    """An SD 1.5-shaped kohya LoRA on every attention layer and resnet of the full-size UNet."""
    model = random_model(StableDiffusionConfig())
    unet_config = unet_config_to_diffusers(model.config.unet)
    reference = UNet2DConditionModel.from_config(unet_config)
    reference.load_state_dict(sfu.convert_ldm_unet_checkpoint(model.state_dict(), unet_config))
    named = {n: m for n, m in layers(reference).items() if not n.startswith(KOHYA_UNRESOLVED_BY_DIFFUSERS)}
    path = write(tmp_path / "sd15.safetensors", kohya_tensors("lora_unet_", named, 10, rank=8, alpha=4.0))
    generator = torch.Generator().manual_seed(0)
    sample, timestep = torch.randn(1, 4, 16, 16, generator=generator), torch.tensor([500.0])
    context = torch.randn(1, 77, 768, generator=generator)
    before = model.unet(sample, timestep, context)

    merge_loras(model, [LoraSpec(path, 0.8)])
    state, alphas = StableDiffusionPipeline.lora_state_dict(path)
    StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet=reference)
    reference.fuse_lora(lora_scale=0.8)

    expected = reference(sample, timestep, encoder_hidden_states=context).sample
    assert rel_err(before, expected) > 100 * TOLERANCE
    assert rel_err(model.unet(sample, timestep, context), expected) < TOLERANCE
