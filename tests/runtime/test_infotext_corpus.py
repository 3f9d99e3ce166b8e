"""AUTOMATIC1111 infotexts read and written without loss, against the web UI's own reader.

data/infotexts.json holds hand-written texts in the forms the web UI (1.0 to 1.10), Forge and civitai show,
each with the keys sdrun does not honour, written by hand. data/infotexts_a1111_parsed.json holds what the
web UI's `parse_generation_parameters` made of them and of texts sdrun writes, run outside the project (its
"source" names the commit): the independent reader that sdrun's parser and writer are checked against.
"""

import json
import time
from pathlib import Path

import pytest

from sdrun import a1111, infotext
from sdrun.infotext import MAX_NAMED_KEYS, format_parameters, read_parameters, sdrun_version
from sdrun.samplers import SAMPLERS, a1111_sampler, resolve_schedule_type
from sdrun.settings import ImageSettings

DATA = Path(__file__).parent / "data"
CORPUS = json.loads((DATA / "infotexts.json").read_text(encoding="utf-8"))
A1111 = json.loads((DATA / "infotexts_a1111_parsed.json").read_text(encoding="utf-8"))
# Keys the corpus lists as unhonoured that sdrun has learnt to honour since: a key whose behaviour lands
# moves here (one line), and every text's expectation follows.
HONOURED_SINCE_THE_CORPUS: frozenset[str] = frozenset(
    {"RNG", "ENSD", "Variation seed", "Variation seed strength", "Seed resize from", "Emphasis",
     "Pad conds", "Hires upscale", "Hires resize", "Hires steps", "Hires upscaler", "Hires prompt",
     "Hires negative prompt", "Hires sampler", "Hires schedule type"}  # fmt: skip
)
# Where the web UI reads a text differently from sdrun on purpose, field by field.
KNOWN_DIFFERENCES = {
    # The old hires fix's "First pass size" (unhonoured) makes the web UI draw at 512x512 and upscale.
    "old_hires_first_pass": {"width", "height"},
    # Before web UI 1.9 "DPM++ 2M" was its uniform schedule ("DPM++ 2M Karras" a label of its own); the web
    # UI 1.9+ reads the missing Schedule type as Automatic, Karras for DPM++ 2M. sdrun draws what 1.6 drew.
    "webui16_dpmpp_2m_plain": {"sampler"},
}
# The fixed fields of processing.create_infotext (web UI 1.10, same commit), in its order; the fields its
# scripts add (Mask blur, Eta, "Lora hashes", ...) follow them, and "Version" and "User" close the line.
CREATE_INFOTEXT_ORDER = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration", "Size",
    "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE", "Variation seed",
    "Variation seed strength", "Seed resize from", "Denoising strength", "Conditional mask weight",
    "Clip skip", "ENSD", "Token merging ratio", "Token merging ratio hr", "Init image hash", "RNG", "Tiling",
)  # fmt: skip
_CLOSING = ("Version", "User")


def _expected_unhonoured(entry: dict) -> list[str]:
    return [key for key in entry["unhonoured"] if key not in HONOURED_SINCE_THE_CORPUS]


def _corpus_mismatches() -> list[str]:
    """The corpus texts whose unhonoured keys are not the expected ones (with what came instead)."""
    mismatches = []
    for entry in CORPUS:
        found = list(read_parameters(entry["text"]).unhonoured)
        if found != _expected_unhonoured(entry):
            mismatches.append(f"{entry['name']}: {found}")
    return mismatches


def test_the_corpus_covers_the_web_ui_eras() -> None:
    texts = "\n".join(entry["text"] for entry in CORPUS)
    assert len(CORPUS) >= 30 and len({entry["name"] for entry in CORPUS}) == len(CORPUS)
    for word in (
        "BREAK", "<lora:", "Lora hashes", "TI hashes", "ENSD: 31337", "RNG: CPU", "RNG: NV",
        "DPM++ 2M Karras", "Schedule type", "Hires upscale", "ADetailer", "ControlNet", "Version: v1.10.1",
        "Variation seed", "Seed resize from", "VAE hash", "Clip skip: 2", "Emphasis", "Pad conds", "🙂",
    ):  # fmt: skip
        assert word in texts, word
    assert set(A1111["corpus"]) == {entry["name"] for entry in CORPUS}, "run the recording again"


def test_every_unhonoured_key_is_reported_and_only_those() -> None:
    assert _corpus_mismatches() == []


def test_dropping_a_keys_reader_fails_the_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The power of the check above: a parser that stops reading "Clip skip" (or "Model hash") reports it
    as unhonoured, and the corpus says so."""
    for key in ("CLIP_SKIP", "MODEL_HASH", "SCHEDULE_TYPE"):
        with monkeypatch.context() as patch:
            patch.setattr(infotext.a1111, key, "Not a key")
            assert _corpus_mismatches(), key


@pytest.mark.parametrize("entry", CORPUS, ids=[entry["name"] for entry in CORPUS])
def test_reads_each_text_as_the_web_ui_does(entry: dict) -> None:
    """Prompt, negative prompt and every honoured field as the web UI's reader has them, and each
    unhonoured field with the value the web UI reads for it (quotes undone)."""
    read = read_parameters(entry["text"])
    settings, theirs = read.settings, A1111["corpus"][entry["name"]]
    ours = {
        "prompt": (settings.prompt, theirs["Prompt"]),
        "negative": (settings.negative_prompt, theirs["Negative prompt"]),
        "steps": (settings.steps, int(theirs["Steps"])),
        "cfg": (settings.guidance_scale, float(theirs["CFG scale"])),
        "seed": (settings.seed, int(theirs["Seed"])),
        "width": (settings.width, int(theirs["Size-1"])),
        "height": (settings.height, int(theirs["Size-2"])),
        "model": (settings.model, theirs.get("Model", "")),
        "model hash": (settings.model_hash, theirs.get("Model hash", "")),
        "clip skip": (settings.clip_skip, int(theirs["Clip skip"])),
        # On text-to-image with a hires fix, "Denoising strength" is the second pass's.
        "strength": (
            settings.strength if settings.hires is None else settings.hires.strength,
            _optional_float(theirs, "Denoising strength"),
        ),
        "mask blur": (settings.mask_blur, _optional_float(theirs, "Mask blur")),
        "eta": (settings.eta, _eta(theirs)),
        # The web UI reads a missing "Schedule type" as Automatic.
        "sampler": (
            _resolved(settings.sampler, settings.schedule_type),
            _resolved(*a1111_sampler(theirs["Sampler"], theirs["Schedule type"])),
        ),
    }
    # A text of a web UI before 1.7.0-225 is drawn again there only with compatibility options.
    compatibility = {"Downcast alphas_cumprod", "Old prompt editing timelines", "Pad conds v0"} & set(theirs)
    assert ("Version" in read.unhonoured) == bool(compatibility)
    differing = {name: pair for name, pair in ours.items() if pair[0] != pair[1]}
    assert set(differing) == KNOWN_DIFFERENCES.get(entry["name"], set()), differing
    for key, value in read.unhonoured.items():
        if value[:1] in ("[", "{"):  # civitai's JSON fields, whole as its reader takes them (the web UI's
            json.loads(value)  # splits them at commas)
        elif key == value:  # a field written as its key alone, which the web UI's reader skips
            assert key not in theirs
        elif f"{key}-1" in theirs:  # the web UI splits a WxH value into key-1 and key-2
            assert value == f"{theirs[f'{key}-1']}x{theirs[f'{key}-2']}" or key == "First pass size"
        else:
            assert theirs[key] == value, key


def _resolved(sampler: str, schedule_type: str | None) -> tuple[str, str | None]:
    """A sampler and the schedule type it runs on ("Automatic", None, resolved to the sampler's own)."""
    return sampler, resolve_schedule_type(sampler, schedule_type) if sampler in SAMPLERS else schedule_type


def _optional_float(fields: dict, key: str) -> float | None:
    return float(fields[key]) if key in fields else None


def _eta(fields: dict) -> float | None:
    """DDIM's eta has a key of its own."""
    return _optional_float(fields, "Eta DDIM" if "Eta DDIM" in fields else "Eta")


@pytest.mark.parametrize("recorded", A1111["written"], ids=lambda recorded: recorded["settings"]["sampler"])
def test_the_web_ui_reads_what_sdrun_writes(recorded: dict) -> None:
    """sdrun still writes the texts that the web UI's reader was given, and that reader found in them the
    settings they came from, with no compatibility options turned on by sdrun's Version."""
    fields = recorded["settings"]
    resized = fields.get("seed_resize_from")
    settings = ImageSettings(**{**fields, "seed_resize_from": tuple(resized) if resized else None})
    written = recorded["text"].replace("Version: sdrun 0.1.0", f"Version: {sdrun_version()}")
    assert format_parameters(settings) == written
    theirs = recorded["a1111"]
    assert (theirs["Prompt"], theirs["Negative prompt"]) == (settings.prompt, settings.negative_prompt)
    assert (int(theirs["Steps"]), float(theirs["CFG scale"]), int(theirs["Seed"])) == (
        settings.steps,
        settings.guidance_scale,
        settings.seed,
    )
    assert (int(theirs["Size-1"]), int(theirs["Size-2"])) == (settings.width, settings.height)
    # The web UI draws a diffusers-discretised sampler's label with its own sampler; sdrun's own key keeps it.
    label_sampler, schedule_type = a1111_sampler(theirs["Sampler"], theirs["Schedule type"])
    assert theirs.get("sdrun sampler", label_sampler) == settings.sampler
    if "sdrun sampler" not in theirs and SAMPLERS[settings.sampler].takes_schedule_type:
        assert schedule_type == (settings.schedule_type or SAMPLERS[settings.sampler].a1111_schedule)
    assert theirs.get("RNG", "GPU") == {None: "numpy", "gpu": "GPU", "cpu": "CPU", "nv": "NV"}[
        settings.random_source
    ]
    assert int(theirs.get("ENSD", 0)) == settings.eta_noise_seed_delta
    assert float(theirs.get("Variation seed strength", 0)) == settings.subseed_strength
    assert (theirs.get("Model", ""), theirs.get("Model hash", "")) == (settings.model, settings.model_hash)
    assert int(theirs["Clip skip"]) == settings.clip_skip
    assert _optional_float(theirs, "Denoising strength") == settings.strength
    assert _eta(theirs) == settings.eta
    assert theirs["Version"].startswith("sdrun ") and sdrun_version().startswith("sdrun ")
    assert not {"Downcast alphas_cumprod", "Old prompt editing timelines", "Pad conds v0"} & set(theirs)


@pytest.mark.parametrize("recorded", A1111["written"], ids=lambda recorded: recorded["settings"]["sampler"])
def test_fields_follow_create_infotext_order(recorded: dict) -> None:
    """The keys in the order the web UI's reader met them (its dict keeps the text's order; the defaults it
    adds for missing keys are not in the text)."""
    line = recorded["text"].rsplit("\n", 1)[-1]
    keys = [key.removesuffix("-1") for key in recorded["a1111"] if not key.endswith("-2")]
    keys = [key for key in keys if f"{key}: " in line]
    fixed = [key for key in keys if key in CREATE_INFOTEXT_ORDER]
    assert fixed == sorted(fixed, key=CREATE_INFOTEXT_ORDER.index)
    assert keys[: len(fixed)] == fixed, "the fields scripts add come after the fixed ones"
    assert keys[-1] in _CLOSING


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_round_trip_keeps_every_setting(sampler: str) -> None:
    """Every setting of the recorded image, its schedule type as `prepare` resolves it, comes back."""
    settings = ImageSettings(
        prompt="(masterpiece:1.2), a cat BREAK a hat, <lora:x:0.5>\nsecond line: 🙂",
        negative_prompt='lowres, "text"',
        steps=33,
        sampler=sampler,
        guidance_scale=4.25,
        seed=123456789,
        width=576,
        height=832,
        model="my model, v2",
        strength=0.5,
        mask_blur=8,
        overlay=False,
        clip_skip=3,
        eta=0.25,
        model_hash="0123456789",
        random_source="cpu",
        eta_noise_seed_delta=31337,
        subseed=5,
        subseed_strength=0.25,
        seed_resize_from=(512, 768),
        emphasis="No norm",
        pad_conds=True,
        schedule_type=resolve_schedule_type(sampler, None),
    )
    read = read_parameters(format_parameters(settings))
    assert read.settings == settings and read.unhonoured == {}


def test_the_warning_is_one_bounded_line() -> None:
    read = read_parameters(next(entry["text"] for entry in CORPUS if entry["name"] == "webui110_adetailer"))
    warning = read.warning("image.png")
    assert warning is not None and "\n" not in warning
    assert warning.startswith("image.png has 9 fields that sdrun does not honour")
    assert "ADetailer model" in warning and "ADetailer version" in warning
    assert read_parameters(format_parameters(read.settings)).warning("x") is None
    many = "a cat\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 8x8, " + ", ".join(
        f"K{index}: v" for index in range(5000)
    )
    warning = read_parameters(many).warning("x")
    assert warning is not None and warning.endswith(f"and {5000 - MAX_NAMED_KEYS:,} more")
    assert len(warning) < 400


@pytest.mark.parametrize(
    "line",
    [
        'Seed: "' + "x" * 60_000,  # an unterminated quote
        ", ".join(f"K{index}: v" for index in range(10_000)),  # 10k keys
        'A: "\\' * 15_000,  # escapes that never close
        "," * 60_000,
        ": " * 30_000,
        "K: [, " * 10_000,  # JSON lists that never close
        'A: {"a": 1}, ' * 5_000,
    ],
    ids=["unterminated", "10k-keys", "escapes", "commas", "colons", "unclosed-lists", "objects"],
)
def test_hostile_settings_lines_are_read_in_bounded_time(line: str) -> None:
    text = "a prompt\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 8x8, " + line
    text = text[: infotext.MAX_PARAMETERS_CHARACTERS]
    started = time.perf_counter()
    try:
        read = read_parameters(text)
        assert len(read.warning("x") or "") < 1000
    except infotext.SettingsError as error:
        assert "\n" not in str(error) and len(str(error)) < 400
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("version", list(A1111["versions"]))
def test_versions_the_web_ui_draws_with_compatibility_options(version: str) -> None:
    assert a1111.drawn_before_current(version) == A1111["versions"][version]


def test_model_hash_is_the_web_uis() -> None:
    """SD 1.5's v1-5-pruned-emaonly.safetensors (its published sha256) is "Model hash: 6ce0161689" in the
    web UI's texts."""
    digest = "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"
    assert a1111.model_hash(digest) == "6ce0161689"
    assert a1111.model_hash(None) == ""
