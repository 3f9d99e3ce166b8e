"""JSON that comes with a checkpoint is read bounded, as sdrun reads a model folder's configs: a LoRA's
adapter metadata, a TAESD folder's config and the tokenizer a diffusers folder carries, each refused in
one line that names the file and the fix (a diffusers folder's own configs: test_bad_input)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdexport.checkpoints import CheckpointError
from sdexport.checkpoints.lora import LoraSpec, read_lora
from sdexport.checkpoints.taesd_files import DIFFUSERS_CONFIG, DIFFUSERS_WEIGHTS, load_taesd
from sdexport.export.tokenizer_files import add_tokens, write_tokenizer
from sdexport.models import StableDiffusion

FIX = "get the model again from its publisher"
HOSTILE = [
    ('{"unet.lora_alpha": 1e999}', "the number 1e999 is out of range"),
    ('{"unet.lora_alpha": ' + "9" * 100 + "}", "an integer of 100 digits"),
    ("[" * 100_000 + "]" * 100_000, "nests too deeply"),
]


def _one_line(error: pytest.ExceptionInfo[CheckpointError], *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message and message.endswith(FIX)
    for part in parts:
        assert part in message


@pytest.mark.parametrize(("text", "expected"), HOSTILE)
def test_lora_with_hostile_adapter_metadata(
    tmp_path: Path, tiny_model: StableDiffusion, text: str, expected: str
) -> None:
    path = tmp_path / "lora.safetensors"
    down = "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"
    save_file({down: torch.zeros(1, 32)}, path, metadata={"lora_adapter_metadata": text})
    with pytest.raises(CheckpointError) as error:
        read_lora(LoraSpec(path), tiny_model)
    _one_line(error, f"LoRA {path}", "lora_adapter_metadata", expected)


@pytest.mark.parametrize(("text", "expected"), HOSTILE)
def test_tiny_vae_folder_with_hostile_config(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / DIFFUSERS_CONFIG).write_text(text)
    save_file({}, tmp_path / DIFFUSERS_WEIGHTS[0])
    with pytest.raises(CheckpointError) as error:
        load_taesd([tmp_path])
    _one_line(error, f"tiny VAE {tmp_path / DIFFUSERS_CONFIG}", expected)


@pytest.mark.parametrize("file", ["tokenizer_config.json", "vocab.json"])
def test_carried_tokenizer_with_hostile_config(tmp_path: Path, file: str) -> None:
    """A diffusers source's tokenizer is copied into the folder, then the embeddings' tokens are added."""
    folder = tmp_path / "tokenizer"
    write_tokenizer(folder)
    (folder / file).write_text(json.dumps({"model_max_length": 77})[:-1] + ', "x": ' + "9" * 100 + "}")
    with pytest.raises(CheckpointError) as error:
        add_tokens(folder, {"<cat-toy>": 49408})
    _one_line(error, f"tokenizer/{file}", "an integer of 100 digits")
