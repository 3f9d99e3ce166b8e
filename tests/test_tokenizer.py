"""The tokenizer folder sdexport writes, and sdrun's tokenizer, against transformers' CLIP tokenizers.

Without ftfy installed (the test environment has none), transformers' slow CLIPTokenizer cleans text with
its BERT BasicTokenizer: it drops control and format characters (zero-width space, the zero-width joiner
inside emoji sequences) and spaces out CJK ideographs, while CLIPTokenizerFast keeps both. sdrun follows
CLIPTokenizerFast, so the prompts in SLOW_DIFFERS are compared with the fast tokenizer only.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import transformers
from transformers.models.clip.tokenization_clip import bytes_to_unicode

from sdexport.export.tokenizer_files import write_tokenizer
from sdrun.tokenizer import CLIPTokenizer, PromptTruncatedWarning, TokenizerError

LONG_PROMPT = (
    "masterpiece, best quality, ultra-detailed, 8k, a portrait of an old sailor with a grey beard, "
    "weathered skin, wearing a yellow raincoat, standing on the deck of a fishing boat in a storm, "
    "dramatic lighting, waves crashing, rain, cinematic composition, by greg rutkowski and alphonse mucha, "
    "trending on artstation, sharp focus, highly detailed face, volumetric fog, golden hour"
)
PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "Hello, world! How are you?? ... -- ;; ~~ @#$%^&*",
    "1girl, solo, 3.14, 1,000 apples, 2024-01-31, 100%",
    "café, naïve, Ångström, crème brûlée, Ærøskøbing",
    "cafe\u0301 (decomposed accent)",
    "🙂 😀👍🏽 🚀 ❤️",
    "  leading and trailing  \t\ttabs\n\nnewlines\r\n   runs  ",
    "UPPER CASE and MiXeD CaSe",
    "don't it's they're we've I'm you'll he'd DON'T IT'S",
    "<b>bold</b> &amp; <a href='x'>link</a> <br/>",
    "",
    LONG_PROMPT,
    "(masterpiece:1.2), ((best quality)), [blurry:0.5], {cat|dog}",
    "İstanbul, straße, STRASSE, ﬁne",
    "<|endoftext|> typed in a prompt <|startoftext|>",
]
SLOW_DIFFERS = [
    "日本語のテキスト, 中文, 한국어",
    "family 👨\u200d👩\u200d👧 emoji",
    "zero\u200bwidth and \x07 bell",
]
PADDED = {"padding": "max_length", "max_length": 77, "truncation": True}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(folder: Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_folder(folder)


def test_transformers_loads_the_folder(folder: Path) -> None:
    for cls in (transformers.CLIPTokenizer, transformers.CLIPTokenizerFast):
        reference = cls.from_pretrained(folder)
        assert len(reference) == 49_408
        assert (reference.bos_token, reference.bos_token_id) == ("<|startoftext|>", 49_406)
        assert (reference.eos_token, reference.eos_token_id) == ("<|endoftext|>", 49_407)
        assert reference.pad_token_id == reference.unk_token_id == 49_407
        assert reference.model_max_length == 77


def test_folder_files_are_what_transformers_saves(folder: Path, tmp_path: Path) -> None:
    transformers.CLIPTokenizer.from_pretrained(folder).save_pretrained(tmp_path)
    for name in ("vocab.json", "special_tokens_map.json", "tokenizer_config.json"):
        ours = json.loads((folder / name).read_text(encoding="utf-8"))
        assert ours == json.loads((tmp_path / name).read_text(encoding="utf-8")), name
    assert (folder / "merges.txt").read_text(encoding="utf-8") == (tmp_path / "merges.txt").read_text(
        encoding="utf-8"
    )


def test_vocabulary_layout(folder: Path) -> None:
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    tokens = sorted(vocab, key=vocab.get)
    assert len(tokens) == 49_408 and sorted(vocab.values()) == list(range(49_408))
    symbols = list(bytes_to_unicode().values())
    assert tokens[:256] == symbols
    assert tokens[256:512] == [symbol + "</w>" for symbol in symbols]
    merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48_894
    assert tokens[512:-2] == [line.replace(" ", "") for line in merges[1:]]
    assert tokens[-2:] == ["<|startoftext|>", "<|endoftext|>"]


def test_known_ids(tokenizer: CLIPTokenizer) -> None:
    # Published in transformers' CLIP documentation and countless SD notebooks.
    ids = tokenizer.encode(["a photo of a cat", "a photo of a dog"])
    assert ids[:, :7].tolist() == [
        [49406, 320, 1125, 539, 320, 2368, 49407],
        [49406, 320, 1125, 539, 320, 1929, 49407],
    ]


def test_runtime_special_ids(tokenizer: CLIPTokenizer) -> None:
    assert tokenizer.vocab_size == 49_408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        49_406,
        49_407,
        49_407,
    )
    assert tokenizer.max_length == 77


def _encode_quietly(tokenizer: CLIPTokenizer, prompts: list[str]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        return tokenizer.encode(prompts)


def test_matches_transformers_fast(folder: Path, tokenizer: CLIPTokenizer) -> None:
    prompts = PROMPTS + SLOW_DIFFERS
    expected = transformers.CLIPTokenizerFast.from_pretrained(folder)(prompts, **PADDED).input_ids
    ids = _encode_quietly(tokenizer, prompts)
    assert ids.dtype == np.int64 and ids.shape == (len(prompts), 77)
    for prompt, row, reference in zip(prompts, ids.tolist(), expected, strict=True):
        assert row == reference, prompt


def test_matches_transformers_slow(folder: Path, tokenizer: CLIPTokenizer) -> None:
    expected = transformers.CLIPTokenizer.from_pretrained(folder)(PROMPTS, **PADDED).input_ids
    for prompt, row, reference in zip(
        PROMPTS, _encode_quietly(tokenizer, PROMPTS).tolist(), expected, strict=True
    ):
        assert row == reference, prompt


def test_truncation_warns_with_dropped_count(folder: Path, tokenizer: CLIPTokenizer) -> None:
    reference = transformers.CLIPTokenizerFast.from_pretrained(folder)
    full_ids = reference(LONG_PROMPT).input_ids
    dropped = len(full_ids) - 77
    assert dropped > 0
    with pytest.warns(PromptTruncatedWarning, match=f"prompt 1 .* {dropped} tokens dropped") as caught:
        tokenizer.encode(["short", LONG_PROMPT])
    assert len(caught) == 1

    (truncation,) = tokenizer.tokenize(["short", LONG_PROMPT]).truncations
    assert (truncation.prompt_index, truncation.dropped_tokens) == (1, dropped)
    assert LONG_PROMPT.endswith(truncation.dropped_text)
    assert reference(truncation.dropped_text).input_ids[1:-1] == full_ids[76:-1]


def test_no_warning_at_exactly_77(tokenizer: CLIPTokenizer) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncatedWarning)
        ids = tokenizer.encode(["cat " * 75])
    assert ids[0, -1] == tokenizer.eos_token_id
    assert tokenizer.tokenize(["cat " * 76]).truncations[0].dropped_tokens == 1


def test_reads_pad_token_and_legacy_configs(folder: Path, tmp_path: Path) -> None:
    # An SD 2.x-style tokenizer pads with "!" (id 0); an SD 1.5 hub folder writes AddedToken dicts.
    base = transformers.CLIPTokenizer.from_pretrained(folder)
    base.pad_token = "!"
    base.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("added_tokens_decoder")
    config["bos_token"] = {"__type": "AddedToken", "content": "<|startoftext|>", "normalized": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")

    reference = transformers.CLIPTokenizerFast.from_pretrained(tmp_path)
    ours = CLIPTokenizer.from_folder(tmp_path)
    assert ours.pad_token_id == reference.pad_token_id == 0
    prompts = ["a red car", "(masterpiece:1.2)"]
    assert ours.encode(prompts).tolist() == reference(prompts, **PADDED).input_ids


def test_bad_inputs_raise_clear_errors(folder: Path, tmp_path: Path, tokenizer: CLIPTokenizer) -> None:
    with pytest.raises(TokenizerError, match="vocab.json not found"):
        CLIPTokenizer.from_folder(tmp_path)
    with pytest.raises(TokenizerError, match="list of strings"):
        tokenizer.encode("a single prompt")
    (tmp_path / "vocab.json").write_text(
        json.dumps({"a": 0, "b": 1, "<|endoftext|>": 2, "<|startoftext|>": 3})
    )
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(TokenizerError, match="do not match"):
        CLIPTokenizer.from_folder(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\nab\n")
    with pytest.raises(TokenizerError, match="merges.txt:2"):
        CLIPTokenizer.from_folder(tmp_path)
