"""sdrun.prompt_syntax against AUTOMATIC1111's own parser, recorded as data.

data/a1111_prompts.json holds A1111's outputs (modules/prompt_parser.py and modules/extra_networks.py, the
commits in its "source") for tricky prompts, computed outside the project with A1111's code and its pinned
lark; these tests check that ours give every row exactly, weights to the last bit. Where A1111's own
schedule depends on the process's hash seed (lark resolves an ambiguous parse by set order), ours must be
one of the outputs it gave.
"""

import json
import time
import warnings
from collections import defaultdict
from pathlib import Path

import pytest

from sdrun.errors import SettingsError
from sdrun.prompt_syntax import (
    ExtraNetworkWarning,
    check_prompt_syntax,
    extra_networks,
    parse_emphasis,
    prompt_schedule,
)

TABLE = json.loads((Path(__file__).with_name("data") / "a1111_prompts.json").read_text(encoding="utf-8"))
ROWS = TABLE["rows"]
SCHEDULE_CASES = [(row["prompt"], case) for row in ROWS for case in row["schedules"]]


def test_table_is_a1111s_and_large() -> None:
    assert TABLE["source"]["repository"].endswith("AUTOMATIC1111/stable-diffusion-webui")
    assert len(TABLE["source"]["commit"]) == 40
    assert len(ROWS) >= 60


@pytest.mark.parametrize("row", ROWS, ids=[repr(row["prompt"])[:40] for row in ROWS])
def test_emphasis_matches_a1111(row: dict) -> None:
    expected = row["emphasis"]
    if isinstance(expected, dict):  # A1111 fails with a Python error: we refuse with a SettingsError
        with pytest.raises(SettingsError, match="not a number"):
            parse_emphasis(row["prompt"])
        return
    got = parse_emphasis(row["prompt"])
    assert got == [(text, weight) for text, weight in expected]
    assert all(type(weight) is float for _, weight in got)


def test_emphasis_depth_is_bounded() -> None:
    # A1111 multiplies every fragment since an open bracket at each close: quadratic on deep nesting.
    with pytest.raises(SettingsError, match="deep"):
        parse_emphasis("(" * 101 + "a")
    deep = "(" * 99 + "a" + ")" * 99
    assert parse_emphasis(deep)[0][0] == "a"
    hostile = "(" * 99 + "(a)[b]\\(" * 3_700  # 30,000 characters: 11,100 fragments 100 brackets deep
    assert len(parse_emphasis(hostile)) == 11_100


@pytest.mark.parametrize(
    ("prompt", "case"),
    SCHEDULE_CASES,
    ids=[f"{prompt!r:.40}-{case['steps']}-{case['hires_steps']}-{case['old_scheduling']}"
         for prompt, case in SCHEDULE_CASES],
)
def test_schedule_matches_a1111(prompt: str, case: dict) -> None:
    outputs = case.get("schedule_varies", [case.get("schedule")])
    if all(isinstance(output, dict) for output in outputs):  # A1111 fails with a Python error
        with pytest.raises(SettingsError, match="too large"):
            prompt_schedule(prompt, case["steps"], case["hires_steps"], case["old_scheduling"])
        return
    got = prompt_schedule(prompt, case["steps"], case["hires_steps"], case["old_scheduling"])
    assert [list(pair) for pair in got] in outputs


def test_schedule_picks_the_edit_where_a1111_varies() -> None:
    # A1111 reads "[a:3]" as an edit or, under some hash seeds, as text when a ":" follows: ours is the edit.
    assert prompt_schedule("[a:3]:b", 10) == [(3, ":b"), (10, "a:b")]


@pytest.mark.parametrize(
    "prompt",
    [
        "[" * 5_000 + "a:1]" * 5_000,  # 5,000 nested edits
        "[" * 10_000 + "a|b" + "]" * 10_000,  # an alternation 10,000 brackets deep
        "[(" * 5_000 + "a" + ")]" * 5_000,  # nested emphasis, no edit
        "[" * 10_000 + "a:b:1" + ")" * 10_000,  # mismatched: every bracket is text
        "[a:b:1]" * 4_000 + "[" * 2_000,  # 4,000 edits and unclosed brackets
        "[a|" * 7_000 + "]" * 7_000,  # nested alternations
        "([a:" * 7_000 + "x",  # nothing closes
    ],
    ids=[
        "nested-edits", "deep-alternation", "nested-emphasis", "mismatched", "many-edits",
        "nested-alternations", "unclosed",
    ],
)
def test_schedule_of_hostile_prompts_is_fast(prompt: str) -> None:
    # A1111 (lark's Earley parser) takes 10 s on 250 nested edits and fails on it (RecursionError). These
    # are 14,000 to 30,000 characters.
    start = time.perf_counter()
    schedule = prompt_schedule(prompt, 20)
    assert time.perf_counter() - start < 5.0
    assert schedule[-1][0] == 20


@pytest.mark.parametrize("row", TABLE["extra_network_rows"], ids=[repr(row["prompt"])[:40] for row in
                                                                   TABLE["extra_network_rows"]])
def test_extra_networks_match_a1111(row: dict) -> None:
    text, networks = extra_networks(row["prompt"])
    assert text == row["text"]
    by_kind = defaultdict(list)
    for network in networks:
        by_kind[network.kind].append([network.name, *network.params])
    assert by_kind == row["networks"]


def test_check_prompt_syntax_warns_of_loras_and_refuses_bad_syntax() -> None:
    with pytest.warns(ExtraNetworkWarning, match=r"<lora:cat:0.8>.*<hypernet:x>.*and 1 more"):
        check_prompt_syntax("a <lora:cat:0.8> <lyco:b:1> <hypernet:x> <lora:d:1> cat", 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_prompt_syntax("a (red:1.2) [cat:dog:0.5] [x|y] BREAK z", 20)
    for bad, message in [("(x:1.2.3)", "not a number"), ("[a:b:1e999]", "too large"), ("(" * 101, "deep")]:
        with pytest.raises(SettingsError, match=message):
            check_prompt_syntax(bad, 20)


def test_prepare_refuses_bad_syntax_and_warns_of_loras(tiny_sdexport_dir: Path) -> None:
    # prepare runs no network: a request is refused, or warned about, before its first UNet pass.
    from sdrun.pipeline import Pipeline

    with Pipeline.load(tiny_sdexport_dir, provider="cpu") as pipeline:
        with pytest.raises(SettingsError, match="emphasis weight"):
            pipeline.prepare("a (cube:1.2.3)")
        with pytest.raises(SettingsError, match="negative prompt's editing step"):
            pipeline.prepare("a cube", negative_prompt="[a:b:1e999]")
        with pytest.warns(ExtraNetworkWarning, match="the prompt names extra networks") as caught:
            pipeline.prepare("a cube <lora:shiny:0.7>")
        assert caught[0].filename == __file__  # the warning points at the caller's line
