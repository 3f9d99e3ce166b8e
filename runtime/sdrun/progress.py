"""Where a generation is, for a progress bar or a server's progress route: plain numbers, no arrays."""

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """After a sampler step: image `image` (from 0) of `images` has `step` of its `steps` steps done.

    Every image of one call runs the same number of steps (for image-to-image, the part of the schedule
    that `strength` keeps), so the totals over the call follow from these four numbers.
    """

    image: int
    images: int
    step: int
    steps: int

    @property
    def done(self) -> int:
        """Steps done over the whole call."""
        return self.image * self.steps + self.step

    @property
    def total(self) -> int:
        """Steps of the whole call."""
        return self.images * self.steps

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


# progress(Progress) after each sampler step; returning True stops the run, as the step callback does.
ProgressCallback = Callable[[Progress], bool | None]
