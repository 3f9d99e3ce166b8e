"""The OpenAI Images API (https://platform.openai.com/docs/api-reference/images) over the library: the
official `openai` client works unchanged. Images come back as `b64_json` PNGs carrying their settings;
`response_format` "url" is refused (this server keeps no images). Our own fields (seed, steps,
guidance_scale, sampler, negative_prompt, and strength and mask_blur for edits) travel as the client's
`extra_body`.

An edit's `mask` means what it means to OpenAI: its fully transparent pixels (alpha 0) mark what to repaint,
its opaque ones what to keep. The library reads a mask's alpha the other way round (A1111's rule: white,
or opaque, = repaint), so the route hands it the mask's alpha channel inverted; a mask without
transparency has no such meaning and is refused.
"""

import re
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from PIL import Image
from starlette.datastructures import UploadFile

from sdrun.errors import SettingsError
from sdrun.images import has_alpha
from sdrun.results import GeneratedImage
from sdrun.serve.dependencies import run_job, served_models
from sdrun.serve.encoding import image_from_bytes, inverted_mask, pngs_base64
from sdrun.serve.jobs import Models
from sdrun.serve.samplers import sampler_and_schedule
from sdrun.serve.schemas import (
    OpenAIEditRequest,
    OpenAIGenerationRequest,
    OpenAIHires,
    OpenAIImage,
    OpenAIImagesResponse,
    OpenAIModel,
    OpenAIModelList,
    OpenAISettings,
)
from sdrun.settings import GenerationSettings, HiresFix

router = APIRouter(prefix="/v1")
ServedModels = Annotated[Models, Depends(served_models)]
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")
# The image fields of a multipart edit: "image", or "image[]" when the client sends a list.
_IMAGE_FIELDS = ("image", "image[]")
_MAX_FORM_FIELDS = 100


def _size(size: str | None) -> tuple[int | None, int | None]:
    if size is None or size == "auto":
        return None, None
    match = _SIZE.fullmatch(size)
    if match is None:
        raise SettingsError(f"size {size!r} is not WIDTHxHEIGHT (e.g. 512x512) or auto")
    return int(match.group(1)), int(match.group(2))


def _settings(body: OpenAISettings) -> GenerationSettings:
    """The body's settings; what it leaves out, the library takes from the model."""
    if body.response_format == "url":
        raise SettingsError(
            'response_format "url" is not served (this server keeps no images): ask for b64_json'
        )
    width, height = _size(body.size)
    sampler, schedule_type = sampler_and_schedule(body.sampler)  # an older label names its schedule
    return GenerationSettings(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        num_images=body.n,
        width=width,
        height=height,
        seed=body.seed,
        steps=body.steps,
        guidance_scale=body.guidance_scale,
        sampler=sampler,
        schedule_type=schedule_type,
        eta=body.eta,
        hires=None if body.hires is None else _hires(body.hires),
    )


def _hires(fields: OpenAIHires) -> HiresFix:
    sampler, schedule_type = sampler_and_schedule(fields.sampler)
    return HiresFix(
        scale=fields.scale,
        resize=None if fields.resize is None else (fields.resize[0], fields.resize[1]),
        upscaler=fields.upscaler,
        steps=fields.steps,
        strength=fields.strength,
        prompt=fields.prompt,
        negative_prompt=fields.negative_prompt,
        sampler=sampler,
        schedule_type=schedule_type,
    )


async def _response(images: list[GeneratedImage]) -> OpenAIImagesResponse:
    pngs = await pngs_base64(images)
    return OpenAIImagesResponse(created=int(time.time()), data=[OpenAIImage(b64_json=png) for png in pngs])


@router.post("/images/generations")
async def generations(
    body: OpenAIGenerationRequest, request: Request, models: ServedModels
) -> OpenAIImagesResponse:
    images, _ = await run_job(request, models, body.model, _settings(body))
    return await _response(images)


def _alpha(image: Image.Image) -> Image.Image:
    return image.convert("RGBA").getchannel("A")


async def _repaint_where_transparent(mask: Image.Image) -> Image.Image:
    """OpenAI's mask (transparent = edit) as the library's (white = repaint): its alpha channel, inverted."""
    if not has_alpha(mask):
        raise SettingsError(
            "the mask has no transparency: OpenAI's edits repaint where the mask is transparent (alpha 0), "
            "so send a PNG with an alpha channel (RGBA)"
        )
    return await inverted_mask(mask, _alpha)


@router.post("/images/edits")
async def edits(request: Request, models: ServedModels) -> OpenAIImagesResponse:
    """Image-to-image from a multipart form, as the openai client sends `images.edit`; inpainting with a
    `mask` file too."""
    async with request.form(max_files=len(_IMAGE_FIELDS) + 1, max_fields=_MAX_FORM_FIELDS) as form:
        uploads = [item for name in _IMAGE_FIELDS for item in form.getlist(name)]
        if len(uploads) != 1 or not isinstance(uploads[0], UploadFile):
            raise SettingsError(f"send one image file in the field `image` (got {len(uploads)})")
        mask_upload = form.get("mask")
        if mask_upload is not None and not isinstance(mask_upload, UploadFile):
            raise SettingsError("send the mask as a PNG file in the field `mask`, not as text")
        body = OpenAIEditRequest.model_validate(
            {key: value for key, value in form.items() if isinstance(value, str)}
        )
        limit = models.get(body.model).pipeline.limits.max_init_pixels
        image = await image_from_bytes(await uploads[0].read(), "image", limit)
        settings = _settings(body).but(init_image=image, strength=body.strength)
        if mask_upload is not None:
            mask = await image_from_bytes(await mask_upload.read(), "mask", limit, "mask")
            settings = settings.but(mask=await _repaint_where_transparent(mask), mask_blur=body.mask_blur)
    images, _ = await run_job(request, models, body.model, settings)
    return await _response(images)


@router.get("/models")
async def list_models(models: ServedModels) -> OpenAIModelList:
    created = int(time.time())
    return OpenAIModelList(data=[OpenAIModel(id=name, created=created) for name in models.workers])
