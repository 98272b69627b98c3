"""Draw detections on the picture: a box, label and score per detection, one color per class;
masks as translucent fills and keypoints as dots (and limbs) in the box's color.

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

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from object_detection.detections import Detection
from object_detection.instances import keypoint_visible

_GOLDEN_RATIO = 0.618033988749895
MASK_ALPHA = 0.4  # a mask's fill: the object stays visible through its color
# COCO's person keypoints, in the order its annotations (and the OD API's exports) list them,
# and its skeleton: the 19 limbs, as 1-based pairs of those keypoints (COCO's own numbering).
COCO_PERSON_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
COCO_PERSON_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip


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
    """A copy of `image` (RGB) with the detections drawn; the best score is drawn last, on top.

    Detections sharing a box (per-class NMS gives one box several labels) are one box with one
    tag, "person: 56%, kite: 51%", best first, in the best label's color, as the TF Object
    Detection API draws them. Masks (translucent fills) and keypoints go under the boxes and
    tags, so that no label is hidden."""
    canvas = image.convert("RGB")  # convert() always copies: the caller's image stays clean
    groups = _same_box_groups(detections)
    for group in groups:
        for detection in group:
            if detection.mask is not None:
                _fill_mask(canvas, detection.mask, class_color(group[0].class_id))
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    stroke = line_width(width, height)
    font = _font(font_size(width, height))
    for group in groups:
        for detection in group:
            if detection.keypoints is not None:
                _draw_keypoints(draw, detection.keypoints, class_color(group[0].class_id), stroke)
    for group in groups:
        color = class_color(group[0].class_id)
        ymin, xmin, ymax, xmax = group[0].box_pixels
        box = (
            min(xmin, width - 1),
            min(ymin, height - 1),
            max(min(xmax, width) - 1, xmin),
            max(min(ymax, height) - 1, ymin),
        )
        draw.rectangle(box, outline=color, width=stroke)
        text = ", ".join(f"{detection.label}: {detection.score:.0%}" for detection in group)
        _draw_label(draw, text, box, color, font, stroke)
    return canvas


def _same_box_groups(detections: Sequence[Detection]) -> list[list[Detection]]:
    """Detections grouped by the box they are drawn at, each group best first, the groups in
    drawing order: weakest best score first, so the best box ends up on top."""
    groups: dict[tuple[int, int, int, int], list[Detection]] = {}
    for detection in sorted(detections, key=lambda d: d.score, reverse=True):
        groups.setdefault(detection.box_pixels, []).append(detection)
    return sorted(groups.values(), key=lambda group: group[0].score)


def _fill_mask(canvas: Image.Image, mask: np.ndarray, color: tuple[int, int, int]) -> None:
    """Blend `color` into the mask's pixels at MASK_ALPHA, over the mask's bounding box only:
    a hundred small masks on a 12 MP photo must not cost a hundred full-picture blends."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return
    top, bottom, left, right = rows[0], rows[-1] + 1, columns[0], columns[-1] + 1
    inside = mask[top:bottom, left:right]
    coverage = Image.fromarray(np.where(inside, round(MASK_ALPHA * 255), 0).astype(np.uint8))
    canvas.paste(color, (int(left), int(top), int(right), int(bottom)), coverage)


def _draw_keypoints(
    draw: ImageDraw.ImageDraw, keypoints: np.ndarray, color: tuple[int, int, int], stroke: int
) -> None:
    """The keypoints the model is sure enough of as dots, and for COCO's 17 person keypoints
    the limbs between two such dots."""
    visible = [keypoint_visible(score) for score in keypoints[:, 2].tolist()]
    points = [(x, y) for x, y in keypoints[:, :2].tolist()]
    if len(points) == len(COCO_PERSON_KEYPOINTS):
        for start, end in COCO_PERSON_SKELETON:
            if visible[start - 1] and visible[end - 1]:
                draw.line([points[start - 1], points[end - 1]], fill=color, width=stroke)
    radius = stroke + 1
    for (x, y), seen in zip(points, visible, strict=True):
        if seen:
            dot = (x - radius, y - radius, x + radius, y + radius)
            draw.ellipse(dot, fill=color, outline=(255, 255, 255))


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
