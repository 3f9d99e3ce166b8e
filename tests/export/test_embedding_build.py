"""`sdexport build --embedding FILE[:TOKEN] --clip-skip N`: the exported folder, through sdrun's tokenizer
and text encoder graph, against diffusers' `load_textual_inversion` + `encode_prompt(clip_skip=N - 1)` on
the tiny random pipeline of tests/conftest.py; the manifest, `sdexport inspect`, the PNG's "Clip skip",
the folder's tokenizer as transformers reads it, and what is refused."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file
from transformers import CLIPTokenizer as TransformersCLIPTokenizer

from sdexport.checkpoints import LoadedModel
from sdexport.cli import main
from sdexport.export.errors import BuildError
from sdexport.export.folder import BuildOptions, build_folder
from sdexport.models import StableDiffusion, StableDiffusionConfig
from sdrun import Pipeline
from sdrun.cli import main as sdrun_main
from sdrun.folder import sha256_of
from sdrun.infotext import format_parameters, parse_parameters
from sdrun.png_files import save_png

TOLERANCE = 1e-4  # relative, as the fp32 graph checks
PROMPT = "<two> in the style of my-style, <two>"


def rel_err(ours: np.ndarray, ref: torch.Tensor) -> float:
    return float(np.linalg.norm(ours - ref.numpy()) / ref.norm().item())


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An AUTOMATIC1111 .pt of 3 vectors (named by its file) and a diffusers one of 2 (given a word)."""
    folder = tmp_path_factory.mktemp("embeddings")
    generator = torch.Generator().manual_seed(0)
    a1111 = folder / "my-style.pt"
    torch.save({"string_to_param": {"*": 2 * torch.randn(3, 32, generator=generator)}, "name": "x"}, a1111)
    diffusers = folder / "learned_embeds.safetensors"
    save_file({"<stored>": 2 * torch.randn(2, 32, generator=generator)}, diffusers)
    return a1111, diffusers


@pytest.fixture(scope="module")
def built(tiny_diffusers_dir: Path, files, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    a1111, diffusers = files
    out = tmp_path_factory.mktemp("embedding-build") / "model"
    command = [
        "build", str(tiny_diffusers_dir), "-o", str(out), "--clip-skip", "2",
        "--embedding", str(a1111), "--embedding", f"{diffusers}:<two>",
    ]  # fmt: skip
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output
    return out, result.output


def reference(folder: Path, files, clip_skip: int | None) -> tuple[list[int], torch.Tensor]:
    """diffusers' token ids of PROMPT (its multi-vector words expanded) and its prompt embeddings."""
    a1111, diffusers = files
    pipeline = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipeline.load_textual_inversion([str(a1111), str(diffusers)], token=["my-style", "<two>"])
    converted = pipeline.maybe_convert_prompt(PROMPT, pipeline.tokenizer)
    ids = pipeline.tokenizer(converted, padding="max_length", max_length=77).input_ids
    with torch.no_grad():
        embeds, _ = pipeline.encode_prompt(PROMPT, "cpu", 1, False, clip_skip=clip_skip)
    return ids, embeds


def test_folder_matches_diffusers_textual_inversion_with_clip_skip(
    built, tiny_diffusers_dir: Path, files
) -> None:
    out, _ = built
    expected_ids, expected = reference(tiny_diffusers_dir, files, clip_skip=1)  # diffusers' 1 is our 2
    with Pipeline.load(out, provider="cpu") as pipe:
        ids = pipe.tokenizer.encode([PROMPT])
        states = pipe.encode_prompt(PROMPT, "", 1.0).conditional
    assert ids[0].tolist() == expected_ids
    assert rel_err(states, expected) < TOLERANCE
    # Power: without the clip skip, and with a vector of an embedding swapped, the output differs.
    _, last_layer = reference(tiny_diffusers_dir, files, clip_skip=None)
    assert rel_err(states, last_layer) > 100 * TOLERANCE
    swapped = ids.copy()
    first = int(np.flatnonzero(ids[0] >= 49408)[0])
    swapped[0, [first, first + 1]] = swapped[0, [first + 1, first]]
    graph = ort.InferenceSession(str(out / "text_encoder" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert rel_err(graph.run(["last_hidden_state"], {"input_ids": ids})[0], expected) < TOLERANCE
    assert rel_err(graph.run(["last_hidden_state"], {"input_ids": swapped})[0], expected) > 100 * TOLERANCE


def test_manifest_inspect_and_png_record_them(built, files) -> None:
    out, log = built
    a1111, diffusers = files
    assert "Added embedding my-style.pt as my-style (3 vectors)" in log
    manifest = json.loads((out / "sdexport_manifest.json").read_text())
    assert manifest["clip_skip"] == 2
    assert manifest["embeddings"] == [
        {
            "file": "my-style.pt",
            "sha256": sha256_of(a1111),
            "layout": "a1111",
            "token": "my-style",
            "vectors": 3,
            "tokens": ["my-style", "my-style_1", "my-style_2"],
            "token_ids": [49408, 49409, 49410],
        },
        {
            "file": diffusers.name,
            "sha256": sha256_of(diffusers),
            "layout": "diffusers",
            "token": "<two>",
            "vectors": 2,
            "tokens": ["<two>", "<two>_1"],
            "token_ids": [49411, 49412],
        },
    ]
    assert json.loads((out / "text_encoder" / "config.json").read_text())["vocab_size"] == 49413
    inspected = CliRunner().invoke(main, ["inspect", str(out), "--verify"])
    assert inspected.exit_code == 0, inspected.output
    assert "embedding added: my-style.pt as my-style (3 vectors, token ids 49408-49410)" in inspected.output
    assert "clip skip 2" in inspected.output
    with Pipeline.load(out, provider="cpu") as pipe:
        result = pipe.generate("my-style", seed=1, steps=1, width=64, height=64)
    [settings] = result.settings
    text = format_parameters(settings)
    assert "Clip skip: 2" in text
    assert parse_parameters(text) == settings


def test_folder_tokenizer_reads_alike_in_transformers(built, tiny_diffusers_dir: Path, files) -> None:
    """The tokens sit where transformers keeps added tokens, so diffusers and optimum read the folder's
    tokenizer as sdrun does."""
    out, _ = built
    tokenizer = TransformersCLIPTokenizer.from_pretrained(out / "tokenizer")
    expected_ids, _ = reference(tiny_diffusers_dir, files, clip_skip=1)
    converted = "<two> <two>_1 in the style of my-style my-style_1 my-style_2, <two> <two>_1"
    assert tokenizer(converted, padding="max_length", max_length=77).input_ids == expected_ids


def test_plain_build_has_no_clip_skip_in_the_png(tiny_sdexport_dir: Path, built, tmp_path: Path) -> None:
    manifest = json.loads((tiny_sdexport_dir / "sdexport_manifest.json").read_text())
    assert (manifest["clip_skip"], manifest["embeddings"]) == (1, [])
    with Pipeline.load(tiny_sdexport_dir, provider="cpu") as pipe:
        [settings] = pipe.generate("a cat", seed=1, steps=1, width=64, height=64).settings
    assert settings.clip_skip == 1 and "Clip skip" not in format_parameters(settings)
    # A picture of the clip-skip-2 folder, made again with this one, says so.
    skipped = tmp_path / "skipped.png"
    with Pipeline.load(built[0], provider="cpu") as pipe:
        made = pipe.generate("a cat", seed=1, steps=1, width=64, height=64)
    save_png(made.images[0], skipped, made.settings[0])
    command = [
        "--from-png",
        str(skipped),
        "--model",
        str(tiny_sdexport_dir),
        "--out",
        str(tmp_path / "again.png"),
    ]
    result = CliRunner().invoke(sdrun_main, command)
    assert result.exit_code == 0, result.output
    assert "was made with Clip skip 2, this model folder has 1" in result.output


@pytest.mark.parametrize(
    "flags, code, message",
    [
        (["--clip-skip", "0"], 2, "0 is not in the range x>=1"),
        (["--clip-skip", "3"], 1, "--clip-skip 3: the text encoder has 2 layers; give 1 to 2"),
        (["--embedding", "missing.pt"], 1, "--embedding missing.pt: no such file"),
    ],
)
def test_build_refuses_bad_options(tiny_diffusers_dir: Path, tmp_path: Path, flags, code, message) -> None:
    result = CliRunner().invoke(main, ["build", str(tiny_diffusers_dir), "-o", str(tmp_path / "x"), *flags])
    assert result.exit_code == code and message in result.output, result.output
    assert not (tmp_path / "x").exists()


def test_clip_skip_is_refused_for_sd2(tmp_path: Path) -> None:
    """SD 2.x's text encoder already stops at its penultimate layer (the web UI ignores Clip skip there)."""
    model = StableDiffusion(StableDiffusionConfig.tiny_sd2())
    loaded = LoadedModel(model, "sd2", tmp_path / "sd2.safetensors", "original", "only set", "float32")
    with pytest.raises(BuildError, match="--clip-skip is for SD 1.x's CLIP text encoder"):
        build_folder(loaded, tmp_path / "out", BuildOptions(clip_skip=2), log=lambda _: None)
    assert not (tmp_path / "out").exists()
