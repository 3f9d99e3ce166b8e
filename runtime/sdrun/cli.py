"""The `sdrun` command: `sdrun "a prompt" --model DIR` writes PNGs that carry their settings."""

import dataclasses
import functools
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from sdrun.a1111 import EMPHASIS_MODES, model_hash
from sdrun.bench import bench_folder, write_json
from sdrun.defaults import VAE_CHOICES, GenerationDefaults
from sdrun.errors import ModelFolderError, SdrunError, SettingsError
from sdrun.hires import UPSCALERS
from sdrun.infotext import read_parameters_file
from sdrun.inpaint import DEFAULT_MASK_BLUR, MAX_MASK_BLUR
from sdrun.limits import DEFAULT_MAX_PIXELS, MAX_IMAGES, Limits
from sdrun.outputs import check_outputs, output_paths
from sdrun.pipeline import Pipeline
from sdrun.png_files import read_png_infotext, save_png
from sdrun.providers import PROVIDER_CHOICES
from sdrun.random_sources import RANDOM_SOURCES
from sdrun.samplers import SAMPLERS
from sdrun.samplers.a1111_sigmas import SCHEDULE_TYPES
from sdrun.serve.config import DEFAULT_MAX_WORK
from sdrun.settings import MAX_SEED, GenerationSettings, HiresFix, ImageSettings, check_seed, random_seed

# Where `sdexport build` puts the model that ships with the project.
DEFAULT_MODEL_DIR = Path("exported") / "tiny-shapes"
DEFAULT_OUT = "sdrun-{seed}.png"
# Shown in --help; a model folder may carry defaults of its own (see sdrun.defaults).
_SD = GenerationDefaults()


class _PromptFirstGroup(click.Group):
    """`sdrun PROMPT ...` means `sdrun generate PROMPT ...`; a first word naming a subcommand runs it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["generate", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_PromptFirstGroup)
def main() -> None:
    """Stable Diffusion 1.x on onnxruntime and numpy (no PyTorch).

    \b
      sdrun "a prompt" [OPTIONS]       same as: sdrun generate "a prompt" [OPTIONS]
      sdrun --from-png IMAGE [OPTIONS] make IMAGE again from the settings it carries
      sdrun --from-infotext FILE       the same from an infotext (civitai's generation data)
      sdrun bench DIR [OPTIONS]        time and memory of each stage of a generation
      sdrun serve [DIR ...] [OPTIONS]  HTTP server: OpenAI Images and AUTOMATIC1111 APIs

    See `sdrun generate --help` for the options.
    """


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    click.echo(f"Warning: {message}", err=True)


def _reported(command: Callable[..., None]) -> Callable[..., None]:
    """Run a command with sdrun's errors as one line ("Error: ...") and warnings as "Warning: ..." lines."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                command(*args, **kwargs)
            except SdrunError as error:
                raise click.ClickException(str(error)) from None
            except MemoryError:  # numpy's allocations too, not only onnxruntime's (sdrun.graphs)
                raise click.ClickException(
                    "sdrun ran out of memory: choose a smaller size or fewer images, or add --low-memory"
                ) from None

    return run


def _open_pipeline(
    model: Path, model_is_default: bool, provider: str, verify: bool, **options: Any
) -> Pipeline:
    if model_is_default and not model.is_dir():
        raise ModelFolderError(f"no model folder at {model}: run `sdexport build` first, or pass --model DIR")
    return Pipeline.load(model, provider, verify_checksums=verify, **options)


@main.command()
@click.argument("prompt", required=False)
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=DEFAULT_MODEL_DIR,
    show_default=True,
    help="Exported model folder.",
)
@click.option(
    "--out",
    default=DEFAULT_OUT,
    show_default=True,
    help="Output PNG path; may hold {i} (image index from 0) and {seed}. With several images and "
    "neither field, -0, -1, ... is added before the suffix. Each PNG is written as soon as it is made.",
)
@click.option("--overwrite", is_flag=True, help="Replace output files that exist (else they are refused).")
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=MAX_SEED),
    help="Seed of the first image (image i gets seed + i, each within the web UI's 32-bit range). Random "
    "when not given.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    help=f"Sampling steps.  [default: the model's, else {_SD.steps}]",
)
@click.option(
    "--guidance",
    type=float,
    help="Classifier-free guidance scale; 1 turns guidance off.  "
    f"[default: the model's, else {_SD.guidance_scale}]",
)
@click.option(
    "--sampler",
    type=click.Choice(list(SAMPLERS)),
    help="Few-step models want their own, at 1-8 --steps: lcm for LCM models and LCM-LoRAs, tcd for TCD "
    "LoRAs, ddim_trailing or euler_trailing for Hyper-SD and turbo-style models; all at --guidance 1 (one "
    "UNet pass a step) but LCM-distilled UNets, which take the guidance as an input. The k_* ones are "
    "AUTOMATIC1111's (k-diffusion on its noise levels, see --schedule-type); the others diffusers'.  "
    f"[default: the model's, else {_SD.sampler}]",
)
@click.option(
    "--schedule-type",
    help="AUTOMATIC1111's schedule type for its samplers (the k_* ones): "
    f"{', '.join(SCHEDULE_TYPES)} (or its API's name: karras, sgm_uniform, ...).  [default: Automatic, "
    "the one A1111 picks for the sampler]",
)
@click.option(
    "--eta",
    type=float,
    help="The sampler's noise, for ddim and ddim_trailing (0, deterministic, to 1), tcd (its gamma, "
    "0 to 1) and A1111's ancestral and SDE samplers (its Eta, 0 deterministic).  [default: 0 for ddim, "
    "0.3 for tcd, 1 for A1111's]",
)
@click.option(
    "--random-source",
    type=click.Choice(RANDOM_SOURCES, case_sensitive=False),
    help="Where the noise comes from: numpy (sdrun's own), or the AUTOMATIC1111 web UI's sources, gpu (its "
    "default: torch's CUDA generator, drawn here on any device; nv is the same), cpu (torch's CPU "
    "generator).  [default: numpy, or as --from-png records it]",
)
@click.option(
    "--ensd",
    "eta_noise_seed_delta",
    type=click.IntRange(min=0, max=MAX_SEED),
    help="The web UI's eta noise seed delta: the sampler's noise comes from seed + ENSD.  [default: 0]",
)
@click.option(
    "--subseed",
    type=click.IntRange(min=0, max=MAX_SEED),
    help="The web UI's variation seed (image i gets subseed + i; random when only a strength is given).",
)
@click.option(
    "--subseed-strength",
    type=click.FloatRange(min=0.0, max=1.0),
    help="How far the starting noise moves towards the variation seed's (0 to 1); with a strength, every "
    "image keeps the seed, as in the web UI.  [default: 0]",
)
@click.option(
    "--seed-resize-from",
    metavar="WxH",
    callback=lambda _ctx, _param, value: _size_option(value, "--seed-resize-from"),
    help="The web UI's 'resize seed from': draw the noise at this size in pixels, pasted centred.",
)
@click.option("--negative", help="Negative prompt.")
@click.option("--height", type=int, help="Image height in pixels (the model's size by default).")
@click.option("--width", type=int, help="Image width in pixels (the model's size by default).")
@click.option("--num-images", type=click.IntRange(min=1, max=MAX_IMAGES), default=1, show_default=True)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=64),
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    help="Refuse images larger than this many pixels (width x height), before any work starts.",
)
@click.option("--init-image", help="Image-to-image: start from this picture (resized to the output size).")
@click.option(
    "--strength",
    type=float,
    help="Image-to-image: how much of the schedule to run, in (0, 1].  "
    f"[default: the model's, else {_SD.strength}]",
)
@click.option(
    "--mask",
    help="Inpainting: repaint the --init-image where this picture is white, keep it where black (its "
    "alpha channel when it has transparency; resized to the output size). An inpainting model (9-channel "
    "UNet) sees the mask; any other keeps the init image's latents outside it at every step.",
)
@click.option(
    "--mask-blur",
    type=click.IntRange(min=0, max=MAX_MASK_BLUR),
    help=f"Inpainting: blur the mask's edge by this many pixels.  [default: {DEFAULT_MASK_BLUR}]",
)
@click.option(
    "--overlay/--no-overlay",
    default=None,
    help="Inpainting: paste the init image's pixels back outside the blurred mask after decoding, so they "
    "come back unchanged (diffusers leaves them as the VAE decodes them).  [default: overlay, or as "
    "--from-png records it]",
)
@click.option(
    "--emphasis",
    type=click.Choice(EMPHASIS_MODES),
    help="How (word:1.2) weights act, as AUTOMATIC1111's Emphasis mode: Original rescales each chunk of "
    "75 tokens to its unweighted mean, No norm does not, Ignore drops the weights, None reads brackets "
    "as text.  [default: Original, or as --from-png records it]",
)
@click.option(
    "--pad-conds/--no-pad-conds",
    default=None,
    help="Pad the shorter of prompt and negative prompt with empty chunks so that both share one UNet "
    "batch (AUTOMATIC1111's Pad conds); else prompts of different lengths run as two UNet passes.  "
    "[default: off, or as --from-png records it]",
)
@click.option(
    "--hires-scale",
    type=float,
    help="Hires fix (AUTOMATIC1111's): make the image at its size, upscale it by this factor and run "
    "image-to-image on it. Any --hires-* option turns the fix on.  [default: 2]",
)
@click.option(
    "--hires-resize",
    callback=lambda _ctx, _param, value: _size_option(value, "--hires-resize"),
    help="Hires fix: upscale to WIDTHxHEIGHT instead of by --hires-scale (a side of 0 keeps the aspect; "
    "both given crop to it).",
)
@click.option("--hires-upscaler", help=f"Hires fix: one of {', '.join(UPSCALERS)}.  [default: Latent]")
@click.option(
    "--hires-steps", type=click.IntRange(min=1), help="Hires fix: second-pass steps.  [default: --steps]"
)
@click.option(
    "--hires-strength", type=float, help="Hires fix: denoising strength, in (0, 1].  [default: 0.7]"
)
@click.option("--hires-prompt", help="Hires fix: the second pass's prompt.  [default: the prompt]")
@click.option("--hires-negative-prompt", help="Hires fix: the second pass's negative prompt.")
@click.option(
    "--hires-sampler",
    type=click.Choice(list(SAMPLERS)),
    help="Hires fix: the second pass's sampler.  [default: --sampler]",
)
@click.option(
    "--provider",
    type=click.Choice(PROVIDER_CHOICES),
    default="auto",
    show_default=True,
    help="onnxruntime execution provider; auto takes CUDA when available, else OpenVINO "
    "(onnxruntime-openvino) for a `sdexport build --target openvino` folder, else the CPU. OpenVINO "
    "computes in bfloat16 where the CPU has it; SDRUN_OPENVINO_PRECISION=bf16|f32 forces either.",
)
@click.option(
    "--from-png",
    "from_png",
    type=click.Path(path_type=Path),
    help="Reproduce a PNG from the settings in its 'parameters' chunk; other options override them.",
)
@click.option(
    "--from-infotext",
    "from_infotext",
    type=click.Path(path_type=Path, allow_dash=True),
    help="As --from-png, from a text file holding an AUTOMATIC1111 infotext (a PNG's 'parameters', "
    "civitai's generation data); - reads it from standard input.",
)
@click.option("--skip-checksums", is_flag=True, help="Check only file sizes against the folder's manifest.")
@click.option(
    "--require-manifest",
    is_flag=True,
    help="Refuse a model folder without an sdexport manifest (one runs with a warning otherwise, since "
    "none of its files can be verified).",
)
@click.option(
    "--low-memory",
    is_flag=True,
    help="Least peak memory, at some cost in time: each model loaded only for its stage, guidance passes "
    "one after the other, VAE decoded in tiles. Least of all on a folder built with "
    "`sdexport build --quantize int8-compact`.",
)
@click.option(
    "--fast",
    is_flag=True,
    help="Keep onnxruntime's memory arena: on CPUs, UNet steps 5-10% faster for more peak memory "
    "(SD 1.5 fp32 at 512x512: 8.3 GB against 5.4 GB).",
)
@click.option(
    "--sequential-guidance/--batched-guidance",
    default=None,
    help="Run the guided and unguided UNet passes one after the other (less memory) or as one batch "
    "[batched, unless --low-memory].",
)
@click.option(
    "--tiled-vae/--no-tiled-vae",
    default=None,
    help="Decode the image in overlapping tiles (less memory; makes large images possible) "
    "[tiled beyond 768x768 pixels, or with --low-memory].",
)
@click.option(
    "--vae",
    type=click.Choice(VAE_CHOICES),
    help="tiny: the folder's TAESD (from `sdexport build --tiny-vae`), decoding in a fraction of the full "
    "VAE's time at some cost in detail.  [default: the model's, else full]",
)
@click.option("--quiet", is_flag=True, help="No progress bar or notes; print only where images went.")
@click.pass_context
@_reported
def generate(
    ctx: click.Context,
    prompt: str | None,
    model: Path,
    out: str,
    overwrite: bool,
    max_pixels: int,
    require_manifest: bool,
    quiet: bool,
    provider: str,
    from_png: Path | None,
    from_infotext: Path | None,
    init_image: str | None,
    skip_checksums: bool,
    low_memory: bool,
    fast: bool,
    sequential_guidance: bool | None,
    tiled_vae: bool | None,
    vae: str | None,
    num_images: int,
    **overrides: Any,
) -> None:
    """Generate images from PROMPT and write them as PNGs with their settings."""
    if low_memory and fast:
        raise click.UsageError("--low-memory and --fast pull opposite ways: choose one")
    source, recorded = _recorded_settings(from_png, from_infotext)
    hires = {key: overrides.pop(key) for key in list(overrides) if key.startswith("hires_")}
    options = {**overrides, "num_images": num_images, "init_image": init_image}
    settings = _with_hires(_settings_from_options(prompt, recorded, options), hires)
    # The seeds name the files, and every file is checked before any work starts.
    seed = random_seed(num_images) if settings.seed is None else check_seed(settings.seed, num_images)
    settings = settings.but(seed=seed)
    paths = output_paths(out, [seed + index for index in range(num_images)])
    check_outputs(paths, overwrite)
    model_is_default = ctx.get_parameter_source("model") == click.core.ParameterSource.DEFAULT
    pipeline = _open_pipeline(
        model,
        model_is_default,
        provider,
        not skip_checksums,
        low_memory=low_memory,
        fast=fast,
        sequential_guidance=sequential_guidance,
        tiled_vae=tiled_vae,
        vae=vae,
        limits=Limits(max_pixels=max_pixels),
        require_manifest=require_manifest,
    )
    if not quiet:
        click.echo(
            f"Model {pipeline.folder.path} on the {pipeline.provider.upper()} execution provider", err=True
        )
        if recorded is not None and recorded.model and recorded.model != pipeline.folder.name:
            click.echo(f"Note: {source} was made with model {recorded.model!r}", err=True)
        built_from = model_hash(pipeline.folder.facts.checkpoint_sha256)
        if recorded is not None and recorded.model_hash and built_from and recorded.model_hash != built_from:
            click.echo(
                f"Note: {source} was made with the checkpoint of Model hash {recorded.model_hash}; this "
                f"model folder was built from {built_from}",
                err=True,
            )
        if recorded is not None and recorded.clip_skip != pipeline.facts.clip_skip:
            click.echo(
                f"Note: {source} was made with Clip skip {recorded.clip_skip}, this model folder has "
                f"{pipeline.facts.clip_skip} (`sdexport build --clip-skip` sets it)",
                err=True,
            )
        if low_memory and pipeline.folder.facts.quantization != "int8-compact":
            click.echo(
                "Note: a folder built with `sdexport build --quantize int8-compact` needs about a third "
                "of this one's memory under --low-memory",
                err=True,
            )

    with _ProgressBar(enabled=not quiet) as progress:
        generated = pipeline.generate_each(settings, callback=progress.update)
        for made, path in zip(generated, paths, strict=False):
            save_png(made.image, path, made.settings, overwrite=overwrite)
            progress.echo(f"Wrote {path}")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--size", type=click.IntRange(min=8), default=512, show_default=True, help="Image side in pixels."
)
@click.option("--steps", type=click.IntRange(min=1), default=_SD.steps, show_default=True)
@click.option(
    "--repeats", type=click.IntRange(min=1), default=2, show_default=True, help="Timed runs per stage."
)
@click.option("--full/--no-full", default=True, show_default=True, help="Also time a whole generation.")
@click.option("--provider", type=click.Choice(PROVIDER_CHOICES), default="cpu", show_default=True)
@click.option("--low-memory", is_flag=True, help="Measure the low-memory mode (see sdrun generate --help).")
@click.option("--fast", is_flag=True, help="Measure the fast mode (see sdrun generate --help).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the results here.")
@_reported
def bench(
    folder: Path,
    size: int,
    steps: int,
    repeats: int,
    full: bool,
    provider: str,
    low_memory: bool,
    fast: bool,
    json_path: Path | None,
) -> None:
    """Time each stage of a SIZE x SIZE generation with the model FOLDER, and its peak memory."""
    report = bench_folder(
        folder,
        size,
        repeats=repeats,
        steps=steps,
        full=full,
        provider=provider,
        low_memory=low_memory,
        fast=fast,
        log=lambda line: click.echo(line, err=True),
    )
    click.echo(report.format())
    if json_path is not None:
        write_json(report, json_path)
        click.echo(f"Wrote {json_path}")


@main.command()
@click.argument("folders", nargs=-1, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback).")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option(
    "--queue",
    "queue_depth",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Requests that may wait per model besides the one running; more get 429 with Retry-After.",
)
@click.option(
    "--api-key",
    envvar="SDRUN_API_KEY",
    help="Ask every route but /health for `Authorization: Bearer KEY` (or set SDRUN_API_KEY).",
)
@click.option("--provider", type=click.Choice(PROVIDER_CHOICES), default="auto", show_default=True)
@click.option("--low-memory", is_flag=True, help="Each model loaded for its stage only (generate --help).")
@click.option("--max-pixels", type=click.IntRange(min=64), default=DEFAULT_MAX_PIXELS, show_default=True)
@click.option(
    "--max-work",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_MAX_WORK,
    show_default=True,
    help="Refuse a request above this work, in UNet passes at 512x512 (sdrun.limits; docs/api.md).",
)
@click.option("--skip-checksums", is_flag=True, help="Check only file sizes against each folder's manifest.")
@click.option(
    "--allowed-hosts",
    default="",
    help="Host names (comma-separated) requests may give in Host besides localhost and the --host name "
    "(addresses always pass); '*' lets any through. Others get 400 (DNS rebinding).",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    help="A web origin (https://app.example) whose pages may call the API; repeatable. Default: none.",
)
@click.option("--ray", "use_ray", is_flag=True, help="Deploy on Ray Serve (pip install '.[ray]').")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True, help="With --ray.")
@_reported
def serve(
    folders: tuple[Path, ...],
    host: str,
    port: int,
    queue_depth: int,
    api_key: str | None,
    provider: str,
    low_memory: bool,
    max_pixels: int,
    max_work: float,
    skip_checksums: bool,
    allowed_hosts: str,
    cors_origins: tuple[str, ...],
    use_ray: bool,
    replicas: int,
) -> None:
    """Serve the model FOLDERS (default: the embedded model's) over HTTP: the OpenAI Images API under
    /v1 and the AUTOMATIC1111 API under /sdapi/v1 (docs/api.md)."""
    if replicas > 1 and not use_ray:
        raise click.UsageError("--replicas needs --ray (one process serves one replica)")
    try:
        from sdrun.serve.browser_guard import default_allowed_hosts, is_loopback
        from sdrun.serve.config import ServeConfig, serve_limits

        if use_ray:
            from sdrun.serve.ray_deploy import serve_forever
        else:
            from sdrun.serve.server import serve_forever
    except ModuleNotFoundError as error:
        extra = "ray" if use_ray else "serve"
        raise click.ClickException(
            f"the server needs {error.name}, which is not installed: pip install '.[{extra}]'"
        ) from None
    config = ServeConfig(
        # Absolute, so that Ray's replicas (whatever their working directory) find the same folders.
        folders=tuple(folder.resolve() for folder in folders or (DEFAULT_MODEL_DIR,)),
        queue_depth=queue_depth,
        api_key=api_key,
        provider=provider,
        low_memory=low_memory,
        verify_checksums=not skip_checksums,
        limits=serve_limits(max_pixels, max_work),
        allowed_hosts=default_allowed_hosts(host) + tuple(name for name in allowed_hosts.split(",") if name),
        cors_origins=cors_origins,
    )
    if api_key is None and not is_loopback(host):
        warnings.warn(
            f"--host {host} lets other machines in and there is no --api-key: anyone who can reach this "
            "port can use it; set --api-key KEY (or SDRUN_API_KEY)",
            stacklevel=1,
        )
    if use_ray:
        serve_forever(config, replicas, host, port)
    else:
        serve_forever(config, host, port)


def _recorded_settings(
    from_png: Path | None, from_infotext: Path | None
) -> tuple[Path | None, ImageSettings | None]:
    """Where the settings to make again come from, and those settings (None without --from-*); a field of
    the text that sdrun does not honour is named in one warning, never dropped in silence."""
    if from_png is not None and from_infotext is not None:
        raise click.UsageError("give --from-png or --from-infotext, not both")
    if from_png is None and from_infotext is None:
        return None, None
    source = from_png or from_infotext
    read = read_png_infotext(from_png) if from_png is not None else read_parameters_file(source)
    note = read.warning(str(source))
    if note is not None:
        warnings.warn(note, stacklevel=1)
    return source, read.settings


def _settings_from_options(
    prompt: str | None, recorded: ImageSettings | None, overrides: dict[str, Any]
) -> GenerationSettings:
    """The call's settings: the recorded ones (if any), then the options given."""
    renamed = {"guidance": "guidance_scale", "negative": "negative_prompt"}
    given = {renamed.get(key, key): value for key, value in overrides.items() if value is not None}
    if prompt is not None:
        given["prompt"] = prompt
    if recorded is None:
        if prompt is None:
            raise SettingsError('give a prompt (sdrun "a prompt"), --from-png IMAGE or --from-infotext FILE')
        return GenerationSettings().but(**given)
    if recorded.strength is not None and "init_image" not in given:
        raise SettingsError(
            f"the PNG was made from an init image (denoising strength {recorded.strength}); "
            "pass that image with --init-image"
        )
    if recorded.mask_blur is not None and "mask" not in given:
        raise SettingsError(
            f"the PNG was inpainted with a mask (mask blur {recorded.mask_blur}); pass that mask with --mask"
        )
    return GenerationSettings.from_image(recorded, **given)


def _size_option(value: str | None, option: str) -> tuple[int, int] | None:
    """A WIDTHxHEIGHT option as (width, height)."""
    if value is None:
        return None
    size = re.fullmatch(r"\s*([0-9]{1,6})\s*[xX]\s*([0-9]{1,6})\s*", value)
    if size is None:
        raise click.BadParameter(f"{value[:40]!r} is not WIDTHxHEIGHT, e.g. 512x768", param_hint=option)
    return int(size.group(1)), int(size.group(2))


def _with_hires(settings: GenerationSettings, options: dict[str, Any]) -> GenerationSettings:
    """`settings` with the --hires-* options over their hires fix (a recorded one, or the defaults)."""
    given = {key.removeprefix("hires_"): value for key, value in options.items() if value is not None}
    if not given:
        return settings
    return settings.but(hires=dataclasses.replace(settings.hires or HiresFix(), **given))


class _ProgressBar:
    """A click progress bar on stderr over all sampling steps, created at the first step (when the
    total is known); does nothing when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def update(self, step: int, total: int, latents: np.ndarray) -> bool:
        if self.enabled:
            if self._bar is None:
                self._bar = click.progressbar(length=total, label="Sampling", file=sys.stderr)
                self._bar.__enter__()
            self._bar.update(1)
        return False

    def echo(self, line: str) -> None:
        """A line on stdout, on a line of its own below the bar."""
        if self._bar is not None:
            click.echo(err=True)
        click.echo(line)

    def __enter__(self) -> "_ProgressBar":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc_info)
