"""Textual-inversion embeddings added to the text encoder: our reading of each file layout, the tokenizer
files that carry the new tokens (read by sdrun's tokenizer) and the text encoder's output, against
diffusers' `load_textual_inversion` + `encode_prompt` on the tiny random pipeline of tests/conftest.py;
and what is refused. The exported folder is checked in tests/export/test_embedding_build.py."""

import os
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file
from torch import Tensor

from sdexport.checkpoints import CheckpointError, load_model
from sdexport.checkpoints.embeddings import EmbeddingSpec, add_embeddings, parse_embedding_option
from sdexport.export.tokenizer_files import add_tokens, write_tokenizer
from sdrun.tokenizer import CLIPTokenizer

TOLERANCE = 1e-4  # relative, as the other parity tests of the checkpoint readers
WIDTH = 32  # the tiny pipeline's text encoder


def rel_err(ours: Tensor, ref: Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


def vectors(count: int, seed: int, width: int = WIDTH) -> Tensor:
    """Large enough to move the text encoder's output far past the tolerance."""
    return 2 * torch.randn(count, width, generator=torch.Generator().manual_seed(seed))


def a1111_pt(path: Path, table: Tensor) -> Path:
    """The web UI's .pt layout (its `name` is ignored: the web UI names an embedding by its file)."""
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": table},
            "name": "stored-name",
            "step": 1000,
            "sd_checkpoint": "0123abcd",
            "sd_checkpoint_name": "model",
        },
        path,
    )
    return path


def a1111_safetensors(path: Path, table: Tensor) -> Path:
    save_file({"emb_params": table.contiguous()}, path)
    return path


def diffusers_bin(path: Path, token: str, table: Tensor) -> Path:
    """learned_embeds.bin as diffusers' textual-inversion script saves one vector: {token: [width]}."""
    torch.save({token: table[0] if len(table) == 1 else table}, path)
    return path


def diffusers_safetensors(path: Path, token: str, table: Tensor) -> Path:
    save_file({token: table.contiguous()}, path)
    return path


def reference_embeds(folder: Path, files: list[tuple[Path, str]], prompt: str) -> tuple[list[int], Tensor]:
    """diffusers' token ids of the prompt (its multi-vector words expanded) and encode_prompt's output."""
    pipeline = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipeline.load_textual_inversion([str(path) for path, _ in files], token=[token for _, token in files])
    converted = pipeline.maybe_convert_prompt(prompt, pipeline.tokenizer)
    ids = pipeline.tokenizer(converted, padding="max_length", max_length=77, truncation=True).input_ids
    with torch.no_grad():
        embeds, _ = pipeline.encode_prompt(prompt, "cpu", 1, False)
    return ids, embeds[0]


def ours(
    folder: Path, specs: list[EmbeddingSpec], prompt: str, tokenizer_dir: Path
) -> tuple[list[int], Tensor]:
    """Our token ids (sdrun's tokenizer on the tokenizer folder with the added tokens) and text encoder."""
    loaded = load_model(folder)
    records = add_embeddings(loaded.model, specs)
    write_tokenizer(tokenizer_dir)
    add_tokens(
        tokenizer_dir,
        {
            token: i
            for record in records
            for token, i in zip(record["tokens"], record["token_ids"], strict=True)
        },
    )
    ids = CLIPTokenizer.from_folder(tokenizer_dir).encode([prompt])
    with torch.no_grad():
        hidden, _ = loaded.model.text_encoder(torch.from_numpy(ids))
    return ids[0].tolist(), hidden[0]


@pytest.mark.parametrize(
    "layout", ["a1111_pt", "a1111_safetensors", "diffusers_bin", "diffusers_safetensors"]
)
@pytest.mark.parametrize("count", [1, 3])
def test_each_layout_matches_diffusers(
    tiny_diffusers_dir: Path, tmp_path: Path, layout: str, count: int
) -> None:
    table = vectors(count, seed=count)
    if layout.startswith("a1111"):
        suffix = ".pt" if layout == "a1111_pt" else ".safetensors"
        path = globals()[layout](tmp_path / f"my-style{suffix}", table)
        token, spec = "my-style", EmbeddingSpec(path)  # the web UI's word: the file's name
    else:
        suffix = ".bin" if layout == "diffusers_bin" else ".safetensors"
        token = "<cat-toy>"
        path = globals()[layout](tmp_path / f"learned_embeds{suffix}", token, table)
        spec = EmbeddingSpec(path)  # the word stored in the file
    prompt = f"a photo of {token} on a table"
    expected_ids, expected = reference_embeds(tiny_diffusers_dir, [(path, token)], prompt)
    ids, hidden = ours(tiny_diffusers_dir, [spec], prompt, tmp_path / "tokenizer")
    assert ids == expected_ids
    assert sum(49408 <= i for i in ids) == count
    assert rel_err(hidden, expected) < TOLERANCE


def test_several_embeddings_with_given_words_match_diffusers(
    tiny_diffusers_dir: Path, tmp_path: Path
) -> None:
    first = a1111_pt(tmp_path / "first.pt", vectors(2, seed=5))
    second = diffusers_safetensors(tmp_path / "second.safetensors", "<stored>", vectors(3, seed=6))
    specs = [parse_embedding_option(f"{first}:<one>"), parse_embedding_option(f"{second}:<two>")]
    prompt = "<two> and <one>, then <one> again"
    expected_ids, expected = reference_embeds(
        tiny_diffusers_dir, [(first, "<one>"), (second, "<two>")], prompt
    )
    ids, hidden = ours(tiny_diffusers_dir, specs, prompt, tmp_path / "tokenizer")
    assert ids == expected_ids
    assert rel_err(hidden, expected) < TOLERANCE


def test_swapped_vectors_fail_the_parity(tiny_diffusers_dir: Path, tmp_path: Path) -> None:
    """Power: the order of a multi-vector embedding's vectors shows in the output."""
    table = vectors(3, seed=7)
    path = diffusers_safetensors(tmp_path / "a.safetensors", "<x>", table)
    swapped = diffusers_safetensors(tmp_path / "b.safetensors", "<x>", table[[1, 0, 2]])
    prompt = "a <x> in the snow"
    _, expected = reference_embeds(tiny_diffusers_dir, [(path, "<x>")], prompt)
    _, hidden = ours(tiny_diffusers_dir, [EmbeddingSpec(swapped)], prompt, tmp_path / "tokenizer")
    assert rel_err(hidden, expected) > 100 * TOLERANCE


@pytest.fixture
def model(tiny_diffusers_dir: Path):
    return load_model(tiny_diffusers_dir).model


def refused(model, spec: EmbeddingSpec) -> str:
    rows = model.text_encoder.token_embedding.weight.clone()
    with pytest.raises(CheckpointError) as caught:
        add_embeddings(model, [spec])
    message = str(caught.value)
    assert "\n" not in message
    assert torch.equal(model.text_encoder.token_embedding.weight, rows)  # left as it was
    return message


def test_wrong_width_is_refused(model, tmp_path: Path) -> None:
    path = a1111_pt(tmp_path / "sd2-style.pt", vectors(2, seed=1, width=1024))
    message = refused(model, EmbeddingSpec(path))
    assert f"--embedding {path}: its vectors are 1024 wide (made for SD 2.x)" in message
    assert f"takes {WIDTH}" in message


@pytest.mark.parametrize("word", ["cat", "Cat", "<|endoftext|>"])
def test_a_word_of_the_vocabulary_is_refused(model, tmp_path: Path, word: str) -> None:
    path = diffusers_safetensors(tmp_path / "x.safetensors", "<x>", vectors(1, seed=1))
    message = refused(model, EmbeddingSpec(path, word))
    assert f"{word!r} is already a word of the tokenizer" in message and ":TOKEN" in message


def test_clashing_embeddings_are_refused(model, tmp_path: Path) -> None:
    one = diffusers_safetensors(tmp_path / "one.safetensors", "<x>", vectors(2, seed=1))
    two = diffusers_safetensors(tmp_path / "two.safetensors", "<X>", vectors(1, seed=2))
    with pytest.raises(CheckpointError, match="'<X>' is also a token of one.safetensors"):
        add_embeddings(model, [EmbeddingSpec(one), EmbeddingSpec(two)])
    # <x> has 2 vectors, <x> and <x>_1: an embedding named <x>_2 would read as its third.
    with pytest.raises(CheckpointError, match="would read as a further vector of '<x>'"):
        add_embeddings(model, [EmbeddingSpec(one), EmbeddingSpec(two, "<x>_2")])


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_pickle_is_refused_unopened(model, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": vectors(1, seed=1)}, "name": RunsCode(marker)}, path)
    message = refused(model, EmbeddingSpec(path))
    assert "refused to unpickle" in message and "system" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, why",
    [
        ({"clip_g": vectors(1, 1, 1280), "clip_l": vectors(1, 2, 768)}, "an SDXL embedding"),
        ({"a": vectors(1, 1), "b": vectors(1, 2)}, "not one textual-inversion embedding"),
        ({"<x>": torch.zeros(2, 3, WIDTH)}, "not a [vectors, width] table"),
        ({"<x>": torch.full((1, WIDTH), float("nan"))}, "NaN"),
        ({"<x>": torch.zeros(76, WIDTH)}, "it has 76 vectors"),
    ],
)
def test_files_that_are_not_embeddings_are_refused(model, tmp_path: Path, content, why: str) -> None:
    path = tmp_path / "x.safetensors"
    save_file(content, path)
    assert why in refused(model, EmbeddingSpec(path))


def test_embedding_option_parsing(tmp_path: Path) -> None:
    plain = tmp_path / "a.pt"
    plain.touch()
    colon = tmp_path / "b:c.pt"
    colon.touch()
    assert parse_embedding_option(str(plain)) == EmbeddingSpec(plain)
    assert parse_embedding_option(f"{plain}:<tok>") == EmbeddingSpec(plain, "<tok>")
    assert parse_embedding_option(str(colon)) == EmbeddingSpec(colon)
    assert parse_embedding_option(f"{colon}:x") == EmbeddingSpec(colon, "x")
    with pytest.raises(CheckpointError, match="empty"):
        parse_embedding_option(f"{plain}:")
