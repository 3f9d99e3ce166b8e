"""The OpenAI Images API (https://platform.openai.com/docs/api-reference/images) over the library: the
official `openai` client works unchanged. Images come back as `b64_json` PNGs carrying their settings;
`response_format` "url" is refused (this server keeps no images). Our own fields (seed, steps,
guidance_scale, sampler, negative_prompt, and strength for edits) travel as the client's `extra_body`.
"""

import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile

from sdrun.errors import SettingsError
from sdrun.pipeline import GeneratedImage
from sdrun.serve.dependencies import run_job, served_models
from sdrun.serve.encoding import image_from_bytes, png_base64
from sdrun.serve.jobs import Models
from sdrun.serve.samplers import sampler_for
from sdrun.serve.schemas import (
    OpenAIEditRequest,
    OpenAIGenerationRequest,
    OpenAIImage,
    OpenAIImagesResponse,
    OpenAIModel,
    OpenAIModelList,
    OpenAISettings,
)

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


def _settings(body: OpenAISettings) -> dict[str, Any]:
    """`generate_each` keyword arguments; what the body leaves out, the library takes from the model."""
    if body.response_format == "url":
        raise SettingsError(
            'response_format "url" is not served (this server keeps no images): ask for b64_json'
        )
    width, height = _size(body.size)
    return {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "num_images": body.n,
        "width": width,
        "height": height,
        "seed": body.seed,
        "steps": body.steps,
        "guidance_scale": body.guidance_scale,
        "sampler": sampler_for(body.sampler),
    }


def _response(images: list[GeneratedImage]) -> OpenAIImagesResponse:
    return OpenAIImagesResponse(
        created=int(time.time()),
        data=[OpenAIImage(b64_json=png_base64(made.image, made.settings)) for made in images],
    )


@router.post("/images/generations")
async def generations(
    body: OpenAIGenerationRequest, request: Request, models: ServedModels
) -> OpenAIImagesResponse:
    images, _ = await run_job(request, models, body.model, _settings(body))
    return _response(images)


@router.post("/images/edits")
async def edits(request: Request, models: ServedModels) -> OpenAIImagesResponse:
    """Image-to-image from a multipart form, as the openai client sends `images.edit` (no mask)."""
    async with request.form(max_files=len(_IMAGE_FIELDS) + 1, max_fields=_MAX_FORM_FIELDS) as form:
        uploads = [item for name in _IMAGE_FIELDS for item in form.getlist(name)]
        if len(uploads) != 1 or not isinstance(uploads[0], UploadFile):
            raise SettingsError(f"send one image file in the field `image` (got {len(uploads)})")
        if form.get("mask") is not None:
            raise SettingsError("masks (inpainting) are not supported: send the image without a mask")
        body = OpenAIEditRequest.model_validate(
            {key: value for key, value in form.items() if isinstance(value, str)}
        )
        worker = models.get(body.model)
        image = image_from_bytes(await uploads[0].read(), "image", worker.pipeline.limits.max_init_pixels)
    settings = {**_settings(body), "init_image": image, "strength": body.strength}
    images, _ = await run_job(request, models, body.model, settings)
    return _response(images)


@router.get("/models")
async def list_models(models: ServedModels) -> OpenAIModelList:
    created = int(time.time())
    return OpenAIModelList(data=[OpenAIModel(id=name, created=created) for name in models.workers])
