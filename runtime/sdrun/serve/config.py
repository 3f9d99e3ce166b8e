"""What one `sdrun serve` process serves, and the bounds it puts on a request."""

from dataclasses import dataclass, field
from pathlib import Path

from sdrun.limits import DEFAULT_MAX_PIXELS, Limits

# A request asks for at most this many images (OpenAI's n, A1111's batch_size x n_iter) and steps:
# generous for SD 1.x, and small enough that one request cannot hold a queue for hours.
MAX_IMAGES_PER_REQUEST = 16
MAX_STEPS_PER_REQUEST = 150
# An init image's pixels before decoding (4096x4096); a base64 PNG of a 2048x2048 photo is about 8 MB.
MAX_INIT_PIXELS = 4096 * 4096
MAX_BODY_BYTES = 20 * 1024 * 1024
# The work of one request, in UNet passes at 512x512 (sdrun.limits): 16 images of 50 guided steps at
# 512x512; or one 1024x1024 image of 129 guided steps, or one 2048x2048 image of 13. That is 800 guided
# steps at 512x512: about an hour on the 2-core CPU of BENCHMARKS.md (4.2-4.8 s a step), 13 s on an H200
# (16 ms a step); a server on slower hardware, or with more clients, sets a lower --max-work.
DEFAULT_MAX_WORK = 1600.0
DEFAULT_QUEUE_DEPTH = 4


def serve_limits(max_pixels: int = DEFAULT_MAX_PIXELS, max_work: float = DEFAULT_MAX_WORK) -> Limits:
    """The pipeline limits of a served model: the library checks them with the settings, before any work."""
    return Limits(
        max_pixels=max_pixels,
        max_init_pixels=MAX_INIT_PIXELS,
        max_images=MAX_IMAGES_PER_REQUEST,
        max_steps=MAX_STEPS_PER_REQUEST,
        max_work=max_work,
    )


@dataclass(frozen=True)
class ServeConfig:
    """Everything a server (or each Ray Serve replica) needs to load its models: plain, picklable values.

    `queue_depth` jobs may wait per model besides the one running; `api_key`, when set, is asked of every
    route but GET /health as `Authorization: Bearer KEY`.
    """

    folders: tuple[Path, ...]
    queue_depth: int = DEFAULT_QUEUE_DEPTH
    api_key: str | None = None
    provider: str = "auto"
    low_memory: bool = False
    verify_checksums: bool = True
    limits: Limits = field(default_factory=serve_limits)
    max_body_bytes: int = MAX_BODY_BYTES
