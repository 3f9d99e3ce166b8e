r"""Draw the README's grid: one prompt per column, one model folder per row (each at its own default
settings, with the seconds per picture it took), the prompt above each column.

    .venv/bin/python scripts/make_grid.py docs/tiny-shapes-grid.png \
        exported/tiny-shapes exported/tiny-shapes-lcm
"""

import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

from sdrun.pipeline import Pipeline

PROMPTS = [
    "a large red circle on a blue background",
    "a small yellow triangle on a black background",
    "a large white square on a green background",
    "a small blue circle on a yellow background",
    "a large green triangle on a white background",
    "a small black square on a red background",
    "a large blue triangle on a yellow background",
    "a small red square on a white background",
]
CELL = 128
CAPTION = 34
LABEL = 150


def caption_lines(prompt: str) -> list[str]:
    """Two short lines: the shape, then the background."""
    shape, background = prompt.split(" on ")
    return [shape, "on " + background]


def main(out: Path, models: list[Path], seed: int = 1) -> None:
    grid = Image.new("RGB", (LABEL + len(PROMPTS) * CELL, CAPTION + len(models) * CELL), "white")
    draw = ImageDraw.Draw(grid)
    for column, prompt in enumerate(PROMPTS):
        for line_number, line in enumerate(caption_lines(prompt)):
            draw.text((LABEL + column * CELL + 4, 3 + 15 * line_number), line, fill="black")
    for row, model in enumerate(models):
        pipeline = Pipeline.load(model, provider="cpu")
        pipeline.generate(PROMPTS[0], seed=seed)  # warm
        started = time.perf_counter()
        images = [
            pipeline.generate(prompt, seed=seed + index).images[0] for index, prompt in enumerate(PROMPTS)
        ]
        seconds = (time.perf_counter() - started) / len(PROMPTS)
        defaults = pipeline.defaults
        y = CAPTION + row * CELL
        label = [
            model.name,
            f"{defaults.sampler}, {defaults.steps} steps",
            f"guidance {defaults.guidance_scale:g}",
            f"{pipeline.vae} VAE decoder",
            f"{seconds * 1000:.0f} ms a picture",
        ]
        for line_number, line in enumerate(label):
            draw.text((4, y + 8 + 15 * line_number), line, fill="black")
        for column, image in enumerate(images):
            grid.paste(
                image.resize((CELL - 8, CELL - 8), Image.Resampling.NEAREST),
                (LABEL + column * CELL + 4, y + 4),
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(f"Wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(arg) for arg in sys.argv[2:]])
