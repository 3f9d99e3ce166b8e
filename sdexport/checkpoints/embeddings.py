"""Textual-inversion embeddings (Gal et al. 2022, "An Image is Worth One Word"): learned vectors for new
words, added to the text encoder's token table at export so that a prompt naming the word uses them.

Files are read as AUTOMATIC1111 and diffusers' `load_textual_inversion` read them (pickles only through
the weights-only loader of tensor_files):
- AUTOMATIC1111 `.pt`: {"string_to_param": {"*": [n, width]}, "name": ...}; its `.safetensors`:
  {"emb_params": [n, width]}. The word is the file's stem, as the web UI names it.
- diffusers (`learned_embeds.bin` / `.safetensors`): {word: [width] or [n, width]}; the word is the key.

An embedding of n vectors becomes n tokens, WORD, WORD_1, ..., WORD_{n-1}, named as diffusers names them.
They are added to the tokenizer as whole words (its `added_tokens_decoder`), and sdrun's tokenizer turns
WORD in a prompt into all n of them, as diffusers' `maybe_convert_prompt` does.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sdexport.checkpoints.clip_vocabulary import END_OF_WORD, build_vocab, read_merges
from sdexport.checkpoints.errors import CheckpointError
from sdexport.checkpoints.tensor_files import read_tensor_file
from sdexport.models import StableDiffusion
from sdrun.folder import sha256_of

# The widths of the text encoders that embeddings are trained for, to name the family of a misfit.
_FAMILY_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x"}
# A prompt holds 75 tokens between its start and end tokens.
MAX_VECTORS = 75


@dataclass(frozen=True)
class EmbeddingSpec:
    """An embedding file to add, and the word that names it in prompts (None: the file's own)."""

    path: Path
    token: str | None = None


@dataclass(frozen=True)
class Embedding:
    spec: EmbeddingSpec
    layout: str  # "a1111" or "diffusers"
    token: str
    vectors: Tensor  # [n, width]

    @property
    def tokens(self) -> list[str]:
        """The n tokens of its n vectors, as diffusers' `load_textual_inversion` names them."""
        return [self.token, *(f"{self.token}_{index}" for index in range(1, len(self.vectors)))]

    def record(self, first_id: int) -> dict[str, Any]:
        """What the manifest keeps of it, its tokens at ids from `first_id` on."""
        return {
            "file": self.spec.path.name,
            "sha256": sha256_of(self.spec.path),
            "layout": self.layout,
            "token": self.token,
            "vectors": len(self.vectors),
            "tokens": self.tokens,
            "token_ids": list(range(first_id, first_id + len(self.vectors))),
        }


def parse_embedding_option(text: str) -> EmbeddingSpec:
    """`FILE` or `FILE:TOKEN`; a path that exists as given stays whole, colons and all."""
    path, colon, token = text.rpartition(":")
    if not colon or not path or Path(text).exists():
        return EmbeddingSpec(Path(text))
    if not token:
        raise CheckpointError(f"--embedding {text}: the word after the colon is empty (FILE:TOKEN)")
    return EmbeddingSpec(Path(path), token)


def add_embeddings(model: StableDiffusion, specs: Sequence[EmbeddingSpec]) -> list[dict[str, Any]]:
    """Append each embedding's vectors to the text encoder's token table, in order; returns their manifest
    records (with the token ids they were given, from the table's old size on).

    Every file is read and checked first, so a refused one leaves `model` as it was.
    """
    table: nn.Embedding = model.text_encoder.token_embedding
    embeddings = [read_embedding(spec, table.embedding_dim) for spec in specs]
    _check_tokens(embeddings)
    records, first_id = [], table.num_embeddings
    for embedding in embeddings:
        records.append(embedding.record(first_id))
        first_id += len(embedding.vectors)
    if embeddings:
        rows = [table.weight.detach(), *(embedding.vectors for embedding in embeddings)]
        table.weight = nn.Parameter(torch.cat(rows), requires_grad=False)
        table.num_embeddings = first_id
        model.config.text_encoder.vocab_size = first_id
    return records


def read_embedding(spec: EmbeddingSpec, width: int) -> Embedding:
    """The embedding in `spec`'s file, its vectors checked against the text encoder's `width`.

    Raises CheckpointError (one line, starting with the file) for an unreadable or unsafe file, one that
    holds no embedding or several, and vectors of another width.
    """
    path = spec.path
    try:
        if not path.is_file():
            raise CheckpointError("no such file")
        layout, stored_token, vectors = _find_vectors(read_tensor_file(path))
        if vectors.shape[-1] != width:
            family = _FAMILY_WIDTHS.get(vectors.shape[-1])
            made_for = f" (made for {family})" if family else ""
            raise CheckpointError(
                f"its vectors are {vectors.shape[-1]} wide{made_for}, this model's text encoder takes "
                f"{width}: use an embedding trained for this model's family"
            )
    except CheckpointError as error:
        raise CheckpointError(f"--embedding {path}: {error}") from None
    token = spec.token or stored_token or path.stem
    return Embedding(spec, layout, token, vectors.float())


def _find_vectors(data: Mapping[str, Any]) -> tuple[str, str | None, Tensor]:
    """(layout, the word the file stores or None, vectors [n, width]) of a file's top-level mapping."""
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, Mapping) or len(params) != 1:
            raise CheckpointError(
                "its string_to_param must hold one embedding (AUTOMATIC1111 files hold '*')"
            )
        return "a1111", None, _vectors(next(iter(params.values())))
    if "emb_params" in data:
        return "a1111", None, _vectors(data["emb_params"])
    if "clip_g" in data or "clip_l" in data:
        raise CheckpointError("an SDXL embedding (clip_g, clip_l): SDXL is not supported")
    if len(data) == 1:
        token, value = next(iter(data.items()))
        return "diffusers", str(token), _vectors(value)
    raise CheckpointError(
        f"holds {', '.join(list(data)[:3])}{'...' if len(data) > 3 else ''}, not one textual-inversion "
        "embedding (string_to_param, emb_params, or one {token: vectors} entry as diffusers writes)"
    )


def _vectors(value: object) -> Tensor:
    if not isinstance(value, Tensor) or not value.is_floating_point() or value.dim() not in (1, 2):
        raise CheckpointError("its embedding is not a [vectors, width] table of floating-point numbers")
    vectors = value.detach().reshape(-1, value.shape[-1])
    if not 1 <= len(vectors) <= MAX_VECTORS:
        raise CheckpointError(f"it has {len(vectors)} vectors; a prompt holds 1 to {MAX_VECTORS}")
    if not torch.isfinite(vectors).all():
        raise CheckpointError("its vectors hold NaN or infinite values (a damaged file)")
    return vectors


def _check_tokens(embeddings: Sequence[Embedding]) -> None:
    """Each token a new whole word: not one the tokenizer already knows, nor another embedding's, nor one
    that would read as another embedding's continuation (WORD_n)."""
    # Every SD 1.x and 2.x tokenizer has CLIP's vocabulary. The tokenizer lower-cases prompts.
    vocabulary = build_vocab(read_merges())
    taken: dict[str, Path] = {}
    for embedding in embeddings:
        rename = f"give another word with --embedding {embedding.spec.path}:TOKEN"
        word = embedding.token
        if not word.strip() or any(character.isspace() for character in word):
            raise CheckpointError(
                f"--embedding {embedding.spec.path}: the word {word!r} holds spaces; {rename}"
            )
        for token in embedding.tokens:
            folded = token.lower()
            if folded in vocabulary or folded + END_OF_WORD in vocabulary:
                raise CheckpointError(
                    f"--embedding {embedding.spec.path}: {token!r} is already a word of the tokenizer, so "
                    f"prompts that mean the word would get the embedding; {rename}"
                )
            if folded in taken:
                raise CheckpointError(
                    f"--embedding {embedding.spec.path}: {token!r} is also a token of {taken[folded].name}; "
                    f"{rename}"
                )
            taken[folded] = embedding.spec.path
    for embedding in embeddings:
        after = f"{embedding.token}_{len(embedding.vectors)}".lower()
        if after in taken:
            raise CheckpointError(
                f"--embedding {taken[after]}: its word would read as a further vector of "
                f"{embedding.token!r} ({embedding.spec.path.name}); give another word with FILE:TOKEN"
            )
