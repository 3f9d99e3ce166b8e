"""AUTOMATIC1111's prompt syntax: emphasis weights and BREAK.

The contract is A1111's own behaviour (modules/prompt_parser.py), recorded as data outside the project
(tests/runtime/data/a1111_prompts.json) and reproduced here without its code:

- `parse_emphasis` is `parse_prompt_attention`: the prompt as (text, weight) fragments.
"""

import re

from sdrun.errors import SettingsError, quoted

# A1111's multipliers: "(x)" weighs x by 1.1, "[x]" by 1 / 1.1.
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
# The fragment A1111 puts where BREAK stands: the text encoder starts a new 75-token chunk there.
BREAK = ("BREAK", -1.0)
# Brackets open at once (round and square together). A1111 has no bound and takes time quadratic in the
# depth; weights 1.1^100 (14,000) mean nothing to a text encoder, so a deeper prompt is refused.
MAX_EMPHASIS_DEPTH = 100

# A1111's tokens, in its order: an escape (a backslash and the character it makes literal; a lone backslash
# is dropped), an opening bracket, ":weight)" closing a round bracket, a closing bracket, a run of text,
# a colon that is text.
_EMPHASIS_TOKEN = re.compile(
    r"""
    \\[()\[\]\\]?
    | [(\[]
    | :\s*([+-]?[.\d]+)\s*\)
    | [)\]]
    | [^\\()\[\]:]+
    | :
    """,
    re.X,
)
# BREAK as a word of its own (word boundaries, not spaces) with the whitespace around it.
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """The prompt as (text, weight) fragments, as A1111's `parse_prompt_attention` gives them.

    "(x)" multiplies x's weight by 1.1, "[x]" by 1 / 1.1, "(x:w)" by w; nesting multiplies. Brackets left
    open weigh everything after them; a closing bracket with none open is text, and so is ":w)" with no
    round bracket open. "\\(", "\\)", "\\[", "\\]", "\\\\" are the literal characters; another backslash is
    dropped. BREAK, a word of its own, is the fragment ("BREAK", -1.0) (inside brackets its weight is
    multiplied too, as A1111's, and the encoder then reads it as the word). Neighbouring fragments of equal
    weight are merged; the empty prompt is [("", 1.0)]. Weights are multiplied in A1111's order (each
    closing bracket in turn, then the open round brackets, then the open square ones), so they are the same
    floating-point numbers.

    Differences: A1111 fails with a Python error on a weight like "(x:1.2.3)"; this raises a SettingsError.
    Brackets nested more than MAX_EMPHASIS_DEPTH deep are refused (A1111 takes quadratic time on them).
    """
    # Fragments are (text, sign, run): a run is the fragments between two brackets, which brackets weigh
    # alike, so a bracket multiplies runs (one weight each) instead of every fragment since it opened.
    fragments: list[tuple[str, float, int]] = []
    run_weights: list[float] = []
    run_open = False
    round_starts: list[int] = []
    square_starts: list[int] = []

    def add(fragment: str, sign: float) -> None:
        nonlocal run_open
        if not run_open:
            run_weights.append(1.0)
            run_open = True
        fragments.append((fragment, sign, len(run_weights) - 1))

    def open_bracket(starts: list[int]) -> None:
        nonlocal run_open
        if len(round_starts) + len(square_starts) >= MAX_EMPHASIS_DEPTH:
            raise SettingsError(
                f"the prompt nests brackets more than {MAX_EMPHASIS_DEPTH} deep: close some or escape them "
                "as \\( \\["
            )
        run_open = False
        starts.append(len(run_weights))

    def close_bracket(start: int, multiplier: float) -> None:
        nonlocal run_open
        run_open = False
        for run in range(start, len(run_weights)):
            run_weights[run] *= multiplier

    for match in _EMPHASIS_TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            add(token[1:], 1.0)
        elif token == "(":
            open_bracket(round_starts)
        elif token == "[":
            open_bracket(square_starts)
        elif weight is not None and round_starts:
            close_bracket(round_starts.pop(), _weight(weight, token))
        elif token == ")" and round_starts:
            close_bracket(round_starts.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_starts:
            close_bracket(square_starts.pop(), SQUARE_MULTIPLIER)
        else:
            for index, part in enumerate(_BREAK_WORD.split(token)):
                if index:
                    add(BREAK[0], BREAK[1])
                add(part, 1.0)
    for start in round_starts:
        close_bracket(start, ROUND_MULTIPLIER)
    for start in square_starts:
        close_bracket(start, SQUARE_MULTIPLIER)
    return _merged([(fragment, sign * run_weights[run]) for fragment, sign, run in fragments])


def _weight(number: str, token: str) -> float:
    try:
        return float(number)
    except ValueError:
        raise SettingsError(
            f"the prompt's emphasis weight {quoted(token)} is not a number: write it as (text:1.2)"
        ) from None


def _merged(fragments: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Neighbouring fragments of equal weight joined; [("", 1.0)] for none."""
    merged: list[tuple[list[str], float]] = []
    for fragment, weight in fragments:
        if merged and merged[-1][1] == weight:
            merged[-1][0].append(fragment)
        else:
            merged.append(([fragment], weight))
    return [("".join(parts), weight) for parts, weight in merged] or [("", 1.0)]
