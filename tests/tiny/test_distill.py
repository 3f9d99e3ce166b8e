"""The student's LoRA when the whole UNet is distilled: the difference from the teacher, truncated by SVD,
read back by the build's own LoRA merge (sdexport.checkpoints.lora, itself checked against peft)."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sdexport import embedded
from sdexport.checkpoints import load_model
from sdexport.checkpoints.lora import merge_loras, parse_lora_option
from sdexport.models.stable_diffusion import StableDiffusion
from sdexport.tiny.distill import (
    DistillSettings,
    adapted_layers,
    add_kohya_state,
    low_rank_difference,
    teacher_guidance,
)


def _teacher() -> StableDiffusion:
    return load_model(embedded.CHECKPOINT).model.float()


def _layers(unet: nn.Module) -> dict[str, nn.Linear | nn.Conv2d]:
    return dict(adapted_layers(unet))


@pytest.fixture(scope="module")
def teacher_and_student() -> tuple[StableDiffusion, nn.Module]:
    """The teacher, and its UNet with a rank-3 change to every linear and convolution weight."""
    teacher = _teacher()
    student = copy.deepcopy(teacher.unet)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in _layers(student).values():
            rows, columns = layer.weight.flatten(1).shape
            change = torch.randn(rows, 3, generator=generator) @ torch.randn(3, columns, generator=generator)
            layer.weight += 0.02 * change.reshape(layer.weight.shape)
    return teacher, student


def _merged_by_the_build(lora: dict[str, torch.Tensor], folder: Path) -> StableDiffusion:
    save_file(lora, folder / "student.safetensors")
    model = _teacher()
    merge_loras(model, [parse_lora_option(str(folder / "student.safetensors"))])
    return model


def test_a_change_of_the_lora_rank_comes_back_whole(
    teacher_and_student: tuple[StableDiffusion, nn.Module], tmp_path: Path
) -> None:
    teacher, student = teacher_and_student
    merged = _merged_by_the_build(low_rank_difference(teacher.unet, student, 3), tmp_path)
    merged_layers = _layers(merged.unet)
    for name, layer in _layers(student).items():
        # fp16 factors: about 1e-3 of the change itself
        torch.testing.assert_close(merged_layers[name].weight, layer.weight, atol=2e-3, rtol=0)


def test_a_lower_rank_keeps_the_closest_matrices_of_that_rank(
    teacher_and_student: tuple[StableDiffusion, nn.Module], tmp_path: Path
) -> None:
    """Eckart-Young: the rank-2 truncation misses by the norm of the singular values it drops (numpy's)."""
    teacher, student = teacher_and_student
    merged = _merged_by_the_build(low_rank_difference(teacher.unet, student, 2), tmp_path)
    teacher_layers, merged_layers = _layers(teacher.unet), _layers(merged.unet)
    misses = []
    for name, layer in _layers(student).items():
        change = (layer.weight - teacher_layers[name].weight).flatten(1).detach().numpy().astype(np.float64)
        dropped = np.linalg.norm(np.linalg.svd(change, compute_uv=False)[2:])
        miss = float(np.linalg.norm((merged_layers[name].weight - layer.weight).detach().numpy()))
        assert miss == pytest.approx(dropped, rel=0.02, abs=2e-3)
        misses.append(miss)
    assert max(misses) > 0.1  # the third component is really missed, not lost in the tolerance


def test_resuming_adds_the_shipped_lora_as_the_build_does(tmp_path: Path) -> None:
    teacher = _teacher()
    resumed = copy.deepcopy(teacher.unet)
    add_kohya_state(resumed, load_file(embedded.STUDENT_LORA))
    built = _merged_by_the_build(load_file(embedded.STUDENT_LORA), tmp_path)
    built_layers, teacher_layers = _layers(built.unet), _layers(teacher.unet)
    changed = 0
    for name, layer in _layers(resumed).items():
        torch.testing.assert_close(layer.weight, built_layers[name].weight, atol=1e-6, rtol=1e-5)
        changed += not torch.equal(layer.weight, teacher_layers[name].weight)
    assert changed == len(teacher_layers)


def test_the_teacher_guidance_rises_with_the_noise_level_when_asked() -> None:
    t = torch.tensor([0, 19, 499, 999])
    constant = teacher_guidance(t, DistillSettings(teacher_guidance=4.0), 1000)
    assert constant.shape == (4, 1, 1, 1) and torch.all(constant == 4.0)
    rising = teacher_guidance(t, DistillSettings(teacher_guidance=4.0, teacher_guidance_high=8.0), 1000)
    expected = [4.0, 4.0 + 4.0 * 19 / 999, 4.0 + 4.0 * 499 / 999, 8.0]
    torch.testing.assert_close(rising.flatten(), torch.tensor(expected))
