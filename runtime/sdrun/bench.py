"""`sdrun bench DIR`: where the time and the memory of a generation go, stage by stage.

Times are wall-clock seconds of the stage as a user meets it (inputs prepared, outputs back in numpy).
Peak memory is the process's resident high-water mark (VmHWM) during the stage: on Linux the mark is
reset before each stage (`/proc/self/clear_refs`), elsewhere it is the peak so far.
"""

import json
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sdrun.errors import SettingsError

if TYPE_CHECKING:  # imported where timed: loading it is part of what a benchmark measures
    from sdrun.pipeline import Pipeline, StepCallback

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_RESET_PEAK = "5"  # clear_refs: reset the peak resident set size to the current one


def resident_mb(key: str = "VmHWM") -> float:
    """The process's peak (VmHWM) or current (VmRSS) resident set in MiB."""
    if _STATUS.is_file():
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    # ru_maxrss: kilobytes on Linux, bytes on macOS; a peak either way.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def reset_peak() -> bool:
    """Start a new high-water mark at the current resident size; False where the system cannot."""
    try:
        _CLEAR_REFS.write_text(_RESET_PEAK)
    except OSError:
        return False
    return True


@dataclass
class Stage:
    """One measured stage: the time of each repeat and the peak resident memory over them."""

    name: str
    seconds: list[float] = field(default_factory=list)
    peak_mb: float = 0.0
    note: str = ""

    @property
    def best(self) -> float:
        return min(self.seconds)


@dataclass
class Report:
    system: str
    size: int
    stages: list[Stage] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, note: str = "") -> Iterator[Stage]:
        """Measure the body as one stage (its repeats timed with `Stage.seconds.append` or `timed`)."""
        stage = Stage(name, note=note)
        reset_peak()
        yield stage
        stage.peak_mb = round(resident_mb(), 1)
        self.stages.append(stage)

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "size": self.size,
            "info": self.info,
            "process_peak_mb": max([stage.peak_mb for stage in self.stages] + [round(resident_mb(), 1)]),
            "stages": [asdict(stage) for stage in self.stages],
        }

    def format(self) -> str:
        lines = [f"{self.system} at {self.size}x{self.size}"]
        for stage in self.stages:
            times = ", ".join(f"{seconds:.4g}" for seconds in stage.seconds)
            note = f"  ({stage.note})" if stage.note else ""
            lines.append(f"  {stage.name:<28} {times:<30} s   peak {stage.peak_mb:8.1f} MiB{note}")
        return "\n".join(lines)


def timed(stage: Stage, function: Callable[[], Any], repeats: int = 1) -> Any:
    """Run `function` `repeats` times, appending each time to `stage`; returns the last result."""
    result = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        stage.seconds.append(time.perf_counter() - started)
    return result


def sampler_seconds_per_step(sampler: str, schedule: Any, steps: int, latent_shape: tuple[int, ...]) -> float:
    """The sampler's own time per step: the loop run with a model that costs nothing."""
    from sdrun.samplers import sample

    prediction = np.random.default_rng(1).standard_normal(latent_shape, dtype=np.float32)
    noise = np.random.default_rng(0).standard_normal(latent_shape, dtype=np.float32)
    started = time.perf_counter()
    sample(sampler, lambda x, t: prediction, schedule, steps, noise, np.random.default_rng(0))
    return (time.perf_counter() - started) / steps


def write_json(report: Report, path: Path) -> None:
    """The report as JSON at `path`; a path that cannot be written is a one-line SettingsError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    except OSError as error:
        raise SettingsError(
            f"cannot write {path}: {error.strerror or error}; choose another --json"
        ) from error


BENCH_PROMPT = "a photograph of an astronaut riding a horse"
BENCH_NEGATIVE = "blurry"
BENCH_GUIDANCE = 7.5
BENCH_SAMPLER = "euler"  # one UNet evaluation per step, as every peer's default-free comparison uses
UNET_TIMESTEP = 500.0


def bench_generation(
    pipeline: "Pipeline", size: int, steps: int, callback: "StepCallback | None" = None
) -> None:
    """The generation every benchmark times: the bench prompts, sampler and guidance, seed 0."""
    pipeline.generate(
        BENCH_PROMPT,
        BENCH_NEGATIVE,
        steps=steps,
        guidance_scale=BENCH_GUIDANCE,
        sampler=BENCH_SAMPLER,
        seed=0,
        height=size,
        width=size,
        callback=callback,
    )


def bench_folder(
    folder: str | Path,
    size: int = 512,
    *,
    repeats: int = 2,
    steps: int = 20,
    full: bool = True,
    generations: int = 1,
    provider: str = "cpu",
    low_memory: bool = False,
    fast: bool = False,
    log: Callable[[str], None] = print,
) -> Report:
    """Measure each stage of a `size` x `size` generation with the model folder `folder`.

    Stages: loading (cold start: the sessions the memory policy opens at load), text encoding of prompt
    and negative prompt, one UNet step with guidance (the first call apart, as it also plans memory, and
    under `low_memory` opens the UNet's session), the sampler's own cost per step, VAE decoding, and
    (with `full`) a whole generation of `steps` steps, the one that shows a policy's peak (timed
    `generations` times).
    """
    from sdrun.pipeline import Pipeline

    def load() -> Pipeline:
        return Pipeline.load(folder, provider, verify_checksums=False, low_memory=low_memory, fast=fast)

    report = Report("sdrun", size)
    with report.stage("create sessions") as stage:
        pipeline = timed(stage, load)
    report.info.update(provider=pipeline.provider, folder=str(folder), low_memory=low_memory, fast=fast)
    log(f"loaded in {stage.best:.2f} s on {pipeline.provider}")

    with report.stage("text encoding (batch 2)") as stage:
        embeddings = timed(
            stage, lambda: pipeline.encode_prompt(BENCH_PROMPT, BENCH_NEGATIVE, BENCH_GUIDANCE), repeats + 1
        )
    latent_side = size // pipeline.facts.vae_factor
    shape = (1, pipeline.facts.latent_channels, latent_side, latent_side)
    latents = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    with pipeline.sessions.use("unet"):
        model = pipeline.guided_model(embeddings, BENCH_GUIDANCE)
        with report.stage("UNet first call (batch 2)") as stage:
            timed(stage, lambda: model(latents, UNET_TIMESTEP))
        with report.stage("UNet step, guidance (batch 2)") as stage:
            timed(stage, lambda: model(latents, UNET_TIMESTEP), repeats)
    log(f"UNet step {stage.best:.3f} s")
    with report.stage("sampler per step", note=BENCH_SAMPLER) as stage:
        for _ in range(repeats):  # a loop of `steps` steps each; microseconds, so the best of a few
            stage.seconds.append(sampler_seconds_per_step(BENCH_SAMPLER, pipeline.schedule, steps, shape))
    with report.stage("VAE decode (1 image)") as stage:
        timed(stage, lambda: pipeline.decode(latents * pipeline.facts.latent_scale), repeats)
    log(f"VAE decode {stage.best:.3f} s")
    if full:
        with report.stage(f"generation, {steps} steps", note=BENCH_SAMPLER) as stage:
            timed(stage, lambda: bench_generation(pipeline, size, steps), generations)
        log(f"generation {stage.best:.2f} s")
    opened = pipeline.sessions.open_seconds
    report.info["session_seconds"] = {name: round(seconds, 3) for name, seconds in opened.items()}
    return report
