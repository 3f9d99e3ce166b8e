"""Bounds on what one generation may ask for, checked with the settings before any session runs.

Every number here is generous for Stable Diffusion 1.x and 2.x and small next to this machine kind's
memory; `Limits` is a parameter of the library (`Pipeline.load(limits=...)`) and `--max-pixels` of the CLI.

The work of one call (`max_work`) is counted in units of one UNet pass on a 64x64 latent (512x512 pixels
under SD's VAE): images x UNet passes (the steps that run, twice each with classifier-free guidance) x the
cost of one pass at the call's latent size. A pass costs a r + b r^2 for r latent pixels (relative to
64x64): the convolutions are linear in pixels, the self-attention of the highest-resolution blocks
quadratic in its tokens (one per latent pixel). b / a is fixed from SD 1.5's fp32 UNet on the CPU provider
(2 cores): a guided step took 0.93 s at 256x256 and 4.2-4.8 s at 512x512 (BENCHMARKS.md), and ~270 s at
2048x2048 (issue 26); a = 3.68 s and b = 0.83 s fit the last two and predict 0.97 s for the first.
This is a fixed proxy, not a timing taken when a folder loads: a timing would cost seconds of every start,
vary with the machine's load, and refuse the same request on one replica and not another; the folders
sdrun runs share SD's UNet shape, so what differs between requests (size, steps, images, guidance) is what
the proxy counts. The VAE decode (one per image, in tiles beyond 768x768) is left out: it is bounded by the
pixel and image limits.
"""

from dataclasses import dataclass

from sdrun.errors import SettingsError

# 4 megapixels: 2048x2048, sixteen times SD 1.x's 512x512 (a 2048x2048 decode in tiles takes ~1.5 GB).
DEFAULT_MAX_PIXELS = 2048 * 2048
# An init image (or mask) is refused above this many pixels before it is decoded (a 48-megapixel photo
# passes; a JPEG is decoded at a reduced scale). Decoding and converting one to 8-bit RGB (sdrun.images:
# PNG, JPEG or WebP only, converted in strips, a WebP counting twice) takes at most ~12 bytes per pixel of
# this limit, 600 MB at 50 megapixels: the sdrun process's peak over its 119 MB without one was 421 MB for
# a 7000x7000 16-bit grey PNG, 577 MB for an RGBA one, 589 MB for a 7071x7071 RGBA one turned by EXIF,
# and 495 MB for a 5000x5000 RGBA WebP turned by EXIF (before strips: 1.42 and 1.24 GB, and a
# MemoryError under the tests' 1.5 GiB of address space).
DEFAULT_MAX_INIT_PIXELS = 50_000_000
MAX_IMAGES = 1000
MAX_STEPS = 1000
# CLIP reads 77 tokens (about 300 characters); a prompt a hundred times longer is not a prompt.
MAX_PROMPT_CHARACTERS = 30_000
# A prompt's chunks of 75 tokens (sdrun.text_conditioning): the UNet's cross-attention grows with the
# context, 77 tokens a chunk; 32 chunks (2,464 tokens, some 10,000 characters) hold a 64x64-latent SD 1.x
# cross-attention's scores at 8 heads x 4096 x 2464 floats (320 MB) per pass.
MAX_PROMPT_CHUNKS = 32
MAX_GUIDANCE = 1000.0
# The latent pixels of one work unit, and the attention term's weight b / a at that size (see above).
WORK_UNIT_LATENT_PIXELS = 64 * 64
ATTENTION_WEIGHT = 0.22


def unet_pass_work(latent_pixels: int) -> float:
    """The work of one UNet pass (batch of one) on a latent of `latent_pixels`, in units of a 64x64 pass."""
    r = latent_pixels / WORK_UNIT_LATENT_PIXELS
    return r * (1.0 + ATTENTION_WEIGHT * r) / (1.0 + ATTENTION_WEIGHT)


@dataclass(frozen=True)
class Limits:
    """The most one `generate` call may ask: pixels per image, init-image pixels before decoding,
    images per call, steps, and work (UNet passes weighted by their size; None: unbounded)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_init_pixels: int = DEFAULT_MAX_INIT_PIXELS
    max_images: int = MAX_IMAGES
    max_steps: int = MAX_STEPS
    max_work: float | None = None

    def check_size(self, width: int, height: int) -> None:
        if width * height > self.max_pixels:
            raise SettingsError(
                f"{width}x{height} is {width * height:,} pixels, above the limit of {self.max_pixels:,}: "
                "ask for a smaller size (or raise the limit with --max-pixels)"
            )

    def check_counts(self, num_images: int, steps: int) -> None:
        if num_images > self.max_images:
            raise SettingsError(f"{num_images} images in one call is above the limit of {self.max_images}")
        if steps > self.max_steps:
            raise SettingsError(f"{steps} steps is above the limit of {self.max_steps}: use fewer steps")

    def check_work(
        self,
        num_images: int,
        steps_run: int,
        passes_per_step: int,
        width: int,
        height: int,
        factor: int,
        second_pass: tuple[int, int, int] | None = None,
    ) -> None:
        """Refuse a call whose UNet work (see the module's docstring) is above `max_work`, saying how many
        steps would fit; `factor` is the VAE's (image pixels per latent pixel, a side). `second_pass`
        (steps, width, height) is the hires fix's, counted too."""
        if self.max_work is None:
            return
        per_step = num_images * passes_per_step * unet_pass_work((width // factor) * (height // factor))
        work = per_step * steps_run
        hires = ""
        if second_pass is not None:
            hires_steps, hires_width, hires_height = second_pass
            pass_work = unet_pass_work((hires_width // factor) * (hires_height // factor))
            work += num_images * passes_per_step * pass_work * hires_steps
            hires = f" and {hires_steps} hires steps at {hires_width}x{hires_height}"
        if work <= self.max_work:
            return
        fitting = int(self.max_work // per_step)
        fitting_steps = fitting and not hires
        fewer_steps = f"at most {fitting} steps that run at this size and count, " if fitting_steps else ""
        raise SettingsError(
            f"{num_images} image(s) of {width}x{height} with {steps_run} steps{hires} of {passes_per_step} "
            f"UNet pass(es) is {work:,.0f} units of work, above the limit of {self.max_work:,.0f} (a unit is "
            f"one UNet pass at 512x512): ask for {fewer_steps}fewer images or a smaller size"
        )


DEFAULT_LIMITS = Limits()
