"""Horizontal bar charts drawn with PIL (matplotlib is not a dependency of this project)."""

from PIL import Image, ImageDraw, ImageFont

WIDTH = 560
ROW = 22
MARGIN = 10
LABEL_WIDTH = 190
PALETTE = ["#1b6ca8", "#3a9e5d", "#8f5bb5", "#d08a21", "#c0392b", "#6b7b8c", "#17a2b8", "#7f6a3a"]


def bar_panel(title: str, unit: str, bars: list[tuple[str, float | None, str]]) -> Image.Image:
    """One panel: a title, then per bar its label, a bar scaled to the largest value, and its value.

    `bars` holds (label, value, note); a None value is drawn as "not measured" with the note.
    """
    font = ImageFont.load_default()
    height = MARGIN * 3 + ROW * (len(bars) + 1)
    image = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, MARGIN), f"{title} ({unit})", fill="black", font=font)
    largest = max((value for _, value, _ in bars if value), default=1.0)
    room = WIDTH - LABEL_WIDTH - 2 * MARGIN - 80
    for index, (label, value, note) in enumerate(bars):
        top = MARGIN * 2 + ROW * (index + 1)
        draw.text((MARGIN, top + 4), label, fill="black", font=font)
        if value is None:
            draw.text((LABEL_WIDTH, top + 4), f"not measured {note}".strip(), fill="#777777", font=font)
            continue
        length = max(1, round(room * value / largest))
        color = PALETTE[index % len(PALETTE)]
        draw.rectangle((LABEL_WIDTH, top + 3, LABEL_WIDTH + length, top + ROW - 3), fill=color)
        draw.text((LABEL_WIDTH + length + 6, top + 4), f"{value:.3g} {note}".strip(), fill="black", font=font)
    return image


def grid(panels: list[list[Image.Image]], title: str) -> Image.Image:
    """Panels in rows and columns under one title line."""
    font = ImageFont.load_default()
    widths = [max(panel.width for panel in column) for column in zip(*panels, strict=True)]
    heights = [max(panel.height for panel in row) for row in panels]
    image = Image.new("RGB", (sum(widths), sum(heights) + 2 * MARGIN + ROW), "white")
    ImageDraw.Draw(image).text((MARGIN, MARGIN), title, fill="black", font=font)
    y = 2 * MARGIN + ROW
    for row, row_height in zip(panels, heights, strict=True):
        x = 0
        for panel, column_width in zip(row, widths, strict=True):
            image.paste(panel, (x, y))
            x += column_width
        y += row_height
    return image
