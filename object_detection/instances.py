"""Masks and keypoints of the kept detections: what instance segmentation (Mask R-CNN) and
keypoint (CenterNet) exports of the TF Object Detection API add to the boxes.

- `detection_masks`, per image [N, h, w], comes in two forms, told apart by its size:
  - full-image: (h, w) is the size of the image the model saw (smaller than the photo with
    --max_side). It is resized to the photo's size and thresholded at 0.5.
  - box-relative (Mask R-CNN exports give 33x33): each mask covers its box. It is resized to
    the box's size in the photo's pixels, pasted there and thresholded at 0.5, as the OD API's
    `reframe_box_masks_to_image_masks` and the threshold after it do.
- `detection_keypoints` [N, K, 2] are normalized (y, x) over the image (the OD API's order);
  `detection_keypoint_scores` [N, K], when the model gives them, score each point.

Only the kept detections' rows are read, and each is checked like the boxes are (finite
numbers, the right shape): an answer's 100 masks cost the few kept ones. pycocotools, for the
masks' COCO RLE, is imported when a mask is written, so `--help` and mask-less models never
load it.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from object_detection.detections import BOXES, Detection, finite_array
from object_detection.errors import DetectionOutputError

MASKS, KEYPOINTS, KEYPOINT_SCORES = (
    "detection_masks",
    "detection_keypoints",
    "detection_keypoint_scores",
)
# Left out of raw_response: the detections carry them (masks as RLE), and the raw tensors are
# large (100 x 33 x 33 numbers for Mask R-CNN, N x H x W for full-image masks).
INSTANCE_OUTPUTS = (MASKS, KEYPOINTS, KEYPOINT_SCORES)
MASK_THRESHOLD = 0.5  # a pixel belongs to the object above this (the OD API's threshold)
# Keypoints scoring less are not drawn and get visibility 1 in COCO results (the OD API's
# drawing threshold).
KEYPOINT_THRESHOLD = 0.5


def attach_instances(
    detections: list[Detection],
    outputs: Mapping[str, Any],
    image_size: tuple[int, int],
    sent_size: tuple[int, int],
) -> list[Detection]:
    """`detections` with their masks and keypoints from one image's `outputs`, when the model
    gives them. `image_size` is the photo's (width, height), `sent_size` the one the model saw.
    Raises DetectionOutputError for outputs that are not masks or keypoints of these rows."""
    if not detections or not any(name in outputs for name in (MASKS, KEYPOINTS)):
        return detections
    rows = [detection.index for detection in detections]
    masks: Sequence[np.ndarray | None] = [None] * len(rows)
    keypoints: Sequence[np.ndarray | None] = [None] * len(rows)
    if MASKS in outputs:
        masks = _masks(outputs, rows, image_size, sent_size)
    if KEYPOINTS in outputs:
        keypoints = _keypoints(outputs, rows, image_size)
    return [
        replace(detection, mask=mask, keypoints=points)
        for detection, mask, points in zip(detections, masks, keypoints, strict=True)
    ]


def without_instance_outputs(response: dict[str, Any]) -> dict[str, Any]:
    """The server's answer without the mask and keypoint tensors (a copy when it had any)."""

    def trimmed(outputs: Any) -> Any:
        if not isinstance(outputs, dict) or not any(name in outputs for name in INSTANCE_OUTPUTS):
            return outputs
        return {name: value for name, value in outputs.items() if name not in INSTANCE_OUTPUTS}

    rows, columns = response.get("predictions"), response.get("outputs")
    if isinstance(rows, list):
        return {**response, "predictions": [trimmed(row) for row in rows]}
    if columns is not None:
        return {**response, "outputs": trimmed(columns)}
    return response


def detection_json(detection: Detection, with_mask: bool = True) -> dict[str, Any]:
    """The detection as the result JSON writes it: its box fields, then `mask` as compressed
    COCO RLE (unless `with_mask` is False) and `keypoints` as [[x, y, score], ...] in pixels
    (score null when the model gives none)."""
    data = detection.to_json()
    if with_mask and detection.mask is not None:
        data["mask"] = mask_rle(detection.mask)
    if detection.keypoints is not None:
        data["keypoints"] = [
            [round(x, 2), round(y, 2), round(score, 4)]
            for x, y, score in detection.keypoints.tolist()
        ]
    return data


def mask_rle(mask: np.ndarray) -> dict[str, Any]:
    """A bool H x W mask as compressed COCO RLE: {"size": [H, W], "counts": "..."}, what
    pycocotools.mask.decode and COCO results files take."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(size) for size in rle["size"]], "counts": rle["counts"].decode("ascii")}


def keypoint_visible(score: float) -> bool:
    """Whether a keypoint counts as seen: its score reaches KEYPOINT_THRESHOLD, or the model
    gives no scores (NaN here, null in the JSON)."""
    return not score < KEYPOINT_THRESHOLD  # NaN compares False


def _masks(
    outputs: Mapping[str, Any],
    rows: list[int],
    image_size: tuple[int, int],
    sent_size: tuple[int, int],
) -> list[np.ndarray]:
    masks = _kept_rows(MASKS, outputs[MASKS], rows, (None, None), "h x w numbers")
    if masks.shape[1:] == (sent_size[1], sent_size[0]):
        return [_full_image_mask(mask, image_size) for mask in masks]
    # The boxes as the model gave them, not clipped: a box-relative mask covers the whole box,
    # also where it runs past the picture's edge.
    boxes = _kept_rows(BOXES, outputs[BOXES], rows, (4,), "4 numbers")
    return [_box_mask(mask, box, image_size) for mask, box in zip(masks, boxes, strict=True)]


def _full_image_mask(mask: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """A mask over the image sent, at the photo's size."""
    if mask.shape != (image_size[1], image_size[0]):
        mask = _resized(mask, image_size, (0.0, 0.0, mask.shape[1], mask.shape[0]))
    return mask > MASK_THRESHOLD


def _box_mask(mask: np.ndarray, box: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """A box-relative mask in the photo's pixels: only the box's part inside the picture is
    resampled, so a box reaching far outside it costs nothing more."""
    width, height = image_size
    image_mask = np.zeros((height, width), bool)
    top, left, bottom, right = box * np.array([height, width, height, width], np.float64)
    y0, y1 = (int(np.clip(np.rint(value), 0, height)) for value in (top, bottom))
    x0, x1 = (int(np.clip(np.rint(value), 0, width)) for value in (left, right))
    if y1 <= y0 or x1 <= x0:
        return image_mask
    # The visible pixel rows and columns, in the mask's own coordinates.
    mask_height, mask_width = mask.shape
    scale_y, scale_x = mask_height / (bottom - top), mask_width / (right - left)
    source = (
        float(np.clip((x0 - left) * scale_x, 0, mask_width)),
        float(np.clip((y0 - top) * scale_y, 0, mask_height)),
        float(np.clip((x1 - left) * scale_x, 0, mask_width)),
        float(np.clip((y1 - top) * scale_y, 0, mask_height)),
    )
    image_mask[y0:y1, x0:x1] = _resized(mask, (x1 - x0, y1 - y0), source) > MASK_THRESHOLD
    return image_mask


def _resized(
    mask: np.ndarray, size: tuple[int, int], source: tuple[float, float, float, float]
) -> np.ndarray:
    """The `source` region (left, top, right, bottom) of a float mask, resampled bilinearly to
    `size` (width, height)."""
    picture = Image.fromarray(mask.astype(np.float32))
    return np.asarray(picture.resize(size, Image.Resampling.BILINEAR, box=source))


def _keypoints(
    outputs: Mapping[str, Any], rows: list[int], image_size: tuple[int, int]
) -> list[np.ndarray]:
    """K x 3 (x, y, score) per detection, in the photo's pixels, clipped to it like boxes."""
    points = _kept_rows(KEYPOINTS, outputs[KEYPOINTS], rows, (None, 2), "K x 2 numbers (y, x)")
    if KEYPOINT_SCORES in outputs:
        count = points.shape[1]
        scores = _kept_rows(
            KEYPOINT_SCORES, outputs[KEYPOINT_SCORES], rows, (count,), f"{count} numbers"
        )
    else:
        scores = np.full(points.shape[:2], np.nan)
    xy = np.clip(points[..., ::-1], 0.0, 1.0) * np.array(image_size, np.float64)
    return list(np.concatenate([xy, scores[..., None]], axis=-1))


def _kept_rows(
    name: str, value: Any, rows: list[int], shape: tuple[int | None, ...], what: str
) -> np.ndarray:
    """Output `name`'s rows for the kept detections, stacked as float64, each checked to hold
    finite numbers of `shape` (None: any size above 0, the same in every row); `what` names
    that shape in the message."""
    if not isinstance(value, list | tuple | np.ndarray) or len(value) <= max(rows):
        count = f"{len(value)} rows" if isinstance(value, list | tuple) else reprlib.repr(value)
        raise DetectionOutputError(
            f"{name} is {count}: detection {max(rows)} has no row in it; the model's outputs "
            "give one row per detection"
        )
    kept = [finite_array(f"{name}[{row}]", value[row]) for row in rows]
    first = kept[0]
    if first.ndim != len(shape) or any(
        size == 0 or want not in (None, size)
        for size, want in zip(first.shape, shape, strict=False)
    ):
        raise DetectionOutputError(f"{name}[{rows[0]}] has shape {first.shape}, not {what}")
    for row, array in zip(rows, kept, strict=True):
        if array.shape != first.shape:
            raise DetectionOutputError(
                f"{name}[{row}] has shape {array.shape} and {name}[{rows[0]}] {first.shape}: "
                "its rows must be alike"
            )
    return np.stack(kept)
