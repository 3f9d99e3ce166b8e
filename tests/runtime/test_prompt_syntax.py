"""sdrun.prompt_syntax against AUTOMATIC1111's own parser, recorded as data.

data/a1111_prompts.json holds A1111's outputs (modules/prompt_parser.py, the commit in its "source") for
tricky prompts, computed outside the project with A1111's code and its pinned lark; these tests check that
ours give every row exactly, weights to the last bit.
"""

import json
from pathlib import Path

import pytest

from sdrun.errors import SettingsError
from sdrun.prompt_syntax import parse_emphasis

TABLE = json.loads((Path(__file__).with_name("data") / "a1111_prompts.json").read_text(encoding="utf-8"))
ROWS = TABLE["rows"]


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
