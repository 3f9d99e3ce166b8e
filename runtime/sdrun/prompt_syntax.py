"""AUTOMATIC1111's prompt syntax: emphasis weights, BREAK, prompt editing, alternation, extra networks.

The contract is A1111's own behaviour (modules/prompt_parser.py), recorded as data outside the project
(tests/runtime/data/a1111_prompts.json) and reproduced here without its code:

- `parse_emphasis` is `parse_prompt_attention`: the prompt as (text, weight) fragments.
- `prompt_schedule` is `get_learned_conditioning_prompt_schedules`: prompt editing ("[from:to:when]") and
  alternation ("[a|b]") as the prompt text each step reads. A1111 parses with a lark grammar; this is a
  parser of our own, linear in the prompt's length and free of recursion (a prompt nests brackets as deep
  as its length allows).
- `extra_networks` is `modules/extra_networks.py`'s `parse_prompt`: "<lora:name:weight>" tags out of the
  text. sdrun applies none of them yet (`check_prompt_syntax` warns, ExtraNetworkWarning).

A1111 reads a prompt in that order: extra networks out, then the schedule, then emphasis of each step's text.
"""

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

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


# The grammar's SIGNED_NUMBER (lark's common.lark: ASCII digits, an optional exponent), with the whitespace
# A1111 allows around the step of "[from:to:when]".
_WHEN = re.compile(
    r"\s* ( [+-]? (?: [0-9]+ [eE][+-]?[0-9]+ | (?: [0-9]+\.[0-9]* | \.[0-9]+ ) (?:[eE][+-]?[0-9]+)?"
    r" | [0-9]+ ) ) \s*",
    re.X,
)
_OPENING = {"]": "[", ")": "("}


@dataclass(frozen=True)
class _Scheduled:
    """[before:after:when]: `before` (None where the prompt omits it) up to step `when`, then `after`."""

    before: list | None
    after: list
    when: int


@dataclass(frozen=True)
class _Alternate:
    """[a|b|...]: part (step - 1) mod len(parts) at each step; None for an empty part."""

    parts: list


@dataclass(frozen=True)
class _Bracket:
    """One bracket pair of the prompt with what it holds at its own level (not inside nested pairs)."""

    opening: int
    closing: int
    colons: list[int]
    bars: list[int]
    valid: bool


def prompt_schedule(
    prompt: str, steps: int, hires_steps: int | None = None, old_scheduling: bool = False
) -> list[tuple[int, str]]:
    """The prompt each step reads, as A1111's `get_learned_conditioning_prompt_schedules` gives it:
    (end_at_step, text) pairs, in order; step s (from 1) reads the first pair whose end_at_step >= s.

    "[from:to:when]" reads `from` up to step `when` and `to` after it, "[to:when]" and "[from::when]" add or
    remove text; "[a|b|c]" reads a, b, c, a, ... one step each. They nest. `when` with a decimal point
    ("0.25", "1.") is a fraction of the steps, without one ("5", "1e1") a step number (A1111's default
    since 1.6; `old_scheduling`, its option "use old prompt editing timelines": a number below 1 is a
    fraction, any other a step). With `hires_steps` (the hires-fix pass, `steps` being the first pass's),
    the schedule is over the hires steps: a step number counts on from the first pass's steps, a fraction
    from 1 (1.5 is half way through the hires pass). Emphasis brackets and their text stay as they are
    (they are `parse_emphasis`'s); so do escapes.

    Like A1111's, a prompt its grammar does not take (a "|" outside "[...]", a lone backslash at the end)
    is read literally at every step, and a bracket with no valid match is text. With alternation every step
    has its own pair, as A1111's (the same text may come back for many steps).

    Differences: A1111 fails with a Python error on a step too large for a float ("[a:b:1e999]"); this
    raises a SettingsError. Where an edit outside brackets is followed by a ":" or by a bracket that closes
    nothing ("[a:3]:b", "[a:b:3]]"), lark's Earley parse is ambiguous and A1111 reads the edit or the
    plain text depending on the process's hash seed (PYTHONHASHSEED); this always reads the edit. lark
    takes seconds and then fails (RecursionError) on a few hundred nested edits; this reads them in
    milliseconds.
    """
    root, total = _schedule_tree(prompt, steps, hires_steps, old_scheduling)
    if root is None:
        return [(total, prompt)]
    ends = {total}
    for node in _nodes(root):
        if isinstance(node, _Alternate):
            ends.update(range(1, total + 1))
        elif node.when >= 1:
            ends.add(node.when)
    return [(step, _text_at(root, step)) for step in sorted(ends)]


def _schedule_tree(
    prompt: str, steps: int, hires_steps: int | None, old_scheduling: bool
) -> tuple[list | None, int]:
    """The parsed prompt (None where A1111 reads it literally) and the number of steps it is over."""
    if hires_steps is None or old_scheduling:
        total, step_offset, fraction_offset = steps, 0, 0.0
    else:
        total, step_offset, fraction_offset = hires_steps, steps, 1.0

    def when_step(number: str) -> int:
        value = float(number)
        if old_scheduling:
            value = value * total if value < 1 else value
        elif "." in number:
            value = (value - fraction_offset) * total
        else:
            value = value - step_offset
        if abs(value) == float("inf"):
            raise SettingsError(
                f"the prompt's editing step {quoted(number)} is too large: give a step number or a fraction"
            )
        return min(total, int(value))

    return _parse_schedule(prompt, when_step), total


def _parse_schedule(prompt: str, when_step: Callable[[str], int]) -> list | None:
    """The prompt as text and _Scheduled / _Alternate nodes, or None where A1111's grammar rejects it."""
    found = _brackets(prompt)
    if found is None:
        return None
    brackets, bars = found
    # What each position of the prompt does in a valid [...|...] or [...:...:when]: opens, separates or
    # closes it. Every other character is text.
    roles: dict[int, tuple[str, _Bracket]] = {}
    for bracket in brackets:
        if not bracket.valid or prompt[bracket.opening] != "[" or not (bracket.colons or bracket.bars):
            continue
        roles[bracket.opening] = ("open", bracket)
        for separator in bracket.colons + bracket.bars:
            roles[separator] = ("separate", bracket)
        roles[bracket.closing] = ("close", bracket)
    if any(index not in roles for index in bars):
        return None  # a "|" outside an alternation: the grammar has no place for it
    root: list = []
    # One frame per open node: its finished parts and the part being read.
    frames: list[tuple[list[list], list]] = []
    current = root
    start = 0
    for index in sorted(roles):
        role, bracket = roles[index]
        if index > start:
            current.append(prompt[start:index])
        start = index + 1
        if role == "open":
            frames.append(([], current))
            current = []
        elif role == "separate":
            frames[-1][0].append(current)
            current = []
        else:
            parts, parent = frames.pop()
            parts.append(current)
            parent.append(_node(bracket, parts, when_step))
            current = parent
    if start < len(prompt):
        current.append(prompt[start:])
    return root


def _node(bracket: _Bracket, parts: list[list], when_step: Callable[[str], int]) -> "_Scheduled | _Alternate":
    if bracket.bars:
        return _Alternate([part or None for part in parts])
    *prompts, number = parts
    before = prompts[0] if len(prompts) == 2 else None
    return _Scheduled(before, prompts[-1], when_step(_WHEN.fullmatch("".join(number)).group(1)))


def _brackets(prompt: str) -> tuple[list[_Bracket], list[int]] | None:
    """Every bracket pair of the prompt that could be one of the grammar's (the brackets between them
    nest, escaped ones aside), with its validity, and where the prompt's "|" are; None where the grammar
    rejects the prompt outright.

    Inside a pair, the grammar takes only nested pairs, text and the pair's own ":" or "|"; at the top
    level, any bracket or ":" is also text. So a pair is the nearest closing bracket that matches with
    the brackets between matching, and a closing bracket that matches no open one leaves every bracket
    still open unmatched (none can close around it)."""
    found: list[_Bracket] = []
    all_bars: list[int] = []
    # One entry per open bracket: its position, its colons and bars, whether its nested pairs are valid.
    open_brackets: list[tuple[int, list[int], list[int], list[bool]]] = []
    index = 0
    while index < len(prompt):
        char = prompt[index]
        if char == "\\":
            if index + 1 == len(prompt) or prompt[index + 1] == "\n":
                return None  # the grammar's text takes a backslash only before another character
            index += 2
            continue
        if char in "([":
            open_brackets.append((index, [], [], [True]))
        elif char in ")]":
            if open_brackets and prompt[open_brackets[-1][0]] == _OPENING[char]:
                opening, colons, bars, inner_valid = open_brackets.pop()
                valid = inner_valid[0] and _valid(prompt, opening, index, colons, bars)
                found.append(_Bracket(opening, index, colons, bars, valid))
                if open_brackets:
                    open_brackets[-1][3][0] &= valid
            else:
                open_brackets.clear()
        elif char == "|":
            all_bars.append(index)
            if open_brackets:
                open_brackets[-1][2].append(index)
        elif char == ":" and open_brackets:
            open_brackets[-1][1].append(index)
        index += 1
    return found, all_bars


def _valid(prompt: str, opening: int, closing: int, colons: list[int], bars: list[int]) -> bool:
    """Whether the grammar takes this pair (its nested pairs valid): "(a)", "(a:b)", "[a]", "[a|b|...]",
    "[a:when]", "[a:b:when]"."""
    if prompt[opening] == "(":
        return not bars and len(colons) <= 1
    if bars:
        return not colons
    return len(colons) <= 2 and (
        not colons or _WHEN.fullmatch(prompt, colons[-1] + 1, closing) is not None
    )


def _nodes(sequence: list) -> list["_Scheduled | _Alternate"]:
    """Every node of a parsed prompt, nested ones too (A1111 counts the steps of all of them)."""
    nodes = []
    pending = [sequence]
    while pending:
        for item in pending.pop():
            if isinstance(item, _Scheduled):
                nodes.append(item)
                pending += [item.after] + ([item.before] if item.before else [])
            elif isinstance(item, _Alternate):
                nodes.append(item)
                pending += [part for part in item.parts if part]
    return nodes


def _text_at(sequence: list, step: int) -> str:
    """The prompt's text at `step`: each node replaced by what it reads then."""
    pieces: list[str] = []
    # Sequences still to read, each with the position reached (a stack: prompts nest deeper than Python's
    # recursion goes).
    pending = [(sequence, 0)]
    while pending:
        items, position = pending.pop()
        while position < len(items):
            item = items[position]
            position += 1
            if isinstance(item, str):
                pieces.append(item)
                continue
            if isinstance(item, _Scheduled):
                chosen = item.before if step <= item.when else item.after
            else:
                chosen = item.parts[(step - 1) % len(item.parts)]
            if chosen:
                pending.append((items, position))
                pending.append((chosen, 0))
                break
    return "".join(pieces)


# A1111's extra-network tag: "<kind:arguments>", the arguments separated by ":".
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
# How many tags a warning names.
_NAMED_TAGS = 3


class ExtraNetwork(NamedTuple):
    """One "<kind:name:params...>" tag: kind "lora", "lyco", "hypernet" or any other word, as A1111 takes."""

    kind: str
    name: str
    params: tuple[str, ...]


class ExtraNetworkWarning(UserWarning):
    """A prompt names extra networks (<lora:...>, <hypernet:...>) that sdrun does not apply."""


def extra_networks(prompt: str) -> tuple[str, list[ExtraNetwork]]:
    """The prompt without its extra-network tags, and the tags in order, as A1111's `parse_prompt`
    (modules/extra_networks.py): every "<word:arguments>" goes, whatever the word, and its arguments split
    at ":" are the name and the parameters ("<lora:x:0.8>" -> ("lora", "x", ("0.8",)), "te=0.5" stays one
    parameter). A1111 removes them from the prompt (not the negative prompt) before anything else reads it.
    """
    found: list[ExtraNetwork] = []

    def take(match: re.Match) -> str:
        name, *params = match.group(2).split(":")
        found.append(ExtraNetwork(match.group(1), name, tuple(params)))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), found


def check_prompt_syntax(prompt: str, steps: int, what: str = "prompt", stacklevel: int = 2) -> None:
    """Refuses, with a SettingsError, a prompt A1111 would fail on (an emphasis weight or an editing step
    that is not a number it can use, brackets nested past MAX_EMPHASIS_DEPTH), and warns (one line,
    ExtraNetworkWarning) for the extra networks it names, which sdrun does not apply. Cheap: the schedule is
    parsed but not written out at each step. `stacklevel` is warnings.warn's, from this function's caller.

    The emphasis is checked on the whole prompt, not each step's text: a bad weight inside a part of a
    "[from:to:when]" that no step reads, or edits nested past MAX_EMPHASIS_DEPTH (their brackets count),
    are refused here though A1111 never reads them.
    """
    text, networks = extra_networks(prompt)
    if networks:
        tags = ", ".join(_tag(network) for network in networks[:_NAMED_TAGS])
        more = f" and {len(networks) - _NAMED_TAGS} more" if len(networks) > _NAMED_TAGS else ""
        warnings.warn(
            f"the {what} names extra networks that sdrun does not apply: {quoted(tags)}{more} (merge a LoRA "
            "into the model when exporting: sdexport build --lora FILE:SCALE)",
            ExtraNetworkWarning,
            stacklevel=stacklevel + 1,
        )
    try:
        _schedule_tree(text, steps, None, False)
        parse_emphasis(text)
    except SettingsError as error:  # their messages say "the prompt"; this may be the negative one
        raise SettingsError(str(error).replace("the prompt", f"the {what}", 1)) from None


def _tag(network: ExtraNetwork) -> str:
    return f"<{network.kind}:{':'.join((network.name, *network.params))}>"
