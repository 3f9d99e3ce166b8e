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

# Host names the server answers to besides IP addresses (sdrun.serve.browser_guard): a web page can make
# a browser send any name it controls (DNS rebinding), never an address, so names are what is checked.
DEFAULT_ALLOWED_HOSTS = ("localhost",)
# Slow clients (sdrun.serve.server): a request's headers must arrive within HEADER_TIMEOUT_SECONDS of the
# connection (or of its previous answer), and its body within BODY_TIMEOUT_SECONDS of its headers: a
# 20 MB body needs about 2.7 Mbit/s. At most MAX_CONNECTIONS are open at once (a connection beyond them
# is closed at once), well under the usual 1,024 open files and far above what one model's queue serves;
# an idle keep-alive connection is closed after KEEP_ALIVE_SECONDS (uvicorn's default).
HEADER_TIMEOUT_SECONDS = 10.0
# A request's headers are at most this many bytes (h11's own default, said here): 400 beyond.
MAX_HEADER_BYTES = 16 * 1024
BODY_TIMEOUT_SECONDS = 60.0
MAX_CONNECTIONS = 256
KEEP_ALIVE_SECONDS = 5
# On SIGTERM the waiting jobs are answered 503 at once and the running one has this long to finish; then
# it is answered 503 too and stopped at its next sampler step.
SHUTDOWN_GRACE_SECONDS = 5.0


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
    route but GET /health as `Authorization: Bearer KEY`. `allowed_hosts` are the names a request's Host
    may give (addresses always pass; "*" lets any name through), `cors_origins` the web origins whose
    pages may call the API (none by default: CORS off). The timeouts, `max_connections` and
    `shutdown_grace_seconds` are the uvicorn server's (sdrun.serve.server); under Ray Serve its proxy
    owns the connections.
    """

    folders: tuple[Path, ...]
    queue_depth: int = DEFAULT_QUEUE_DEPTH
    api_key: str | None = None
    provider: str = "auto"
    low_memory: bool = False
    verify_checksums: bool = True
    limits: Limits = field(default_factory=serve_limits)
    max_body_bytes: int = MAX_BODY_BYTES
    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    cors_origins: tuple[str, ...] = ()
    header_timeout_seconds: float = HEADER_TIMEOUT_SECONDS
    body_timeout_seconds: float = BODY_TIMEOUT_SECONDS
    max_connections: int = MAX_CONNECTIONS
    shutdown_grace_seconds: float = SHUTDOWN_GRACE_SECONDS
