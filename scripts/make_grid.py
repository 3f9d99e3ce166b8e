"""Draw the README's grid: one prompt per cell, the picture sdrun made for it below its caption.

    .venv/bin/python scripts/make_grid.py exported/tiny-shapes docs/tiny-shapes-grid.png
"""

import sys
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
CELL = 192
CAPTION = 34
COLUMNS = 4


def caption_lines(prompt: str) -> list[str]:
    """Two short lines: the shape, then the background."""
    shape, background = prompt.split(" on ")
    return [shape, "on " + background]


def main(model: Path, out: Path, seed: int = 1) -> None:
    pipeline = Pipeline.load(model, provider="cpu")
    rows = -(-len(PROMPTS) // COLUMNS)
    grid = Image.new("RGB", (COLUMNS * CELL, rows * (CELL + CAPTION)), "white")
    draw = ImageDraw.Draw(grid)
    for index, prompt in enumerate(PROMPTS):
        image = pipeline.generate(prompt, seed=seed + index).images[0]
        x, y = (index % COLUMNS) * CELL, (index // COLUMNS) * (CELL + CAPTION)
        for line_number, line in enumerate(caption_lines(prompt)):
            draw.text((x + 6, y + 3 + 15 * line_number), line, fill="black")
        grid.paste(image.resize((CELL - 8, CELL - 8), Image.Resampling.NEAREST), (x + 4, y + CAPTION))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(f"Wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
