"""The CLIP tokenizer folder of an exported model, written from CLIP's vocabulary (clip_vocabulary.py).

Writes the files that transformers' `CLIPTokenizer.save_pretrained` writes for the SD 1.x tokenizer
(openai/clip-vit-large-patch14): vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json.
"""

import json
from pathlib import Path

from sdexport.checkpoints.clip_vocabulary import build_vocab, read_merges
from sdexport.checkpoints.json_files import read_json_object
from sdexport.export.errors import BuildError
from sdrun.folder_layout import (
    END_TOKEN,
    MERGES_FILE,
    SPECIAL_TOKENS_FILE,
    START_TOKEN,
    TOKENIZER_CONFIG_FILE,
    VOCAB_FILE,
)


def _added_token(content: str) -> dict[str, object]:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def write_tokenizer(folder: Path, max_length: int = 77, pad_token: str = END_TOKEN) -> None:
    """Write the CLIP tokenizer files (49,408 tokens; unk = eos = <|endoftext|>) to `folder`.

    pad_token: SD 1.x's <|endoftext|>, or SD 2.x's "!" (id 0: open_clip pads with zeros), which
    stabilityai's SD 2.x tokenizer names as a special token, so a typed "!" becomes id 0 as well.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = read_merges()
    vocab = build_vocab(merges)

    (folder / VOCAB_FILE).write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    merge_lines = ["#version: 0.2", *(" ".join(pair) for pair in merges)]
    (folder / MERGES_FILE).write_text("\n".join(merge_lines) + "\n", encoding="utf-8")

    special_tokens_map = {
        "bos_token": _added_token(START_TOKEN),
        "eos_token": _added_token(END_TOKEN),
        "pad_token": _added_token(pad_token),
        "unk_token": _added_token(END_TOKEN),
    }
    tokenizer_config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(vocab[token]): {**_added_token(token), "special": True}
            for token in dict.fromkeys((pad_token, START_TOKEN, END_TOKEN))
        },
        "bos_token": START_TOKEN,
        "clean_up_tokenization_spaces": False,
        "do_lower_case": True,
        "eos_token": END_TOKEN,
        "errors": "replace",
        "extra_special_tokens": {},
        "model_max_length": max_length,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": END_TOKEN,
    }
    for name, content in (
        (SPECIAL_TOKENS_FILE, special_tokens_map),
        (TOKENIZER_CONFIG_FILE, tokenizer_config),
    ):
        (folder / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def add_tokens(folder: Path, tokens: dict[str, int]) -> None:
    """Add `tokens` (content -> id) to the tokenizer folder as whole words, where transformers' `add_tokens`
    and `save_pretrained` put them (tokenizer_config.json's added_tokens_decoder), so that sdrun,
    transformers and optimum read them alike. Their ids must continue the folder's own."""
    config_path = folder / TOKENIZER_CONFIG_FILE
    # The folder may hold the tokenizer that a diffusers source carried: read it bounded.
    config = read_json_object(config_path, f"{folder.name}/{TOKENIZER_CONFIG_FILE}")
    decoder = config.setdefault("added_tokens_decoder", {})
    vocab = read_json_object(folder / VOCAB_FILE, f"{folder.name}/{VOCAB_FILE}")
    size = max([*vocab.values(), *(int(token_id) for token_id in decoder)]) + 1
    if sorted(tokens.values()) != list(range(size, size + len(tokens))):
        raise BuildError(
            f"the tokenizer has {size} tokens, but the text encoder's new ones start at "
            f"{min(tokens.values())}: the source's tokenizer and text encoder disagree"
        )
    for content, token_id in tokens.items():
        decoder[str(token_id)] = {**_added_token(content), "special": False}
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
