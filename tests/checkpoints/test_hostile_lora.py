"""Hostile LoRA files (issue 26, item 13): patterns that do not compile or backtrack for ever, alphas that are
not numbers, NaN and infinite tensors, absurd scales. Each is refused in one line that starts with the file,
before any weight changes (test_lora.refused checks both), and quickly."""

import json
import math
import re
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from test_lora import kohya_tensors, layers, refused, write
from torch import Tensor

from sdexport.checkpoints import CheckpointError, load_model
from sdexport.checkpoints.lora import (
    MAX_SCALE,
    LoraSpec,
    _layer_names,
    _peft_alpha,
    merge_loras,
    parse_lora_option,
)
from sdexport.cli import main
from sdexport.models import StableDiffusion

# A long module name, against which peft's regex reading of "([^!]+)+!" backtracks for ever.
LONG_NAME = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"


def _peft_file(model: StableDiffusion, path: Path, metadata: dict | None = None, value: float = 0.3) -> Path:
    """A diffusers (peft) LoRA on the UNet's attention layers, LoraConfig values in the header."""
    generator = torch.Generator().manual_seed(3)
    tensors = {}
    for module, layer in _layer_names(model).diffusers["unet"].items():
        weight = dict(model.named_modules())[layer].weight
        if "attn" not in module or weight.ndim != 2:
            continue
        tensors[f"unet.{module}.lora_A.weight"] = value * torch.randn(4, weight.shape[1], generator=generator)
        tensors[f"unet.{module}.lora_B.weight"] = value * torch.randn(weight.shape[0], 4, generator=generator)
    header = {"lora_adapter_metadata": json.dumps({f"unet.{k}": v for k, v in (metadata or {}).items()})}
    save_file(tensors, str(path), metadata=header)
    return path


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"alpha_pattern": {"(": 2.0}}, "is not a module name"),
        ({"alpha_pattern": {"([^!]+)+!": 2.0}}, "is not a module name"),
        ({"alpha_pattern": {"attn2.to_k": "abc"}}, "not a finite number"),
        ({"alpha_pattern": {"attn2.to_k": math.inf}}, "Infinity is not a number a config may hold"),
        ({"alpha_pattern": ["attn2.to_k"]}, "not a JSON object"),
        ({"lora_alpha": "abc"}, "its lora_alpha is 'abc', not a finite number"),
        ({"lora_alpha": math.nan}, "NaN is not a number a config may hold"),
        ({"lora_alpha": True}, "not a finite number"),
    ],
    ids=[
        "unbalanced (",
        "backtracking",
        "alpha text",
        "alpha inf",
        "pattern list",
        "lora_alpha text",
        "lora_alpha nan",
        "lora_alpha bool",
    ],  # fmt: skip
)
def test_hostile_adapter_metadata_is_refused(
    tiny_model: StableDiffusion, tmp_path: Path, metadata: dict, message: str
) -> None:
    path = _peft_file(tiny_model, tmp_path / "lora.safetensors", metadata)
    started = time.perf_counter()
    assert message in refused(tiny_model, path)
    assert time.perf_counter() - started < 5


def _kohya(model: StableDiffusion, **changes: Tensor) -> dict[str, Tensor]:
    named = {name: layer for name, layer in layers(model.unet).items() if "attn" in name}
    tensors = kohya_tensors("lora_unet_", named, 5)
    first = next(iter(tensors)).rsplit(".", 2)[0]  # lora_unet_<layer>
    for part, value in changes.items():
        tensors[f"{first}.{part.replace('__', '.')}"] = value
    return tensors


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lora_down__weight": torch.full((4, 32), math.nan)}, "holds NaN or infinite values"),
        ({"lora_up__weight": torch.full((32, 4), -math.inf)}, "holds NaN or infinite values"),
        ({"alpha": torch.tensor(math.inf)}, "alpha is inf, not a finite number"),
        ({"alpha": torch.tensor([1.0, 2.0])}, "a tensor of several values"),
        ({"lora_up__weight": torch.full((32, 4), 1e30)}, "could change a weight by up to"),
    ],
    ids=["NaN down", "-inf up", "alpha inf", "alpha of two values", "huge up"],
)
def test_hostile_tensors_are_refused(tiny_model: StableDiffusion, tmp_path: Path, change, message) -> None:
    path = write(tmp_path / "lora.safetensors", _kohya(tiny_model, **change))
    assert message in refused(tiny_model, path)


def test_scale_is_finite_and_bounded(tiny_model: StableDiffusion, tmp_path: Path) -> None:
    path = write(tmp_path / "lora.safetensors", _kohya(tiny_model))
    for scale in (1e308, -1e308, math.nan, MAX_SCALE * 1.01):
        with pytest.raises(CheckpointError, match="finite number from -100 to 100"):
            merge_loras(tiny_model, [LoraSpec(path, scale)])
        with pytest.raises(CheckpointError, match="finite number from -100 to 100"):
            parse_lora_option(f"{path}:{scale}")
    merge_loras(tiny_model, [LoraSpec(path, -MAX_SCALE)])  # the bound itself is allowed
    assert all(torch.isfinite(t).all() for t in tiny_model.state_dict().values())


@pytest.mark.parametrize(
    "key",
    ["to_k", "attn2.to_k", "o_k", "k", LONG_NAME, "0." + LONG_NAME, "attn2_to_k", "transformer_blocks.0"],
)
def test_literal_keys_resolve_as_peft_resolves_module_names(key: str) -> None:
    """peft's own reading (its get_pattern_key's regex) and ours agree on keys that are module names."""
    modules = [LONG_NAME, "down_blocks.0.attentions.0.proj_in", "mid_block.attentions.0.transformer_blocks.0"]
    for module in modules:
        peft_matches = re.match(rf"(.*\.)?({key})$", module) is not None
        ours = _peft_alpha({"alpha_pattern": {key: 7.0}, "lora_alpha": 1.0}, module, rank=4)
        assert (ours == 7.0) == peft_matches, (key, module)


def test_build_with_a_nan_lora_writes_nothing(tiny_diffusers_dir: Path, tmp_path: Path) -> None:
    """Even with --skip-validation (which used to write a folder of NaN graphs)."""
    tensors = _kohya(load_model(tiny_diffusers_dir).model)
    down = next(key for key in tensors if key.endswith("lora_down.weight"))
    tensors[down] = torch.full_like(tensors[down], math.nan)
    lora = write(tmp_path / "nan.safetensors", tensors)
    out = tmp_path / "built"
    command = ["build", str(tiny_diffusers_dir), "-o", str(out), "--lora", str(lora), "--skip-validation"]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "holds NaN or infinite values" in errors[0], result.output
    assert not out.exists()
