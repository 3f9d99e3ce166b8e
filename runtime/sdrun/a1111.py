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
MODEL = "Model"
DENOISING_STRENGTH = "Denoising strength"
MASK_BLUR = "Mask blur"
CLIP_SKIP = "Clip skip"
# DDIM's eta has a key of its own; the other samplers' eta (A1111's ancestral ones) is "Eta".
ETA_DDIM = "Eta DDIM"
ETA = "Eta"
