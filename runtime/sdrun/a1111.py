"""AUTOMATIC1111's vocabulary, as its web UI and API spell it: schedule types and the scheduler names of its
API. Users bring A1111 prompts, PNG infotexts and API bodies, so these words are a contract: every adapter
(PNG text, the A1111 routes, the CLI's --from-png) reads them from here. Which sdrun sampler each sampler
label and schedule type stand for is a column of the sampler table (sdrun.samplers.SAMPLER_TABLE).
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
