"""Generation settings used where the caller gives none: the model folder's own, else SD 1.x's usual ones.

A model can ship the settings it is meant to be run at (a tiny model over-saturates at SD's guidance
of 7.5), under the manifest key `generation_defaults`, e.g. {"sampler": "dpmpp_2m_karras", "steps": 20,
"guidance_scale": 4.0}. The values come from a folder that may be a stranger's: each is checked here.
"""

from dataclasses import dataclass, fields
from typing import Any

from sdrun.config_values import real_number, whole_number
from sdrun.errors import ModelFolderError
from sdrun.folder_layout import GENERATION_DEFAULTS_KEY
from sdrun.limits import MAX_GUIDANCE, MAX_STEPS
from sdrun.samplers import SAMPLERS

# "tiny": the folder's TAESD (vae_decoder_tiny), when it has one, in place of the full VAE.
VAE_CHOICES = ("full", "tiny")
_WHERE = f"manifest {GENERATION_DEFAULTS_KEY}"


@dataclass(frozen=True)
class GenerationDefaults:
    steps: int = 20
    guidance_scale: float = 7.5
    sampler: str = "euler_a"
    strength: float = 0.8
    vae: str = "full"

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> "GenerationDefaults":
        given = manifest.get(GENERATION_DEFAULTS_KEY) or {}
        names = [field.name for field in fields(cls)]
        if not isinstance(given, dict) or set(given) - set(names):
            raise ModelFolderError(
                f"{_WHERE} must map some of {names} to values, not {repr(given)[:80]}; "
                "export the model folder again"
            )
        sampler = given.get("sampler", cls.sampler)
        if sampler not in SAMPLERS:
            raise ModelFolderError(
                f"{_WHERE} names the sampler {repr(sampler)[:40]}, which sdrun does not have; "
                "export the model folder again"
            )
        vae = given.get("vae", cls.vae)
        if vae not in VAE_CHOICES:
            raise ModelFolderError(
                f"{_WHERE} names the VAE {repr(vae)[:40]}, not one of {', '.join(VAE_CHOICES)}; "
                "export the model folder again"
            )
        return cls(
            steps=whole_number(given, "steps", _WHERE, 1, MAX_STEPS, cls.steps),
            guidance_scale=real_number(
                given, "guidance_scale", _WHERE, -MAX_GUIDANCE, MAX_GUIDANCE, cls.guidance_scale
            ),
            sampler=sampler,
            strength=real_number(given, "strength", _WHERE, 0.0, 1.0, cls.strength, open_low=True),
            vae=vae,
        )
