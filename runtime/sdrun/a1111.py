"""AUTOMATIC1111's vocabulary, as its web UI and API spell it: schedule types, the scheduler names of its
API, and the keys of its infotext (the `parameters` text of its PNGs, sdrun.infotext). Users bring A1111
prompts, PNG infotexts and API bodies, so these words are a contract: every adapter (the infotext, the A1111
routes, the CLI's --from-png) reads them from here. Which sdrun sampler each sampler label and schedule type
stand for is a column of the sampler table (sdrun.samplers.SAMPLER_TABLE).
"""

import re

# Schedule types (the infotext's "Schedule type", the API's `scheduler` by its label).
UNIFORM = "Uniform"
KARRAS = "Karras"
# The web UI's "sgm_uniform" schedule: evenly spaced timesteps from the top that leave out the bottom one,
# which is the "trailing" spacing of the Hyper-SD and turbo samplers up to fractions of a timestep.
SGM_UNIFORM = "SGM Uniform"
EXPONENTIAL = "Exponential"
SIMPLE = "Simple"
NORMAL = "Normal"
# Since web UI 1.9, each sampler's own default schedule (for DPM++ 2M, Karras).
AUTOMATIC = "Automatic"
# The API's scheduler names -> schedule types.
SCHEDULER_NAMES = {
    "automatic": AUTOMATIC,
    "uniform": UNIFORM,
    "karras": KARRAS,
    "sgm_uniform": SGM_UNIFORM,
    "exponential": EXPONENTIAL,
    "simple": SIMPLE,
    "normal": NORMAL,
}

# The infotext: the PNG text chunk that holds it, the line that starts the negative prompt, and its keys.
PARAMETERS_CHUNK = "parameters"
NEGATIVE_PREFIX = "Negative prompt:"
STEPS = "Steps"
SAMPLER = "Sampler"
SCHEDULE_TYPE = "Schedule type"
CFG_SCALE = "CFG scale"
SEED = "Seed"
SIZE = "Size"
# The checkpoint's short hash (A1111's `sd_models.model_hash` since web UI 1.1: the first SHORT_HASH_LENGTH
# hex digits of the file's sha256; older texts carry an 8-digit hash of a slice of the file instead).
MODEL_HASH = "Model hash"
SHORT_HASH_LENGTH = 10
MODEL = "Model"
DENOISING_STRENGTH = "Denoising strength"
MASK_BLUR = "Mask blur"
CLIP_SKIP = "Clip skip"
# DDIM's eta has a key of its own; the other samplers' eta (A1111's ancestral ones) is "Eta".
ETA_DDIM = "Eta DDIM"
ETA = "Eta"
# The program that wrote the text. The web UI's reader turns on compatibility options for texts of its own
# versions before 1.7.0-225 (infotext_versions.backcompat: alphas_cumprod downcast to half precision, and
# before 1.6 the old prompt editing timelines and DDIM's unpadded conds), which sdrun does not draw; it
# ignores a version it cannot parse, such as sdrun's.
VERSION = "Version"
CURRENT_SINCE = (1, 7, 0, 225)
# "v1.6.0", "1.10.1", "v1.7.0-225-g1a2b3c4" (225 commits after), "v1.7.0-RC-16-g..." (before the release).
_WEB_UI_VERSION = re.compile(r"v?([0-9]{1,4})\.([0-9]{1,4})\.([0-9]{1,4})(?:-([0-9]{1,6}|RC|rc)(?:-.*)?)?")


def drawn_before_current(version: str | None) -> bool:
    """Whether a text of this Version was drawn by a web UI before CURRENT_SINCE, whose pictures the web UI
    makes again only with its compatibility options; False for any other writer."""
    match = _WEB_UI_VERSION.fullmatch(version or "")
    if match is None:
        return False
    major, minor, micro, after = match.groups()
    commits = -1 if after in ("RC", "rc") else int(after or 0)
    return (int(major), int(minor), int(micro), commits) < CURRENT_SINCE


def model_hash(checkpoint_sha256: str | None) -> str:
    """The "Model hash" the web UI writes for a checkpoint file of this sha256 digest ("" for none)."""
    return (checkpoint_sha256 or "")[:SHORT_HASH_LENGTH]
# The random source and the seed features (sdrun.draws). The web UI writes "RNG" only when its source is not
# its default, GPU, so a text without it means GPU; its values are its option's (RNG_NAMES).
RNG = "RNG"
ENSD = "ENSD"
VARIATION_SEED = "Variation seed"
VARIATION_SEED_STRENGTH = "Variation seed strength"
SEED_RESIZE_FROM = "Seed resize from"
# The web UI's `randn_source` values <-> sdrun's source names (sdrun.random_sources); "numpy" is sdrun's own
# and written as it is.
RNG_NAMES = {"GPU": "gpu", "CPU": "cpu", "NV": "nv"}
RNG_DEFAULT = "GPU"
# Emphasis modes (the infotext's "Emphasis", written when not the default "Original"; the API's
# override_settings `emphasis`), and "Pad conds" (written when on; the API's `pad_cond_uncond`).
EMPHASIS = "Emphasis"
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
EMPHASIS_DEFAULT = "Original"
PAD_CONDS = "Pad conds"
# Their names among the web UI's options (its API's override_settings).
EMPHASIS_OPTION = "emphasis"
PAD_CONDS_OPTION = "pad_cond_uncond"

# Hires fix (txt2img's second pass). "Denoising strength" is its strength on txt2img; Size stays the first
# pass's, and the target size is "Hires upscale" (a scale) or "Hires resize" (WIDTHxHEIGHT, 0 for auto).
HIRES_UPSCALE = "Hires upscale"
HIRES_RESIZE = "Hires resize"
HIRES_STEPS = "Hires steps"
HIRES_UPSCALER = "Hires upscaler"
HIRES_PROMPT = "Hires prompt"
HIRES_NEGATIVE_PROMPT = "Hires negative prompt"
HIRES_SAMPLER = "Hires sampler"
HIRES_SCHEDULE_TYPE = "Hires schedule type"
# Hires upscalers that resize the latents (shared.latent_upscale_modes): torch.nn.functional.interpolate's
# mode and antialias for each; "Latent" is the API's default when hr_upscaler is left out.
LATENT_UPSCALERS = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# Hires upscalers that resize the decoded picture with PIL (modules/upscaler.py; the model upscalers, ESRGAN
# and the like, are not run by sdrun).
PIXEL_UPSCALERS = ("None", "Lanczos", "Nearest")
