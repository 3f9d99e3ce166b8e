"""Stopping a generation from another thread, within one network pass.

A step can be long (a guided step at 2048x2048 took 4.5 minutes on a CPU) and runs the UNet twice when the
guidance passes run one after the other; a tiled decode runs the decoder once per tile. So the pipeline
looks at its `StopSignal` before every UNet pass, every VAE pass and every tile, not only between steps.
"""

import threading
from dataclasses import dataclass, field

from sdrun.errors import SdrunError
from sdrun.samplers import SamplingStopped


class GenerationCancelled(SdrunError):
    """The generation was cancelled (its `StopSignal`) before it finished; nothing was made."""


@dataclass(frozen=True)
class StopSignal:
    """Set from any thread. `interrupt()` ends sampling before the next UNet pass: the image under way is
    decoded from the latents of its last finished step, and no later image starts (A1111's interrupt).
    `cancel()` abandons the call before the next UNet pass, VAE pass or tile: it raises GenerationCancelled
    (a client that left wants no picture)."""

    interrupted: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def interrupt(self) -> None:
        self.interrupted.set()

    def cancel(self) -> None:
        self.cancelled.set()

    def check(self) -> None:
        """Before a VAE pass or tile: GenerationCancelled once cancelled."""
        if self.cancelled.is_set():
            raise GenerationCancelled("the generation was cancelled")

    def before_unet_pass(self) -> None:
        """Before a UNet pass: GenerationCancelled once cancelled, SamplingStopped (which `sample` turns
        into the last finished step's latents) once interrupted."""
        self.check()
        if self.interrupted.is_set():
            raise SamplingStopped
