"""CLIP's BPE vocabulary (OpenAI's simple_tokenizer.py), built from the merges shipped in sdexport/data.

Every SD 1.x and 2.x text encoder indexes its token table by this vocabulary. It lives with the
checkpoint readers, which check new embedding words against it, and the export writes it into the
tokenizer folder from here.
"""

import gzip
from importlib import resources

from sdrun.folder_layout import END_TOKEN, START_TOKEN

BPE_MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"
# CLIP's vocabulary keeps the first 49152 - 256 - 2 merges of the file (OpenAI's simple_tokenizer.py).
MERGE_COUNT = 49152 - 256 - 2
END_OF_WORD = "</w>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the rest (controls, space) move to U+0100 onwards, so that
    no BPE symbol is whitespace.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = [b for b in range(256) if b not in printable]
    codes = printable + [256 + n for n in range(len(others))]
    return {byte: chr(code) for byte, code in zip(printable + others, codes, strict=True)}


def read_merges() -> list[tuple[str, str]]:
    """The merges CLIP uses, in rank order, from the package's gzipped BPE file (its header line skipped)."""
    data = resources.files("sdexport").joinpath("data", BPE_MERGES_FILE).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : MERGE_COUNT + 1]
    return [tuple(line.split()) for line in lines]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token -> id: byte symbols, the same ending a word, one token per merge, then start and end tokens."""
    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + END_OF_WORD for s in symbols), *("".join(pair) for pair in merges)]
    tokens += [START_TOKEN, END_TOKEN]
    return {token: index for index, token in enumerate(tokens)}
