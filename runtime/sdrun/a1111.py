"""AUTOMATIC1111's vocabulary, as its web UI and API spell it: schedule types, the scheduler names of its
API, and the keys of its infotext (the `parameters` text of its PNGs, sdrun.infotext). Users bring A1111
prompts, PNG infotexts and API bodies, so these words are a contract: every adapter (the infotext, the A1111
routes, the CLI's --from-png) reads them from here. Which sdrun sampler each sampler label and schedule type
stand for is a column of the sampler table (sdrun.samplers.SAMPLER_TABLE).
"""

# Schedule types (the infotext's "Schedule type", the API's `scheduler` by its label).
UNIFORM = "Uniform"
KARRAS = "Karras"
# The web UI's "sgm_uniform" schedule: evenly spaced timesteps from the top that leave out the bottom one,
# which is the "trailing" spacing of the Hyper-SD and turbo samplers up to fractions of a timestep.
SGM_UNIFORM = "SGM Uniform"
# Since web UI 1.9, each sampler's own default schedule (for DPM++ 2M, Karras).
AUTOMATIC = "Automatic"
# The API's scheduler names -> schedule types.
SCHEDULER_NAMES = {
    "automatic": AUTOMATIC,
    "uniform": UNIFORM,
    "karras": KARRAS,
    "sgm_uniform": SGM_UNIFORM,
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
MODEL = "Model"
DENOISING_STRENGTH = "Denoising strength"
MASK_BLUR = "Mask blur"
CLIP_SKIP = "Clip skip"
# DDIM's eta has a key of its own; the other samplers' eta (A1111's ancestral ones) is "Eta".
ETA_DDIM = "Eta DDIM"
ETA = "Eta"

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
