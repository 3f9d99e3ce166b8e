"""Sampler names both ways: sdrun's own and the AUTOMATIC1111 labels (sdrun.png_info.SAMPLER_LABELS)."""

from sdrun.errors import SettingsError
from sdrun.png_info import SAMPLER_LABELS, sampler_from_label
from sdrun.samplers import SAMPLERS

# A1111's scheduler names (its API takes these or their labels) -> the labels png_info reads.
SCHEDULER_LABELS = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "sgm_uniform": "SGM Uniform",
}


def _schedule(scheduler: str | None) -> str:
    schedule = SCHEDULER_LABELS.get((scheduler or "automatic").lower(), scheduler)
    if schedule not in SCHEDULER_LABELS.values():
        raise SettingsError(
            f"unknown scheduler {str(scheduler)[:60]!r}: choose one of {', '.join(SCHEDULER_LABELS)}"
        )
    return schedule


def sampler_for(name: str | None, scheduler: str | None = None) -> str | None:
    """The sdrun sampler for a sampler name (A1111's label or sdrun's own) and an A1111 scheduler; None
    means "Automatic", as in the web UI since 1.9. No name: None (the model's sampler), which takes no
    scheduler but Automatic. Unknown names are refused with the choices."""
    schedule = _schedule(scheduler)
    if name is None:
        if schedule != "Automatic":
            raise SettingsError(f"scheduler {scheduler!r} needs a sampler_name to go with")
        return None
    sampler = sampler_from_label(name, schedule)
    if sampler not in SAMPLERS:
        labels = ", ".join(dict.fromkeys(label for label, _ in SAMPLER_LABELS.values()))
        raise SettingsError(
            f"unknown sampler {name[:60]!r} (with scheduler {schedule}): choose one of {labels} "
            "(GET /sdapi/v1/samplers)"
        )
    return sampler


def a1111_samplers() -> list[dict]:
    """GET /sdapi/v1/samplers: each label once, with the sdrun names it stands for as aliases."""
    by_label: dict[str, list[str]] = {}
    for sampler in SAMPLERS:
        label, _ = SAMPLER_LABELS.get(sampler, (sampler, None))
        by_label.setdefault(label, []).append(sampler)
    return [{"name": label, "aliases": names, "options": {}} for label, names in by_label.items()]
