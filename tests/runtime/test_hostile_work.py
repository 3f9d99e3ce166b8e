"""How much work one call may cost, and how soon it stops: the work bound (sdrun.limits) refuses a call
before any session runs, and a StopSignal (sdrun.stopping) stops a call within one UNet pass, VAE pass or
tile, whatever the sampler's step does between them."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sdrun.errors import SettingsError
from sdrun.limits import Limits, unet_pass_work
from sdrun.networks import UNetGraph, VaeDecoderGraph
from sdrun.pipeline import Pipeline
from sdrun.stopping import GenerationCancelled, StopSignal

PROMPT = "a red cube"


def test_a_pass_costs_as_measured_on_sd15() -> None:
    """The proxy against the step times it was fitted to (sdrun.limits): 0.93 s at 256, ~4.5 s at 512,
    ~270 s at 2048 (per guided step, SD 1.5 on 2 cores)."""
    assert unet_pass_work(64 * 64) == pytest.approx(1.0)
    assert unet_pass_work(32 * 32) == pytest.approx(0.93 / 4.5, rel=0.1)
    assert unet_pass_work(256 * 256) == pytest.approx(270 / 4.5, rel=0.05)


@pytest.fixture(scope="module")
def bounded(tiny_sdexport_dir: Path) -> Iterator[Pipeline]:
    """The tiny model (64x64 pictures: 0.0129 units a pass) with a bound of 1 unit of work."""
    with Pipeline.load(tiny_sdexport_dir, provider="cpu", limits=Limits(max_work=1.0)) as pipeline:
        yield pipeline


def test_work_above_the_bound_is_refused_before_any_session_runs(bounded: Pipeline) -> None:
    # 16 images x 150 steps x 2 guidance passes x 0.0129 = 61.7 units; 2 steps would fit (0.82).
    with pytest.raises(SettingsError, match=r"is 62 units of work, above the limit of 1 .*at most 2 steps"):
        bounded.prepare(PROMPT, num_images=16, steps=150, guidance_scale=7.0)
    # Guidance 1 runs one pass a step: twice the steps fit.
    with pytest.raises(SettingsError, match="at most 4 steps"):
        bounded.prepare(PROMPT, num_images=16, steps=150, guidance_scale=1.0)
    assert bounded.prepare(PROMPT, num_images=16, steps=2, guidance_scale=7.0).num_images == 16


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[str, int], None]], dict[str, int]]:
    """counted(during): UNet passes and VAE decoder calls counted, `during(kind, count)` run inside each
    (where another thread's interrupt or cancel would land)."""

    def install(during: Callable[[str, int], None]) -> dict[str, int]:
        counts = {"unet": 0, "vae": 0}

        def wrap(kind: str, original: Callable[..., Any]) -> Callable[..., Any]:
            def run(*args: Any, **kwargs: Any) -> Any:
                counts[kind] += 1
                during(kind, counts[kind])
                return original(*args, **kwargs)

            return run

        monkeypatch.setattr(UNetGraph, "predict", wrap("unet", UNetGraph.predict))
        monkeypatch.setattr(VaeDecoderGraph, "decode", wrap("vae", VaeDecoderGraph.decode))
        return counts

    return install


@pytest.fixture(scope="module")
def sequential(tiny_sdexport_dir: Path) -> Iterator[Pipeline]:
    """Guidance as two UNet passes a step, and the VAE decoded in tiles."""
    with Pipeline.load(
        tiny_sdexport_dir, provider="cpu", sequential_guidance=True, tiled_vae=True
    ) as pipeline:
        yield pipeline


def test_cancel_stops_within_one_unet_pass(sequential: Pipeline, counted) -> None:
    stop = StopSignal()
    counts = counted(lambda kind, count: stop.cancel())
    with pytest.raises(GenerationCancelled):
        sequential.generate(PROMPT, steps=3, guidance_scale=7.0, num_images=2, stop=stop)
    assert counts == {"unet": 1, "vae": 0}  # not the step's second pass, and nothing decoded


def test_interrupt_stops_within_one_unet_pass_and_decodes_what_was_reached(
    sequential: Pipeline, counted
) -> None:
    stop = StopSignal()
    counts = counted(lambda kind, count: stop.interrupt() if (kind, count) == ("unet", 3) else None)
    result = sequential.generate(PROMPT, steps=3, guidance_scale=7.0, num_images=2, seed=5, stop=stop)
    assert counts == {"unet": 3, "vae": 1}  # the second step's second pass never ran
    assert len(result.images) == 1 and result.stopped
    one_step = sequential.generate(PROMPT, steps=3, guidance_scale=7.0, seed=5, callback=lambda *a: True)
    assert result.images[0].tobytes() == one_step.images[0].tobytes()  # the latents of the first step


def test_cancel_stops_a_tiled_decode_within_one_tile(sequential: Pipeline, counted) -> None:
    stop = StopSignal()
    counts = counted(lambda kind, count: stop.cancel() if kind == "vae" else None)
    with pytest.raises(GenerationCancelled):
        # 384x384 is a 48x48 latent: 2x2 tiles of 40.
        sequential.generate(PROMPT, steps=1, width=384, height=384, stop=stop)
    assert counts == {"unet": 2, "vae": 1}
