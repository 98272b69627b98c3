"""Draw detections on the picture: a box, label and score per detection, one color per class.

Sizes follow the image (a 300 px thumbnail and a 4000 px photo both stay readable) and the
label is kept inside the picture. The font is DejaVu Sans, which ships with matplotlib, so
the drawing looks the same on every machine without a system font.
"""

from __future__ import annotations

import colorsys
import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from object_detection.detections import Detection

_GOLDEN_RATIO = 0.618033988749895


def class_color(class_id: int) -> tuple[int, int, int]:
    """A bright color per class id; neighbouring ids get far-apart hues."""
    hue = (class_id * _GOLDEN_RATIO) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.8, 0.95)
    return round(red * 255), round(green * 255), round(blue * 255)


def line_width(width: int, height: int) -> int:
    return max(2, round(min(width, height) / 250))


def font_size(width: int, height: int) -> int:
    return max(10, round(min(width, height) * 0.028))


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont:
    # Found without importing matplotlib (200 ms): only its data folder is needed. Without
    # matplotlib, Pillow's own font (same look everywhere too, other glyphs).
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        return ImageFont.load_default(size)
    package = Path(next(iter(spec.submodule_search_locations)))
    path = package / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size)


def draw_detections(image: Image.Image, detections: Sequence[Detection]) -> Image.Image:
    """A copy of `image` (RGB) with the detections drawn; the best score is drawn last, on top."""
    canvas = image.convert("RGB")  # convert() always copies: the caller's image stays clean
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    stroke = line_width(width, height)
    font = _font(font_size(width, height))
    for detection in sorted(detections, key=lambda d: d.score):
        color = class_color(detection.class_id)
        ymin, xmin, ymax, xmax = detection.box_pixels
        box = (
            min(xmin, width - 1),
            min(ymin, height - 1),
            max(min(xmax, width) - 1, xmin),
            max(min(ymax, height) - 1, ymin),
        )
        draw.rectangle(box, outline=color, width=stroke)
        _draw_label(draw, f"{detection.label}: {detection.score:.0%}", box, color, font, stroke)
    return canvas


def _draw_label(
    draw: ImageDraw.ImageDraw,
    text: str,
    box: tuple[int, int, int, int],
    color: tuple[int, int, int],
    font: ImageFont.FreeTypeFont,
    stroke: int,
) -> None:
    """A filled tag above the box's top-left corner, or just inside it when at the top edge."""
    width, height = draw.im.size
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, stroke)
    tag_width, tag_height = right - left + 2 * pad, bottom - top + 2 * pad
    x = max(0, min(box[0], width - tag_width))
    y = box[1] - tag_height if box[1] >= tag_height else box[1]
    y = max(0, min(y, height - tag_height))
    draw.rectangle((x, y, x + tag_width - 1, y + tag_height - 1), fill=color)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luminance > 150 else (255, 255, 255)
    draw.text((x + pad - left, y + pad - top), text, fill=ink, font=font)
