"""Generation settings used where the caller gives none: the model folder's own, else SD 1.x's usual ones.

A model can ship the settings it is meant to be run at (a tiny model over-saturates at SD's guidance
of 7.5), under the manifest key `generation_defaults`, e.g. {"sampler": "dpmpp_2m_karras", "steps": 20,
"guidance_scale": 4.0}.
"""

from dataclasses import dataclass, fields, replace
from typing import Any

from sdrun.errors import ModelFolderError

MANIFEST_KEY = "generation_defaults"


@dataclass(frozen=True)
class GenerationDefaults:
    steps: int = 20
    guidance_scale: float = 7.5
    sampler: str = "euler_a"
    strength: float = 0.8

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> "GenerationDefaults":
        given = manifest.get(MANIFEST_KEY) or {}
        convert = {field.name: field.type for field in fields(cls)}  # int, float or str
        if not isinstance(given, dict) or set(given) - set(convert):
            raise ModelFolderError(
                f"manifest {MANIFEST_KEY} must map some of {sorted(convert)} to values, not {given!r}; "
                "export the model folder again"
            )
        try:
            return replace(cls(), **{name: convert[name](value) for name, value in given.items()})
        except (TypeError, ValueError):
            raise ModelFolderError(f"manifest {MANIFEST_KEY} has a wrongly typed value: {given!r}") from None
