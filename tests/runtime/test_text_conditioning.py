"""Prompts -> UNet context as AUTOMATIC1111 makes it (sdrun.text_conditioning), against a reference written
here in torch from A1111's algorithm (sd_hijack_clip.py's tokenize_line and process_tokens, sd_emphasis.py)
on transformers' CLIPTextModel and CLIPTokenizer holding the tiny model's weights; sdrun runs the ONNX
export of the same weights (sdexport's, and optimum's where the UNet is concerned)."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import CLIPTextModel
from transformers import CLIPTokenizer as ReferenceTokenizer
from webui_pictures import chunked_ids as reference_chunks

from sdrun import text_conditioning
from sdrun.errors import SettingsError
from sdrun.folder_layout import TEXT_ENCODER
from sdrun.guidance import PromptEmbeddings, guided_model
from sdrun.limits import MAX_PROMPT_CHUNKS
from sdrun.networks import TextEncoderGraph
from sdrun.pipeline import Pipeline
from sdrun.text_conditioning import chunk_words, condition, prompt_chunks, prompt_embeddings

TOLERANCE = 1e-4  # float32 ONNX against float32 PyTorch is ~1e-6 here
BREAK = ("BREAK", -1.0)
# One token each in CLIP's vocabulary.
WORDS = "red blue green cube ball cat dog tree house car sky sea sun moon star road".split()


@pytest.fixture(scope="module")
def pipeline(tiny_sdexport_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_sdexport_dir, provider="cpu")


@pytest.fixture(scope="module")
def reference(tiny_diffusers_dir: Path) -> tuple[ReferenceTokenizer, CLIPTextModel]:
    tokenizer = ReferenceTokenizer.from_pretrained(tiny_diffusers_dir / "tokenizer")
    model = CLIPTextModel.from_pretrained(tiny_diffusers_dir / "text_encoder").eval()
    return tokenizer, model


@pytest.fixture(scope="module")
def biased(tiny_diffusers_dir: Path) -> tuple[ReferenceTokenizer, CLIPTextModel]:
    """The tiny text encoder with a random final layer-norm bias. The tiny model's is zero, so each of its
    output states has a mean of zero and Original emphasis divides a mean of rounding noise by another:
    SD's encoders have a bias, and their chunks' means are well away from zero."""
    tokenizer = ReferenceTokenizer.from_pretrained(tiny_diffusers_dir / "tokenizer")
    model = CLIPTextModel.from_pretrained(tiny_diffusers_dir / "text_encoder").eval()
    with torch.no_grad():
        norm = model.text_model.final_layer_norm
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=torch.Generator().manual_seed(0)))
    return tokenizer, model


def _words(count: int, offset: int = 0) -> str:
    return " ".join(WORDS[(offset + index) % len(WORDS)] for index in range(count))


def reference_encode(
    reference: tuple[ReferenceTokenizer, CLIPTextModel],
    batch: list[list[tuple[list[int], list[float]]]],
    emphasis: str = "Original",
) -> torch.Tensor:
    """A1111's forward over a batch of prompts' chunks: missing chunks are the empty prompt's, each chunk
    index encoded as one batch and weighted as its emphasis mode says (sd_emphasis.py)."""
    tokenizer, model = reference
    empty = ([tokenizer.bos_token_id] + [tokenizer.eos_token_id] * 76, [1.0] * 77)
    states = []
    for index in range(max(len(chunks) for chunks in batch)):
        rows = [chunks[index] if index < len(chunks) else empty for chunks in batch]
        ids = torch.tensor([row[0] for row in rows])
        multipliers = torch.tensor([row[1] for row in rows])
        with torch.no_grad():
            z = model(input_ids=ids).last_hidden_state
        if emphasis in ("Original", "No norm"):
            before = z.mean()
            z = z * multipliers[..., None]
            if emphasis == "Original":
                z = z * (before / z.mean())
        states.append(z)
    return torch.cat(states, dim=1)


def _rel_err(ours: np.ndarray, ref: torch.Tensor) -> float:
    return float(np.linalg.norm(ours - ref.numpy()) / ref.norm().item())


def _encoder(pipeline: Pipeline):
    return pipeline._network(TEXT_ENCODER, TextEncoderGraph).encode


def _torch_encoder(model: CLIPTextModel):
    def encode(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(input_ids=torch.from_numpy(ids)).last_hidden_state.numpy()

    return encode


def _ours(pipeline: Pipeline, fragments: list[tuple[str, float]], emphasis: str, encode=None) -> np.ndarray:
    """sdrun's context for `fragments`: its tokenizer and chunks, then `encode` (the exported encoder by
    default) and its emphasis."""
    chunks = prompt_chunks(fragments, pipeline.tokenizer)
    empty = chunk_words([], pipeline.tokenizer)
    return condition([[chunks]], encode or _encoder(pipeline), emphasis, empty)[0][0]


WEIGHTED = [("a ", 1.0), ("red", 1.5), (" cube on a ", 1.0), ("table", 0.7), (", blurry", 1.21)]
CASES = {
    "three chunks": [(_words(170), 1.0)],
    "comma backtrack": [(_words(66) + ", " + _words(20, 3), 1.0)],
    "break": [("a red cube", 1.0), BREAK, ("a blue ball", 1.3)],
    "weighted": WEIGHTED,
    "weighted over two chunks": [(_words(60), 1.0), ("red sun", 1.4), (_words(30), 0.8)],
    "empty": [("", 1.0)],
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("emphasis", ["Original", "No norm", "Ignore"])
def test_chunks_and_emphasis_match_a1111(pipeline: Pipeline, biased, case: str, emphasis: str) -> None:
    """sdrun's tokenizer, chunks and emphasis over the reference encoder, against the reference's."""
    fragments = CASES[case]
    expected = reference_encode(biased, [reference_chunks(biased[0], fragments)], emphasis)
    ours = _ours(pipeline, fragments, emphasis, _torch_encoder(biased[1]))
    assert ours.shape == tuple(expected.shape)
    assert _rel_err(ours, expected) < TOLERANCE


@pytest.mark.parametrize("case", CASES)
def test_the_exported_encoder_gives_a1111s_chunks(pipeline: Pipeline, reference, case: str) -> None:
    """The same through the exported text encoder (weights multiplied, no mean restore: the tiny encoder's
    states have a zero mean, see `biased`)."""
    fragments = CASES[case]
    expected = reference_encode(reference, [reference_chunks(reference[0], fragments)], "No norm")
    assert _rel_err(_ours(pipeline, fragments, "No norm"), expected) < TOLERANCE


def test_the_cases_have_the_shapes_they_test(reference) -> None:
    tokenizer = reference[0]
    counts = {case: len(reference_chunks(tokenizer, fragments)) for case, fragments in CASES.items()}
    assert counts == {
        "three chunks": 3,
        "comma backtrack": 2,
        "break": 2,
        "weighted": 1,
        "weighted over two chunks": 2,
        "empty": 1,
    }
    # The comma moves the 20 words after it: without the backtrack the first chunk would end mid-list.
    moved = reference_chunks(tokenizer, CASES["comma backtrack"])[0][0]
    kept = reference_chunks(tokenizer, CASES["comma backtrack"], backtrack=0)[0][0]
    assert moved.index(tokenizer.eos_token_id) == 68 and kept.index(tokenizer.eos_token_id) == 76


def test_power_the_neighbouring_encodings_fail(pipeline: Pipeline, biased) -> None:
    """The literal (unweighted) prompt, weights without the mean restore, and chunks without the comma
    backtrack each miss the reference by far more than the tolerance."""
    tokenizer, encode = biased[0], _torch_encoder(biased[1])
    weighted = reference_encode(biased, [reference_chunks(tokenizer, WEIGHTED)])
    literal = [(text, 1.0) for text, _ in WEIGHTED]
    assert _rel_err(_ours(pipeline, literal, "Original", encode), weighted) > 100 * TOLERANCE
    # The restore rescales the whole chunk by one number, here 0.8 % from 1: 80 times the tolerance.
    assert _rel_err(_ours(pipeline, WEIGHTED, "No norm", encode), weighted) > 10 * TOLERANCE
    comma = CASES["comma backtrack"]
    without = reference_encode(biased, [reference_chunks(tokenizer, comma, backtrack=0)])
    assert _rel_err(_ours(pipeline, comma, "Original", encode), without) > 100 * TOLERANCE


def test_emphasis_none_reads_brackets_as_text(pipeline: Pipeline, reference) -> None:
    prompt = "a (red:1.5) cube BREAK [on] a table"
    literal = reference_encode(reference, [reference_chunks(reference[0], [(prompt, 1.0)])], "None")
    ours = pipeline.encode_prompt(prompt, "", 1.0, emphasis="None").conditional
    assert ours.shape == (1, 77, 32) and _rel_err(ours, literal) < TOLERANCE
    parsed = [("a ", 1.0), ("red", 1.5), (" cube", 1.0), BREAK, ("on", 1 / 1.1), (" a table", 1.0)]
    weighted = reference_encode(reference, [reference_chunks(reference[0], parsed)], "No norm")
    no_norm = pipeline.encode_prompt(prompt, "", 1.0, emphasis="No norm").conditional
    assert no_norm.shape == (1, 154, 32) and _rel_err(no_norm, weighted) < TOLERANCE
    ignored = pipeline.encode_prompt(prompt, "", 1.0, emphasis="Ignore").conditional
    unweighted = reference_encode(reference, [reference_chunks(reference[0], parsed)], "Ignore")
    assert _rel_err(ignored, unweighted) < TOLERANCE


def test_prompt_and_negative_of_different_lengths(pipeline: Pipeline, reference) -> None:
    """Each prompt is its own A1111 forward (its own means); with pad_conds the shorter is followed by the
    empty prompt's encoding, as A1111's pad_cond_uncond does."""
    tokenizer = reference[0]
    prompt, negative = "a (red:1.3) cube", _words(100) + ", (blurry:1.2)"
    fragments = [("a ", 1.0), ("red", 1.3), (" cube", 1.0)]
    negative_fragments = [(_words(100) + ", ", 1.0), ("blurry", 1.2)]
    cond = reference_encode(reference, [reference_chunks(tokenizer, fragments)], "No norm")
    uncond = reference_encode(reference, [reference_chunks(tokenizer, negative_fragments)], "No norm")
    embeddings = pipeline.encode_prompt(prompt, negative, 7.5, emphasis="No norm")
    assert embeddings.padding is None
    assert _rel_err(embeddings.conditional, cond) < TOLERANCE
    assert _rel_err(embeddings.unconditional, uncond) < TOLERANCE
    padded = pipeline.encode_prompt(prompt, negative, 7.5, emphasis="No norm", pad_conds=True)
    empty = reference_encode(reference, [reference_chunks(tokenizer, [("", 1.0)])])
    cond_now, uncond_now = padded.at(0)
    assert cond_now.shape == uncond_now.shape == (1, 154, 32)
    assert _rel_err(cond_now, torch.cat([cond, empty], dim=1)) < TOLERANCE
    assert _rel_err(uncond_now, uncond) < TOLERANCE


def test_a_schedule_is_one_batch(pipeline: Pipeline, biased) -> None:
    """A1111 encodes a prompt's editing schedule as one batch: the shorter texts are padded with empty
    chunks and Original emphasis takes its mean over the batch (repeats included)."""
    tokenizer = biased[0]
    texts = ["a (red:1.4) cube", _words(80), "a (red:1.4) cube"]
    parsed = {texts[0]: [("a ", 1.0), ("red", 1.4), (" cube", 1.0)], texts[1]: [(texts[1], 1.0)]}
    expected = reference_encode(biased, [reference_chunks(tokenizer, parsed[text]) for text in texts])
    schedule = [(3, texts[0]), (6, texts[1]), (9, texts[2])]
    embeddings = prompt_embeddings(pipeline.tokenizer, _torch_encoder(biased[1]), schedule, None)
    schedule = embeddings.conditional_schedule
    assert [last for last, _ in schedule] == [3, 6, 9]
    for row, (_, context) in enumerate(schedule):
        assert _rel_err(context, expected[row : row + 1]) < TOLERANCE
    picks = ((0, 0), (3, 0), (4, 1), (9, 2), (10, 0))  # past the end: A1111's first entry
    assert all(embeddings.at(call)[0] is schedule[index][1] for call, index in picks)


def test_a_multi_vector_word_stays_in_one_chunk() -> None:
    """A1111 moves a textual-inversion embedding that does not fit the chunk's room to the next chunk."""
    special = SimpleNamespace(bos_token_id=1, eos_token_id=2, pad_token_id=2, comma_token_id=3)
    words = [(10,)] * 73 + [(20, 21, 22), (11,)]
    chunks = chunk_words([(words, 1.2)], special)
    assert chunks.ids.shape == (2, 77)
    assert list(chunks.ids[0, 73:76]) == [10, 2, 2] and list(chunks.ids[1, :5]) == [1, 20, 21, 22, 11]
    assert chunks.weights[1, 1] == np.float32(1.2) and chunks.weights[0, 75] == 1.0


def test_open_clip_pads_with_its_pad_token_after_the_end() -> None:
    special = SimpleNamespace(bos_token_id=1, eos_token_id=2, pad_token_id=0, comma_token_id=3)
    chunks = chunk_words([([(10,)] * 3, 1.0)], special)
    assert list(chunks.ids[0, :7]) == [1, 10, 10, 10, 2, 0, 0] and chunks.ids[0, -1] == 0


def test_too_many_chunks_are_refused(pipeline: Pipeline) -> None:
    """When the call is prepared (before any network runs), and when encoding."""
    too_long = " BREAK ".join(["a"] * (MAX_PROMPT_CHUNKS + 1))
    with pytest.raises(SettingsError, match="more than 32 chunks"):
        pipeline.prepare("a cube", negative_prompt=too_long)
    with pytest.raises(SettingsError, match="more than 32 chunks"):
        pipeline.encode_prompt(too_long, "", 1.0)
    assert pipeline.prepare(" BREAK ".join(["a"] * MAX_PROMPT_CHUNKS)).steps > 0


def test_contexts_of_different_lengths_run_as_two_passes() -> None:
    """Without pad conds the UNet sees each context alone; with it, one batch of two."""
    seen = []

    def predict(x, t, context, guidance, extra):
        seen.append(context.shape)
        return x * context.mean(axis=(1, 2))[:, None, None, None]

    cond, uncond = np.full((1, 154, 4), 2.0, np.float32), np.full((1, 77, 4), 1.0, np.float32)
    x = np.ones((1, 4, 8, 8), np.float32)
    model = guided_model(
        predict, PromptEmbeddings(cond, uncond), 3.0, guidance_embedding_dim=None, sequential=False
    )
    assert np.allclose(model(x, 1.0), 1.0 + 3.0 * (2.0 - 1.0)) and seen == [(1, 77, 4), (1, 154, 4)]
    seen.clear()
    padding = np.zeros((1, 77, 4), np.float32)
    embeddings = PromptEmbeddings(cond, uncond, padding=padding)
    padded = guided_model(predict, embeddings, 3.0, guidance_embedding_dim=None, sequential=False)
    assert np.allclose(padded(x, 1.0), 0.5 + 3.0 * (2.0 - 0.5)) and seen == [(2, 154, 4)]


@pytest.mark.parametrize("folder", ["tiny_sdexport_dir", "tiny_onnx_dir"])
def test_exported_unets_take_longer_contexts(request: pytest.FixtureRequest, folder: str) -> None:
    """sdexport's and optimum's UNets take contexts of 154 and 231 tokens, as diffusers' UNet does."""
    from diffusers import UNet2DConditionModel

    diffusers_dir = request.getfixturevalue("tiny_diffusers_dir")
    unet_reference = UNet2DConditionModel.from_pretrained(diffusers_dir / "unet").eval()
    sdrun = Pipeline.load(request.getfixturevalue(folder), provider="cpu")
    generator = np.random.default_rng(0)
    latents = generator.standard_normal((1, 4, 8, 8)).astype(np.float32)
    for tokens in (154, 231):
        context = generator.standard_normal((1, tokens, 32)).astype(np.float32)
        ours = sdrun.guided_model(PromptEmbeddings(context, None), 1.0)(latents, 500.0)
        with torch.no_grad():
            expected = unet_reference(torch.from_numpy(latents), 500, torch.from_numpy(context)).sample
        assert _rel_err(ours, expected) < TOLERANCE


def test_a_unet_with_a_fixed_context_refuses_longer_prompts(pipeline: Pipeline, monkeypatch) -> None:
    from sdrun.folder_layout import UNET
    from sdrun.networks import UNetGraph

    unet = pipeline._network(UNET, UNetGraph)
    fixed = unet.context.__class__(unet.context.name, unet.context.dtype, (2, 77, 32))
    monkeypatch.setattr(unet, "context", fixed)
    long = pipeline.encode_prompt(_words(100), "", 1.0)
    with pytest.raises(SettingsError, match="77 tokens only and the prompts need 154.*export the model"):
        pipeline.guided_model(long, 1.0)


def test_comma_backtrack_of_zero_fails_the_reference(pipeline: Pipeline, reference, monkeypatch) -> None:
    """Power: sdrun without its comma backtrack misses A1111's chunks."""
    monkeypatch.setattr(text_conditioning, "COMMA_BACKTRACK", -1)
    comma = CASES["comma backtrack"]
    expected = reference_encode(reference, [reference_chunks(reference[0], comma)], "No norm")
    assert _rel_err(_ours(pipeline, comma, "No norm"), expected) > 100 * TOLERANCE


def test_prompt_editing_encodes_each_text_of_the_schedule(pipeline: Pipeline, reference) -> None:
    """"a [red:blue:2] cube" over 4 steps: A1111's schedule [(2, "a red cube"), (4, "a blue cube")], its
    texts encoded as one batch."""
    tokenizer = reference[0]
    edited = ("a [red:blue:2] cube", "[ugly|blurry]")
    embeddings = pipeline.encode_prompt(*edited, 7.5, emphasis="No norm", steps=4)
    texts = ["a red cube", "a blue cube"]
    expected = reference_encode(reference, [reference_chunks(tokenizer, [(text, 1.0)]) for text in texts])
    assert [last for last, _ in embeddings.conditional_schedule] == [2, 4]
    for row, (_, context) in enumerate(embeddings.conditional_schedule):
        assert _rel_err(context, expected[row : row + 1]) < TOLERANCE
    negatives = ["ugly", "blurry"] * 2
    assert [last for last, _ in embeddings.unconditional_schedule] == [1, 2, 3, 4]
    expected = reference_encode(reference, [reference_chunks(tokenizer, [(text, 1.0)]) for text in negatives])
    for row, (_, context) in enumerate(embeddings.unconditional_schedule):
        assert _rel_err(context, expected[row : row + 1]) < TOLERANCE


def test_the_guided_model_counts_model_calls_as_a1111s_cfg_denoiser() -> None:
    """CFGDenoiser reads the schedule at its call count (from 0) and counts one per model call: an entry
    ending at step 2 serves calls 0, 1 and 2."""
    seen = []

    def predict(x, t, context, guidance, extra):
        seen.append(float(context[0, 0, 0]))
        return x

    first, second = np.zeros((1, 77, 4), np.float32), np.ones((1, 77, 4), np.float32)
    embeddings = PromptEmbeddings(first, None, conditional_schedule=((2, first), (4, second)))
    model = guided_model(predict, embeddings, 1.0, guidance_embedding_dim=None, sequential=False)
    for _ in range(5):
        model(np.zeros((1, 4, 8, 8), np.float32), 1.0)
    assert seen == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_prompt_editing_changes_the_picture(pipeline: Pipeline) -> None:
    settings = {"steps": 4, "seed": 3, "width": 64, "height": 64, "sampler": "euler", "guidance_scale": 7.5}
    pictures = [
        np.asarray(pipeline.generate(prompt, **settings).images[0], dtype=np.int16)
        for prompt in ("a red cube", "a blue cube", "a [red:blue:2] cube")
    ]
    assert np.abs(pictures[2] - pictures[0]).max() > 0 and np.abs(pictures[2] - pictures[1]).max() > 0
