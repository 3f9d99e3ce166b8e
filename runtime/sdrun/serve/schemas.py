"""Request and response bodies of the two APIs, validated once (pydantic) before a route runs.

JSON bodies are strict (a number is not a string, a bool is not a number) and ignore fields they do not
know, as clients of both APIs send many (OpenAI's quality and style, A1111's restore_faces, ...). Fields a
request leaves out are None here and take the model folder's generation defaults in the library, so the
same prompt and seed give the same picture through either API, the CLI and the library (the A1111 routes with
the web UI's default random source, "gpu": sdrun.serve.a1111_api).
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sdrun.inpaint import DEFAULT_MASK_BLUR
from sdrun.limits import MAX_GUIDANCE, MAX_PROMPT_CHARACTERS
from sdrun.serve.config import MAX_IMAGES_PER_REQUEST, MAX_STEPS_PER_REQUEST
from sdrun.settings import MAX_SEED  # one seed range for every adapter

MAX_SIDE = 8192  # the pixel limit (sdrun.limits) bounds the area; this only bounds each number


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class OpenAIHires(_Strict):
    """ours: AUTOMATIC1111's hires fix (sdrun.settings.HiresFix; the library checks the values)."""

    scale: float = 2.0
    resize: list[int] | None = Field(None, min_length=2, max_length=2, description="[width, height]")
    upscaler: str = Field("Latent", max_length=60)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS_PER_REQUEST, description="null: the first pass's")
    strength: float = 0.7
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARACTERS, description="null: the prompt")
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARACTERS)
    sampler: str | None = Field(None, max_length=60, description="null: the first pass's")


class OpenAISettings(_Strict):
    """The fields of both OpenAI requests: OpenAI's, then ours (which the openai client sends as
    `extra_body`)."""

    prompt: str = Field(max_length=MAX_PROMPT_CHARACTERS)
    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_IMAGES_PER_REQUEST)
    size: str | None = Field(None, max_length=40, description='"WIDTHxHEIGHT" or "auto" (the model\'s)')
    response_format: Literal["b64_json", "url"] | None = None
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARACTERS)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS_PER_REQUEST)
    guidance_scale: float | None = Field(None, ge=-MAX_GUIDANCE, le=MAX_GUIDANCE)
    sampler: str | None = Field(None, max_length=60, description="sdrun's name or A1111's label")
    eta: float | None = Field(None, description="ours: the sampler's noise (ddim, tcd)")
    hires: OpenAIHires | None = Field(None, description="ours: a hires fix (generations only)")


class OpenAIGenerationRequest(OpenAISettings):
    """POST /v1/images/generations."""


class OpenAIEditRequest(OpenAISettings):
    """POST /v1/images/edits: the form fields besides the image and the mask. Forms carry text, so numbers
    are parsed."""

    model_config = ConfigDict(strict=False, extra="ignore")
    strength: float | None = Field(None, ge=0.0, le=1.0)
    mask_blur: int = Field(DEFAULT_MASK_BLUR, description="ours: pixels; the library checks the range")


class OpenAIImage(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class OpenAIImagesResponse(BaseModel):
    created: int
    data: list[OpenAIImage]


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sdrun"


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class A1111Txt2ImgRequest(_Strict):
    """POST /sdapi/v1/txt2img (the fields sdrun uses; A1111's others are accepted and ignored)."""

    prompt: str = Field(max_length=MAX_PROMPT_CHARACTERS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARACTERS)
    seed: int | None = Field(-1, ge=-1, le=MAX_SEED, description="-1: random")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS_PER_REQUEST)
    cfg_scale: float | None = Field(None, ge=-MAX_GUIDANCE, le=MAX_GUIDANCE)
    width: int | None = Field(None, ge=1, le=MAX_SIDE)
    height: int | None = Field(None, ge=1, le=MAX_SIDE)
    sampler_name: str | None = Field(None, max_length=60)
    sampler_index: str | None = Field(None, max_length=60, description="older clients' sampler_name")
    scheduler: str | None = Field(None, max_length=40)
    eta: float | None = Field(None, description="A1111's: DDIM's eta (its Eta DDIM), TCD's gamma")
    batch_size: int = Field(1, ge=1, le=MAX_IMAGES_PER_REQUEST)
    n_iter: int = Field(1, ge=1, le=MAX_IMAGES_PER_REQUEST)
    subseed: int | None = Field(-1, ge=-1, le=MAX_SEED, description="variation seed; -1: random")
    subseed_strength: float | None = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_w: int | None = Field(-1, ge=-1, le=MAX_SIDE, description="<= 0: off")
    seed_resize_from_h: int | None = Field(-1, ge=-1, le=MAX_SIDE, description="<= 0: off")
    override_settings: dict[str, Any] | None = Field(
        None, description="sd_model_checkpoint, randn_source (GPU, CPU, NV) and eta_noise_seed_delta are read"
    )
    override_settings: dict[str, Any] | None = None
    # The hires fix (txt2img only; sdrun.hires). A1111's names and defaults; its denoising_strength is
    # the second pass's here.
    enable_hr: bool = False
    hr_scale: float = Field(2.0, ge=-MAX_SIDE, le=MAX_SIDE, description="the library checks the range")
    hr_resize_x: int = Field(0, ge=0, le=MAX_SIDE, description="0: from hr_scale or the aspect")
    hr_resize_y: int = Field(0, ge=0, le=MAX_SIDE)
    hr_upscaler: str | None = Field(None, max_length=60, description="null: Latent")
    hr_second_pass_steps: int = Field(0, ge=0, le=MAX_STEPS_PER_REQUEST, description="0: steps")
    denoising_strength: float | None = Field(None, ge=0.0, le=1.0, description="null: 0.75, A1111's")
    hr_prompt: str = Field("", max_length=MAX_PROMPT_CHARACTERS, description='"": the prompt')
    hr_negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARACTERS)
    hr_sampler_name: str | None = Field(None, max_length=60, description="null: sampler_name")
    hr_scheduler: str | None = Field(None, max_length=40, description="null: scheduler")


class A1111Img2ImgRequest(A1111Txt2ImgRequest):
    """POST /sdapi/v1/img2img: one init image, base64 (a data URL too), and an inpainting mask (white =
    repaint). A1111's inpainting_fill and inpaint_full_res are ignored (docs/api.md says why)."""

    init_images: list[str] = Field(min_length=1, max_length=1)
    denoising_strength: float | None = Field(None, ge=0.0, le=1.0)
    mask: str | None = None
    mask_blur: int | None = Field(None, description=f"null: {DEFAULT_MASK_BLUR}, A1111's default")
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="1: repaint the mask's black area")


class A1111ImagesResponse(BaseModel):
    images: list[str]
    parameters: dict[str, Any]
    info: str


class A1111State(BaseModel):
    skipped: bool = False
    interrupted: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class A1111Progress(BaseModel):
    progress: float
    eta_relative: float
    state: A1111State
    current_image: str | None = None
    textinfo: str | None = None


class A1111Model(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class A1111Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class A1111Scheduler(BaseModel):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float
    need_inner_model: bool
