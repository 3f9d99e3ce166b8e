"""Prompts -> the UNet's text context, as AUTOMATIC1111 makes it (its sd_hijack_clip.py and sd_emphasis.py).

A prompt's fragments (text, weight) become chunks of 75 tokens, each sent to the text encoder as
[start, 75 tokens, end] padded to 77; the chunks' hidden states are joined along the tokens, so the context
is [1, 77 k, width] and nothing is cut. A chunk closes early at BREAK, and when it fills up within
COMMA_BACKTRACK tokens of its last comma, the words after that comma move to the next chunk. A multi-vector
embedding's word is never split over two chunks. The empty prompt is one chunk.

Emphasis (A1111's "Emphasis mode"), per chunk, after the encoder: "Original" multiplies each token's state
by its weight and then rescales the chunk so that its mean is the mean before weighting; "No norm" only
multiplies; "Ignore" reads the weights' brackets but uses no weights; "None" reads brackets as literal text.
The mean is taken over the batch that A1111 encodes together: the texts of one prompt's editing schedule.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sdrun.errors import SettingsError
from sdrun.guidance import PromptEmbeddings
from sdrun.limits import MAX_PROMPT_CHUNKS
from sdrun.prompt_syntax import BREAK, parse_emphasis
from sdrun.tokenizer import CLIPTokenizer

# A chunk's own tokens, between its start and end tokens.
CHUNK_TOKENS = 75
# A1111's `comma_padding_backtrack` default.
COMMA_BACKTRACK = 20

# (text, weight) pairs, as sdrun.prompt_syntax.parse_emphasis gives them.
Fragment = tuple[str, float]
# A prompt's editing schedule: (last model call, text) pairs (sdrun.prompt_syntax.prompt_schedule).
Schedule = Sequence[tuple[int, str]]
# The text encoder: token ids [n, 77] -> hidden states [n, 77, width].
Encode = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Chunks:
    """A prompt's chunks: token ids, int64 [k, 77], and each token's weight, float32 [k, 77]."""

    ids: np.ndarray
    weights: np.ndarray


def chunk_words(
    pieces: Sequence[tuple[Sequence[tuple[int, ...]] | None, float]], tokenizer: CLIPTokenizer
) -> Chunks:
    """Chunks of `pieces`: each a fragment's words (sdrun.tokenizer.CLIPTokenizer.words) and its weight, or
    (None, _) for BREAK. Refuses more than MAX_PROMPT_CHUNKS chunks."""
    rows: list[list[int]] = []
    row_weights: list[list[float]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1  # where the current chunk's last comma is, -1 for none

    def close() -> None:
        nonlocal ids, weights, last_comma
        if len(rows) == MAX_PROMPT_CHUNKS:
            raise SettingsError(
                f"the prompt needs more than {MAX_PROMPT_CHUNKS} chunks of {CHUNK_TOKENS} tokens: "
                "shorten it or use fewer BREAKs"
            )
        fill = CHUNK_TOKENS - len(ids) + 1
        rows.append([tokenizer.bos_token_id, *ids, *[tokenizer.eos_token_id] * fill])
        row_weights.append([1.0, *weights, *[1.0] * fill])
        ids, weights, last_comma = [], [], -1

    for words, weight in pieces:
        if words is None:
            close()
            continue
        for word in words:
            if len(word) > CHUNK_TOKENS:
                raise SettingsError(f"an embedding of {len(word)} vectors does not fit in a chunk of 75")
            if word == (tokenizer.comma_token_id,):
                last_comma = len(ids)
            elif len(ids) == CHUNK_TOKENS and 0 <= CHUNK_TOKENS - last_comma <= COMMA_BACKTRACK:
                # The chunk is full and a comma is near its end: what follows the comma starts the next one.
                moved, moved_weights = ids[last_comma + 1 :], weights[last_comma + 1 :]
                ids, weights = ids[: last_comma + 1], weights[: last_comma + 1]
                close()
                ids, weights = moved, moved_weights
            if len(ids) + len(word) > CHUNK_TOKENS:
                close()
            ids += word
            weights += [weight] * len(word)
    if ids or not rows:
        close()
    token_ids = np.array(rows, dtype=np.int64)
    if tokenizer.pad_token_id != tokenizer.eos_token_id:
        # OpenCLIP (SD 2.x) pads with its own token after the first end token, as A1111 does.
        ends = token_ids == tokenizer.eos_token_id
        token_ids[np.cumsum(ends, axis=1) - ends > 0] = tokenizer.pad_token_id
    return Chunks(token_ids, np.array(row_weights, dtype=np.float32))


def prompt_chunks(fragments: Sequence[Fragment], tokenizer: CLIPTokenizer) -> Chunks:
    """The chunks of a prompt given as (text, weight) fragments, BREAK among them."""
    texts = [text for text, weight in fragments if (text, weight) != BREAK]
    words = iter(tokenizer.words(texts))
    pieces = [(None, 1.0) if (text, weight) == BREAK else (next(words), weight) for text, weight in fragments]
    return chunk_words(pieces, tokenizer)


def emphasize(
    states: np.ndarray, weights: np.ndarray, mode: str, counts: np.ndarray | None = None
) -> np.ndarray:
    """One chunk's hidden states [n, 77, width] for the batch encoded together, under emphasis `mode`;
    row i stands for `counts[i]` rows of A1111's batch (a text its schedule repeats), 1 each without."""
    if mode in ("None", "Ignore") or not (weights != 1.0).any():
        return states
    weighted = states * weights[..., None]
    if mode == "No norm":
        return weighted
    # "Original": A1111 says the mean restore is a heuristic against artifacts, not a derivation.
    return weighted * (_mean(states, counts) / _mean(weighted, counts))


def _mean(values: np.ndarray, counts: np.ndarray | None) -> np.float32:
    """The mean over the batch in which row i stands for counts[i] rows."""
    if counts is None or (counts == 1).all():
        return values.mean(dtype=np.float32)
    per_row = values.mean(axis=(1, 2), dtype=np.float32)
    return np.float32((per_row * counts).sum(dtype=np.float32) / counts.sum())


def condition(
    batches: Sequence[Sequence[Chunks]], encode: Encode, mode: str, empty: Chunks
) -> list[list[np.ndarray]]:
    """The context [1, 77 k, width] of each prompt of each batch. A batch is what A1111 encodes together
    (one prompt, or the texts of one editing schedule, repeats included): its shorter prompts are padded
    with `empty` (the empty prompt's chunk) to its longest, and emphasis takes its means over it. Each
    batch's distinct prompts are encoded once, and their distinct chunks go through the encoder in one
    call for all batches (the same chunk in two batches twice, as A1111 encodes each prompt apart: two
    short prompts are then the rows [prompt, negative])."""
    plans = []
    rows: list[np.ndarray] = []
    for batch in batches:
        length = max(len(chunks.ids) for chunks in batch)
        members: dict[bytes, int] = {}
        distinct: list[tuple[np.ndarray, np.ndarray]] = []
        order = []
        for chunks in batch:
            key = chunks.ids.tobytes() + chunks.weights.tobytes()
            if key not in members:
                members[key] = len(distinct)
                distinct.append(_rows(chunks, length, empty))
            order.append(members[key])
        place: dict[bytes, int] = {}
        for ids, _ in distinct:
            for row in ids:
                if row.tobytes() not in place:
                    place[row.tobytes()] = len(rows)
                    rows.append(row)
        counts = np.bincount(order, minlength=len(distinct)).astype(np.float32)
        plans.append((distinct, order, place, counts))
    states = encode(np.stack(rows))
    contexts = []
    for distinct, order, place, counts in plans:
        chunk_states = [
            emphasize(
                np.stack([states[place[ids[index].tobytes()]] for ids, _ in distinct]),
                np.stack([weights[index] for _, weights in distinct]),
                mode,
                counts,
            )
            for index in range(len(distinct[0][0]))
        ]
        joined = np.concatenate(chunk_states, axis=1)  # [distinct prompts, 77 k, width]
        contexts.append([joined[item : item + 1] for item in order])
    return contexts


def _rows(chunks: Chunks, length: int, empty: Chunks) -> tuple[np.ndarray, np.ndarray]:
    """`chunks`' ids and weights followed by empty chunks up to `length` chunks."""
    missing = length - len(chunks.ids)
    return (
        np.concatenate([chunks.ids, np.repeat(empty.ids, missing, axis=0)]),
        np.concatenate([chunks.weights, np.repeat(empty.weights, missing, axis=0)]),
    )


def fragments(text: str, mode: str) -> list[Fragment]:
    """A prompt's (text, weight) fragments: brackets and BREAK read, except under emphasis "None", where
    A1111 reads the whole prompt as literal text."""
    return [(text, 1.0)] if mode == "None" else parse_emphasis(text)


def check_prompt_length(tokenizer: CLIPTokenizer, schedule: Schedule, emphasis: str) -> None:
    """Refuse, before any network runs, a prompt any of whose texts needs more than MAX_PROMPT_CHUNKS."""
    for text in dict.fromkeys(text for _, text in schedule):
        prompt_chunks(fragments(text, emphasis), tokenizer)


def prompt_embeddings(
    tokenizer: CLIPTokenizer,
    encode: Encode,
    prompt: Schedule,
    negative_prompt: Schedule | None,
    *,
    emphasis: str = "Original",
    pad_conds: bool = False,
) -> PromptEmbeddings:
    """The UNet's contexts for the schedules of `prompt` and `negative_prompt` (None: no unconditional
    pass); a prompt without editing is one (last call, text) pair. Each schedule is encoded as one batch,
    each distinct text once."""
    schedules = [prompt] if negative_prompt is None else [prompt, negative_prompt]
    texts = [[text for _, text in schedule] for schedule in schedules]
    known = {text: prompt_chunks(fragments(text, emphasis), tokenizer) for group in texts for text in group}
    empty = chunk_words([], tokenizer)
    padded = pad_conds and negative_prompt is not None
    batches = [[known[text] for text in group] for group in texts] + ([[empty]] if padded else [])
    contexts = condition(batches, encode, emphasis, empty)
    scheduled = [_schedule(schedule, found) for schedule, found in zip(schedules, contexts, strict=False)]
    return PromptEmbeddings(
        conditional=contexts[0][0],
        unconditional=contexts[1][0] if negative_prompt is not None else None,
        conditional_schedule=scheduled[0],
        unconditional_schedule=scheduled[1] if negative_prompt is not None else (),
        padding=contexts[-1][0] if padded else None,
    )


def _schedule(schedule: Schedule, contexts: list[np.ndarray]) -> tuple[tuple[int, np.ndarray], ...]:
    """(last model call, context) pairs of an editing schedule; none for a prompt without editing."""
    if len(contexts) == 1:
        return ()
    return tuple((last, context) for (last, _), context in zip(schedule, contexts, strict=True))
