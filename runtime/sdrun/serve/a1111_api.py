"""The AUTOMATIC1111 web UI's API (/sdapi/v1), as Open WebUI, SillyTavern and Krita's plugins call it.

txt2img and img2img answer `images` (base64 PNGs, each with its `parameters` chunk), `parameters` (the
request as given) and `info` (a JSON text with the seeds and the settings used). Progress and interrupt
concern the running jobs; `sd_model_checkpoint` (options, or a request's override_settings) picks among
the served folders; override_settings' `emphasis` and `pad_cond_uncond` apply to the request. Sampler
names are A1111's labels ("DPM++ 2M" with scheduler "Karras", or the older "DPM++ 2M Karras"), mapped
both ways. img2img inpaints with a base64 `mask` (white = repaint, or its alpha
channel when it has transparency: the library's reading), `mask_blur`, and `inpainting_mask_invert` 1 to
repaint the black area instead (the route inverts the mask before the library sees it).

The noise is the web UI's: its default source, GPU (torch's CUDA generator, which sdrun draws on any
device), unless `override_settings.randn_source` names CPU or NV (or sdrun's "numpy"), so that a body sent
to the web UI and to sdrun starts from the same noise; `override_settings.eta_noise_seed_delta` is its ENSD,
and `subseed`, `subseed_strength`, `seed_resize_from_w` and `seed_resize_from_h` its seed features.
"""

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request

from sdrun import a1111
from sdrun.errors import SettingsError
from sdrun.infotext import format_parameters
from sdrun.inpaint import mask_channel
from sdrun.results import GeneratedImage
from sdrun.samplers import a1111_names
from sdrun.serve.dependencies import run_job, served_models
from sdrun.serve.encoding import image_from_base64, inverted_mask, pngs_base64
from sdrun.serve.jobs import Models
from sdrun.serve.samplers import a1111_samplers, a1111_schedulers, sampler_and_schedule
from sdrun.serve.schemas import (
    A1111ImagesResponse,
    A1111Img2ImgRequest,
    A1111Model,
    A1111Progress,
    A1111Sampler,
    A1111Scheduler,
    A1111State,
    A1111Txt2ImgRequest,
)
from sdrun.settings import GenerationSettings, HiresFix

router = APIRouter(prefix="/sdapi/v1")
ServedModels = Annotated[Models, Depends(served_models)]
CHECKPOINT_OPTION = "sd_model_checkpoint"
RANDN_SOURCE_OPTION = "randn_source"
ENSD_OPTION = "eta_noise_seed_delta"
# txt2img's denoising_strength when a hires fix leaves it out (StableDiffusionProcessingTxt2Img's default).
HIRES_API_STRENGTH = 0.75
# The web UI's dropdown choices that mean the first pass's.
SAME_SAMPLER, SAME_SCHEDULER = "Use same sampler", "Use same scheduler"


def _model(body: A1111Txt2ImgRequest) -> str | None:
    override = (body.override_settings or {}).get(CHECKPOINT_OPTION)
    if override is not None and not isinstance(override, str):
        raise SettingsError(
            f"override_settings.{CHECKPOINT_OPTION} must be a model title (GET /sdapi/v1/sd-models)"
        )
    return override


def _random_source(body: A1111Txt2ImgRequest) -> object:
    """The web UI's source the body asks for (GPU, its default, when none): sdrun's name for it; anything
    else goes to the library as given, which names the sources it knows."""
    source = (body.override_settings or {}).get(RANDN_SOURCE_OPTION, a1111.RNG_DEFAULT)
    return a1111.RNG_NAMES.get(source.upper(), source) if isinstance(source, str) else source


def _settings(body: A1111Txt2ImgRequest) -> GenerationSettings:
    """The body's settings; what it leaves out, the library takes from the model."""
    sampler, schedule_type = sampler_and_schedule(body.sampler_name or body.sampler_index, body.scheduler)
    resize = (body.seed_resize_from_w or 0, body.seed_resize_from_h or 0)
    options = body.override_settings or {}
    return GenerationSettings(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        seed=None if body.seed is None or body.seed == -1 else body.seed,
        steps=body.steps,
        guidance_scale=body.cfg_scale,
        sampler=sampler,
        schedule_type=schedule_type,
        eta=body.eta,
        width=body.width,
        height=body.height,
        num_images=body.batch_size * body.n_iter,
        random_source=_random_source(body),
        eta_noise_seed_delta=options.get(ENSD_OPTION, 0),
        subseed=None if body.subseed is None or body.subseed == -1 else body.subseed,
        subseed_strength=body.subseed_strength or 0.0,
        seed_resize_from=resize if min(resize) > 0 else None,
        emphasis=options.get(a1111.EMPHASIS_OPTION, a1111.EMPHASIS_DEFAULT),
        pad_conds=options.get(a1111.PAD_CONDS_OPTION, False),
    )


def _hires(body: A1111Txt2ImgRequest) -> HiresFix | None:
    """txt2img's hires fix: A1111's hr_* fields, with its meanings of 0 and "" (the first pass's)."""
    if not body.enable_hr:
        return None
    sampler_name = None if body.hr_sampler_name in (None, SAME_SAMPLER) else body.hr_sampler_name
    scheduler = None if body.hr_scheduler in (None, SAME_SCHEDULER) else body.hr_scheduler
    sampler, schedule_type = None, None
    if sampler_name is not None or scheduler is not None:
        first = body.sampler_name or body.sampler_index
        sampler, schedule_type = sampler_and_schedule(sampler_name or first, scheduler or body.scheduler)
    return HiresFix(
        scale=body.hr_scale,
        resize=(body.hr_resize_x, body.hr_resize_y),
        upscaler=body.hr_upscaler or "Latent",
        steps=body.hr_second_pass_steps or None,
        strength=HIRES_API_STRENGTH if body.denoising_strength is None else body.denoising_strength,
        prompt=body.hr_prompt or None,
        negative_prompt=body.hr_negative_prompt or None,
        sampler=sampler,
        schedule_type=schedule_type,
    )


async def _response(
    body: A1111Txt2ImgRequest, images: list[GeneratedImage], interrupted: bool
) -> A1111ImagesResponse:
    made = [item.settings for item in images]
    first = made[0]
    label, schedule = a1111_names(first.sampler, first.schedule_type)
    info = {
        "prompt": first.prompt,
        "all_prompts": [settings.prompt for settings in made],
        "negative_prompt": first.negative_prompt,
        "all_negative_prompts": [settings.negative_prompt for settings in made],
        "seed": first.seed,
        "all_seeds": [settings.seed for settings in made],
        "subseed": -1 if first.subseed is None else first.subseed,
        "all_subseeds": [-1 if settings.subseed is None else settings.subseed for settings in made],
        "subseed_strength": first.subseed_strength,
        "seed_resize_from_w": first.seed_resize_from[0] if first.seed_resize_from else -1,
        "seed_resize_from_h": first.seed_resize_from[1] if first.seed_resize_from else -1,
        "width": first.width,
        "height": first.height,
        "sampler_name": label,
        "scheduler": schedule,
        "cfg_scale": first.guidance_scale,
        "steps": first.steps,
        "batch_size": body.batch_size,
        "n_iter": body.n_iter,
        "denoising_strength": first.strength if first.hires is None else first.hires.strength,
        "sd_model_name": first.model,
        "infotexts": [format_parameters(settings) for settings in made],
        "interrupted": interrupted,
        "index_of_first_image": 0,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
    }
    return A1111ImagesResponse(
        images=await pngs_base64(images),
        parameters=body.model_dump(exclude={"init_images", "mask"}),
        info=json.dumps(info),
    )


@router.post("/txt2img")
async def txt2img(body: A1111Txt2ImgRequest, request: Request, models: ServedModels) -> A1111ImagesResponse:
    settings = _settings(body).but(hires=_hires(body))
    images, interrupted = await run_job(request, models, _model(body), settings)
    return await _response(body, images, interrupted)


@router.post("/img2img")
async def img2img(body: A1111Img2ImgRequest, request: Request, models: ServedModels) -> A1111ImagesResponse:
    model = _model(body)
    limit = models.get(model).pipeline.limits.max_init_pixels
    init_image = await image_from_base64(body.init_images[0], "init_images[0]", limit)
    settings = _settings(body).but(init_image=init_image, strength=body.denoising_strength)
    if body.mask is not None:
        mask = await image_from_base64(body.mask, "mask", limit, "mask")
        if body.inpainting_mask_invert:
            mask = await inverted_mask(mask, mask_channel)
        settings = settings.but(mask=mask, mask_blur=body.mask_blur)
    images, interrupted = await run_job(request, models, model, settings)
    return await _response(body, images, interrupted)


@router.get("/progress")
async def progress(models: ServedModels) -> A1111Progress:
    """The running job of the current model (A1111 runs one at a time); zeros when it is idle."""
    worker = models.get(None)
    job = worker.running
    done = job.progress if job is not None else None
    fraction = done.fraction if done is not None else 0.0
    elapsed = time.perf_counter() - job.started if job is not None and job.started is not None else 0.0
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    state = A1111State(
        interrupted=bool(job and job.interrupted),
        job=f"{worker.name}" if job is not None else "",
        job_count=models.job_count(),
        job_timestamp=time.strftime("%Y%m%d%H%M%S"),
        job_no=done.image if done is not None else 0,
        sampling_step=done.step if done is not None else 0,
        sampling_steps=done.steps if done is not None else 0,
    )
    return A1111Progress(progress=fraction, eta_relative=eta, state=state)


@router.post("/interrupt")
async def interrupt(models: ServedModels) -> dict:
    """Stop the running jobs before their next UNet pass; each answers with the images made so far."""
    models.interrupt()
    return {}


@router.get("/sd-models")
async def sd_models(models: ServedModels) -> list[A1111Model]:
    return [
        # The folder's name, never its path: where the server keeps its files is no client's business.
        A1111Model(title=name, model_name=name, filename=name)
        for name in models.workers
    ]


@router.get("/samplers")
async def samplers() -> list[A1111Sampler]:
    return [A1111Sampler(**sampler) for sampler in a1111_samplers()]


@router.get("/schedulers")
async def schedulers() -> list[A1111Scheduler]:
    return [A1111Scheduler(**scheduler) for scheduler in a1111_schedulers()]


@router.get("/options")
async def get_options(models: ServedModels) -> dict[str, Any]:
    return {CHECKPOINT_OPTION: models.current, "samples_format": "png"}


@router.post("/options")
async def set_options(models: ServedModels, options: Annotated[dict[str, Any], Body()]) -> None:
    """Switch `sd_model_checkpoint` among the served folders; other options are accepted and ignored."""
    checkpoint = options.get(CHECKPOINT_OPTION)
    if checkpoint is not None:
        if not isinstance(checkpoint, str):
            raise SettingsError(f"{CHECKPOINT_OPTION} must be a model title (GET /sdapi/v1/sd-models)")
        models.select(checkpoint)
