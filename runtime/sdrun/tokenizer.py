"""CLIP's BPE tokenizer (Radford et al. 2021) on the `tokenizers` library, read from a tokenizer folder.

The pipeline is the one of transformers' CLIPTokenizerFast: NFC, whitespace runs collapsed to one space,
lower case; CLIP's word regex; GPT-2's byte-to-unicode map; BPE with "</w>" closing each word. A prompt
becomes [start, ids..., end, pad...], cut to the model's context length (77 for SD 1.x).

Added tokens (tokenizer_config.json's `added_tokens_decoder`, where transformers keeps them: the words of
textual-inversion embeddings) are whole words. A multi-vector embedding's word WORD stands for all of its
tokens WORD, WORD_1, WORD_2, ..., as in diffusers' `maybe_convert_prompt`.
"""

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE

from sdrun.errors import ModelFolderError, SdrunError
from sdrun.folder_files import inside, parse_json, read_text
from sdrun.folder_layout import END_TOKEN, START_TOKEN

# The text encoder's context length, for folders whose tokenizer_config.json does not give one.
CLIP_CONTEXT_LENGTH = 77
# CLIP's words: its contractions, runs of letters, single digits, runs of other non-space symbols.
CLIP_WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
DEFAULT_SPECIAL_TOKENS = {
    "bos_token": START_TOKEN,
    "eos_token": END_TOKEN,
    "pad_token": END_TOKEN,
    "unk_token": END_TOKEN,
}
# CLIP has 49,408 tokens; a vocabulary this large is not a text encoder's.
MAX_VOCABULARY = 1_000_000
# How much of the dropped text a truncation warning quotes.
_QUOTED_CHARACTERS = 80


class TokenizerError(SdrunError):
    """A tokenizer folder or a tokenizer input that cannot be used; the message says what to fix."""


class PromptTruncatedWarning(UserWarning):
    """A prompt was longer than the text encoder's context and lost its last tokens."""


@dataclass(frozen=True)
class Truncation:
    """What one prompt lost to the context length."""

    prompt_index: int
    dropped_tokens: int
    dropped_text: str

    def message(self, max_length: int) -> str:
        quoted = self.dropped_text
        if len(quoted) > _QUOTED_CHARACTERS:
            quoted = f"{quoted[:_QUOTED_CHARACTERS]}... ({len(self.dropped_text)} characters)"
        return (
            f"prompt {self.prompt_index} is longer than {max_length} tokens: "
            f"{self.dropped_tokens} tokens dropped: {quoted!r}"
        )


@dataclass(frozen=True)
class TokenizedPrompts:
    """input_ids: int64 [n, max_length]; truncations: one entry per prompt that was cut."""

    input_ids: np.ndarray
    truncations: list[Truncation]


class CLIPTokenizer:
    """Prompts -> the text encoder's input_ids, padded and truncated to the context length."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        special_tokens: dict[str, str] | None = None,
        max_length: int = CLIP_CONTEXT_LENGTH,
        added_tokens: dict[str, int] | None = None,
    ) -> None:
        tokens = {**DEFAULT_SPECIAL_TOKENS, **(special_tokens or {})}
        missing = sorted({content for content in tokens.values() if content not in vocab})
        if missing:
            raise TokenizerError(f"special tokens {missing} are not in the vocabulary: check vocab.json")
        if not merges:
            raise TokenizerError("merges.txt has no merges: use the tokenizer folder the model came with")
        if len(vocab) + len(added_tokens or {}) > MAX_VOCABULARY:
            raise TokenizerError(f"vocab.json has {len(vocab)} tokens, more than a CLIP tokenizer's")
        if not all(
            isinstance(token_id, int) and not isinstance(token_id, bool) for token_id in vocab.values()
        ):
            raise TokenizerError("vocab.json must map each token to a whole-number id: check vocab.json")
        if max_length < 2:
            raise TokenizerError(f"max_length {max_length} leaves no room for the start and end tokens")
        self.max_length = max_length
        self.bos_token_id = vocab[tokens["bos_token"]]
        self.eos_token_id = vocab[tokens["eos_token"]]
        self.pad_token_id = vocab[tokens["pad_token"]]
        # AUTOMATIC1111 moves the words after the last comma near a chunk's end into the next chunk.
        self.comma_token_id = vocab.get(",</w>")
        self._tokenizer = _build_tokenizer(vocab, merges, tokens)
        self._expansions = _add_words(self._tokenizer, added_tokens or {})
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_folder(cls, folder: Path) -> "CLIPTokenizer":
        """Read vocab.json and merges.txt, and the special tokens and max length from the JSON configs.

        Reads the files of transformers' CLIPTokenizer (the ones sdexport and optimum write); a
        tokenizer.json beside them is not needed and not read. Each file is read through the model
        folder's gate (sdrun.folder_files): none that leads outside `folder` is opened.
        """
        folder = Path(folder)
        vocab = _read_json(folder / "vocab.json", required=True)
        merges = _read_merges(folder / "merges.txt")
        config = _read_json(folder / "tokenizer_config.json", required=False)
        special_map = _read_json(folder / "special_tokens_map.json", required=False)
        special_tokens = {}
        for source in (special_map, config):  # tokenizer_config.json wins where both name a token
            given = {key: source[key] for key in DEFAULT_SPECIAL_TOKENS if source.get(key) is not None}
            special_tokens.update({key: _token_content(value) for key, value in given.items()})
        added_tokens = _added_words(config.get("added_tokens_decoder") or {})
        max_length = config.get("model_max_length")
        # transformers writes a huge sentinel (1e30) when a tokenizer has no length of its own.
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length > 1_000_000:
            max_length = CLIP_CONTEXT_LENGTH
        if max_length < 3:  # a prompt needs the start and end tokens and one of its own
            raise TokenizerError(
                f"model_max_length {max_length} in tokenizer_config.json leaves no room for a prompt"
            )
        return cls(vocab, merges, special_tokens, max_length, added_tokens)

    def tokenize(self, prompts: Sequence[str]) -> TokenizedPrompts:
        """Token ids of each prompt, and what each over-long prompt lost (no warning: the caller reports)."""
        _check_texts(prompts)
        room = self.max_length - 2
        input_ids = np.full((len(prompts), self.max_length), self.pad_token_id, dtype=np.int64)
        truncations = []
        encodings = self._tokenizer.encode_batch(list(prompts), add_special_tokens=False)
        for index, (prompt, encoding) in enumerate(zip(prompts, encodings, strict=True)):
            all_ids, offsets = self._expand(encoding.ids, encoding.offsets)
            ids = all_ids[:room]
            input_ids[index, : len(ids) + 2] = [self.bos_token_id, *ids, self.eos_token_id]
            if len(all_ids) > room:
                dropped_from = offsets[room][0]
                truncations.append(Truncation(index, len(all_ids) - room, prompt[dropped_from:].strip()))
        return TokenizedPrompts(input_ids, truncations)

    def words(self, texts: Sequence[str]) -> list[list[tuple[int, ...]]]:
        """Each text's tokens, without start, end or padding, as words: one token each, except a
        multi-vector embedding's word, which is all of its tokens (a chunk keeps them together)."""
        _check_texts(texts)
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [[self._expansions.get(token, (token,)) for token in item.ids] for item in encodings]

    def _expand(
        self, ids: list[int], offsets: list[tuple[int, int]]
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Each multi-vector word's id replaced by its tokens' ids, each of them at the word's offsets."""
        if not self._expansions:
            return ids, offsets
        expanded_ids, expanded_offsets = [], []
        for token_id, offset in zip(ids, offsets, strict=True):
            tokens = self._expansions.get(token_id, (token_id,))
            expanded_ids += tokens
            expanded_offsets += [offset] * len(tokens)
        return expanded_ids, expanded_offsets

    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        """int64 [n, max_length] input_ids; warns (PromptTruncatedWarning) for each prompt that was cut."""
        tokenized = self.tokenize(prompts)
        for truncation in tokenized.truncations:
            warnings.warn(truncation.message(self.max_length), PromptTruncatedWarning, stacklevel=2)
        return tokenized.input_ids


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise TokenizerError("prompts must be a list of strings: wrap a single prompt in a list")
    for text in texts:
        try:
            text.encode("utf-8")
        # Lone surrogates: what Python makes of non-UTF-8 bytes in argv.
        except UnicodeEncodeError as error:
            raise TokenizerError("the prompt is not valid UTF-8 text: write it in UTF-8") from error


def _build_tokenizer(
    vocab: dict[str, int], merges: list[tuple[str, str]], tokens: dict[str, str]
) -> Tokenizer:
    try:
        model = BPE(vocab, merges, unk_token=tokens["unk_token"], end_of_word_suffix="</w>", fuse_unk=False)
    except Exception as error:  # tokenizers raises a bare Exception for merges outside the vocabulary
        raise TokenizerError(
            f"vocab.json and merges.txt do not match ({error}): use the pair from one model"
        ) from error
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    # Typed in a prompt, the special tokens map to their ids, as in transformers' tokenizers.
    specials = dict.fromkeys(tokens.values())
    tokenizer.add_special_tokens([AddedToken(content, normalized=True) for content in specials])
    return tokenizer


def _added_words(decoder: object) -> dict[str, int]:
    """The non-special entries of `added_tokens_decoder` ({id: AddedToken dict}) as content -> id."""
    if not isinstance(decoder, dict):
        raise TokenizerError("tokenizer_config.json's added_tokens_decoder is not a table: re-export it")
    words = {}
    for key, entry in decoder.items():
        if not isinstance(entry, dict) or entry.get("special") is not False:
            continue
        content = _token_content(entry)
        if not key.isdigit() or not content.strip():
            raise TokenizerError(
                f"added token {content[:40]!r} has id {key[:20]!r}: fix tokenizer_config.json"
            )
        words[content] = int(key)
    return words


def _add_words(tokenizer: Tokenizer, words: dict[str, int]) -> dict[int, tuple[int, ...]]:
    """Add `words` (content -> id) to `tokenizer` as whole, lower-cased words; returns the ids that stand
    for several (a word followed by WORD_1, WORD_2, ... among them) and the ids they stand for."""
    ordered = sorted(words.items(), key=lambda item: item[1])
    tokenizer.add_tokens([AddedToken(content, normalized=True) for content, _ in ordered])
    for content, token_id in ordered:
        if tokenizer.token_to_id(content) != token_id:
            raise TokenizerError(
                f"added token {content[:40]!r} has id {token_id}, which does not follow vocab.json's ids: "
                "re-export the tokenizer folder"
            )
    expansions = {}
    for content, token_id in ordered:
        tokens, count = [token_id], 1
        while f"{content}_{count}" in words:
            tokens.append(words[f"{content}_{count}"])
            count += 1
        if len(tokens) > 1:
            expansions[token_id] = tuple(tokens)
    return expansions


def _read_json(path: Path, required: bool) -> dict:
    if not (path.exists() or path.is_symlink()):
        if required:
            raise TokenizerError(f"{path} not found: pass the model's tokenizer folder")
        return {}
    try:
        content = parse_json(read_text(inside(path.parent, path.name, "tokenizer file")), str(path))
    except ModelFolderError as error:
        raise TokenizerError(f"{error}: re-export the tokenizer folder") from error
    if not isinstance(content, dict):
        raise TokenizerError(f"{path} holds no JSON object: re-export the tokenizer folder")
    return content


def _read_merges(path: Path) -> list[tuple[str, str]]:
    if not (path.exists() or path.is_symlink()):
        raise TokenizerError(f"{path} not found: pass the model's tokenizer folder")
    try:
        lines = read_text(inside(path.parent, path.name, "tokenizer file")).splitlines()
    except ModelFolderError as error:
        raise TokenizerError(f"{error}: re-export the tokenizer folder") from error
    merges = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#version"):
            continue
        pair = line.split()
        if len(pair) != 2:
            raise TokenizerError(f"{path}:{number} is not a merge of two symbols: {line[:80]!r}")
        merges.append((pair[0], pair[1]))
    return merges


def _token_content(value: object) -> str:
    """A special token as the configs write it: a string, or an AddedToken dict with its content."""
    content = value.get("content") if isinstance(value, dict) else value
    if not isinstance(content, str):
        raise TokenizerError(f"special token {value!r} has no text content: fix the tokenizer config")
    return content
