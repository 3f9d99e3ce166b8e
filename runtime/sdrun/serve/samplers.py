"""Sampler names both ways for the AUTOMATIC1111 routes: its labels and scheduler names (sdrun.a1111) and
sdrun's own, through the sampler table (sdrun.samplers.SAMPLER_TABLE)."""

from sdrun import a1111
from sdrun.errors import SettingsError
from sdrun.samplers import SAMPLER_TABLE, SAMPLERS, a1111_sampler
from sdrun.samplers.a1111_sigmas import KARRAS_RHO, SCHEDULE_TYPES


def _schedule(scheduler: str | None) -> str:
    schedule = a1111.SCHEDULER_NAMES.get((scheduler or "automatic").lower(), scheduler)
    if schedule not in a1111.SCHEDULER_NAMES.values():
        raise SettingsError(
            f"unknown scheduler {str(scheduler)[:60]!r}: choose one of {', '.join(a1111.SCHEDULER_NAMES)}"
        )
    return schedule


def sampler_and_schedule(name: str | None, scheduler: str | None = None) -> tuple[str | None, str | None]:
    """The sdrun sampler and schedule type for a sampler name (A1111's label or sdrun's own) and an A1111
    scheduler; None means "Automatic", as in the web UI since 1.9. No name: None (the model's sampler),
    which takes no scheduler but Automatic. Unknown names are refused with the choices."""
    schedule = _schedule(scheduler)
    if name is None:
        if schedule != a1111.AUTOMATIC:
            raise SettingsError(f"scheduler {scheduler!r} needs a sampler_name to go with")
        return None, None
    sampler, schedule_type = a1111_sampler(name, schedule)
    if sampler not in SAMPLERS:
        labels = ", ".join(dict.fromkeys(spec.a1111_label for spec in SAMPLER_TABLE))
        raise SettingsError(
            f"unknown sampler {name[:60]!r} (with scheduler {schedule}): choose one of {labels} "
            "(GET /sdapi/v1/samplers)"
        )
    return sampler, schedule_type


def a1111_samplers() -> list[dict]:
    """GET /sdapi/v1/samplers: each label once, with the sdrun names it stands for as aliases."""
    by_label: dict[str, list[str]] = {}
    for spec in SAMPLER_TABLE:
        by_label.setdefault(spec.a1111_label, []).append(spec.name)
    return [{"name": label, "aliases": names, "options": {}} for label, names in by_label.items()]


def a1111_schedulers() -> list[dict]:
    """GET /sdapi/v1/schedulers: the schedule types, as the web UI lists them."""
    names = {label: name for name, label in a1111.SCHEDULER_NAMES.items()}
    return [
        {
            "name": names[label],
            "label": label,
            "aliases": None,
            "default_rho": KARRAS_RHO if label == a1111.KARRAS else -1.0,
            "need_inner_model": label in (a1111.UNIFORM, a1111.SGM_UNIFORM, a1111.SIMPLE, a1111.NORMAL),
        }
        for label in (a1111.AUTOMATIC, *SCHEDULE_TYPES)
    ]
