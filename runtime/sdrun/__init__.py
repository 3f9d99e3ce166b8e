"""sdrun: Stable Diffusion on onnxruntime and numpy alone (no torch).

    from sdrun import Pipeline

    with Pipeline.load("exported/tiny-shapes") as pipe:
        result = pipe.generate("a red cube", seed=1)
        result.images[0].save("cube.png")

Every error sdrun reports is an `SdrunError` (one line, with the fix); see sdrun.errors for the kinds.
"""

from sdrun.errors import GraphOutputError, ModelFolderError, ProviderError, SdrunError, SettingsError
from sdrun.limits import Limits
from sdrun.memory import MemoryPolicy
from sdrun.pipeline import Pipeline
from sdrun.progress import Progress
from sdrun.prompt_syntax import ExtraNetworkWarning
from sdrun.request import GenerationRequest, NegativePromptIgnoredWarning
from sdrun.results import GeneratedImage, Result
from sdrun.samplers import SAMPLERS
from sdrun.settings import GenerationSettings, ImageSettings
from sdrun.stopping import GenerationCancelled, StopSignal

__all__ = [
    "SAMPLERS",
    "ExtraNetworkWarning",
    "GeneratedImage",
    "GenerationCancelled",
    "GenerationRequest",
    "GenerationSettings",
    "GraphOutputError",
    "ImageSettings",
    "Limits",
    "MemoryPolicy",
    "ModelFolderError",
    "NegativePromptIgnoredWarning",
    "Pipeline",
    "Progress",
    "ProviderError",
    "Result",
    "SdrunError",
    "SettingsError",
    "StopSignal",
]
