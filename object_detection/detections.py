"""Turn a TF Object Detection API model's predict answer into a list of labelled boxes.

These models return, per image, `detection_boxes` (normalized [ymin, xmin, ymax, xmax]),
`detection_classes`, `detection_scores` and `num_detections`, usually 100 of them with the
weakest scores near zero: the client keeps those above a threshold. TF Serving sends them
either row-wise (`{"predictions": [{...}]}`, answer to `instances`) or column-wise
(`{"outputs": {...}}`, answer to `inputs`); both are read here.

The answer comes from a server, so everything read from it is checked before use: boxes are N
rows of 4 finite numbers, scores and class ids N finite numbers (ids whole, 0..2**31-1),
num_detections one finite number >= 0. Anything else is a DetectionOutputError that names the
field, never a numpy traceback, a NaN in the output or a class id wrapped round to a negative.
The checks and the selection work on whole arrays, so an answer with a million rows costs numpy
time; Python objects are made only for the detections kept.
"""

from __future__ import annotations

import reprlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from object_detection.errors import DetectionOutputError
from object_detection.label_map import MAX_CLASS_ID, LabelMap

BOXES, CLASSES, SCORES, COUNT = (
    "detection_boxes",
    "detection_classes",
    "detection_scores",
    "num_detections",
)
# Where a detection's class comes from, first found first (see parse_detections).
CLASS_ID_OUTPUTS = (CLASSES, "detection_class_labels")
CLASS_NAME_OUTPUTS = ("detection_class_entities", "detection_class_names")
_HINT = "is this a TF Object Detection API model?"


@dataclass(frozen=True)
class Detection:
    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]  # normalized [ymin, xmin, ymax, xmax], within 0..1
    box_pixels: tuple[int, int, int, int]  # [ymin, xmin, ymax, xmax] in the image's pixels
    index: int = 0  # the detection's row in the model's outputs (its mask, its keypoints)
    # Instance outputs, when the model gives them (object_detection.instances fills them in):
    # a bool H x W array at the original image's size, and K x 3 (x_px, y_px, score) keypoints.
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    keypoints: np.ndarray | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "class_id": self.class_id,
            "label": self.label,
            "score": round(self.score, 4),
            "box": [round(value, 4) for value in self.box],
            "box_pixels": list(self.box_pixels),
        }


def first_instance(response: Mapping[str, Any], unbatched: Collection[str] = ()) -> dict[str, Any]:
    """The named outputs for the first (only) image, from a row or a columnar answer. The
    outputs named in `unbatched` have no batch dimension: a columnar answer holds them whole."""
    if "predictions" in response:
        rows = response["predictions"]
        if not isinstance(rows, list) or not rows:
            raise DetectionOutputError(
                f"the answer's 'predictions' is {reprlib.repr(rows)}, not a list with an entry per "
                f"image; {_HINT}"
            )
        if not isinstance(rows[0], dict):
            raise DetectionOutputError(
                "the model returned a single unnamed output; an object detection model returns "
                f"named outputs ({BOXES}, {CLASSES}, {SCORES}, ...)"
            )
        return rows[0]
    if "outputs" in response:
        columns = response["outputs"]
        if not isinstance(columns, dict):
            raise DetectionOutputError(
                f"the answer's 'outputs' is {reprlib.repr(columns)}, not named outputs ({BOXES}, "
                f"{CLASSES}, {SCORES}, ...); {_HINT}"
            )
        # A value without a batch dimension is passed on as it is: if it is one we read, the
        # checks below say what is wrong with it; if not, it does not matter.
        return {
            name: batch[0] if name not in unbatched and isinstance(batch, list) and batch else batch
            for name, batch in columns.items()
        }
    raise DetectionOutputError(
        f"the answer has neither 'predictions' nor 'outputs': keys {sorted(response)}"
    )


def parse_detections(
    response: Mapping[str, Any],
    width: int,
    height: int,
    label_map: LabelMap,
    min_score: float = 0.5,
    max_boxes: int | None = None,
    unbatched: Collection[str] = (),
) -> list[Detection]:
    """Detections scoring at least min_score, best first, at most max_boxes of them.
    Raises DetectionOutputError when the answer is not a detection model's.

    A class is an id (detection_classes, or TF Hub's detection_class_labels) named by the
    label map, unless the model names its classes itself (detection_class_entities, then
    detection_class_names): those names win. A model that gives names only gets the label
    map's id for each name (0 for a name the map lacks)."""
    return detections_from_outputs(
        first_instance(response, unbatched), width, height, label_map, min_score, max_boxes
    )


def detections_from_outputs(
    outputs: Mapping[str, Any],
    width: int,
    height: int,
    label_map: LabelMap,
    min_score: float = 0.5,
    max_boxes: int | None = None,
) -> list[Detection]:
    """parse_detections on one image's outputs (`first_instance` of the answer), for a caller
    that reads more of them (masks, keypoints)."""
    id_output = next((name for name in CLASS_ID_OUTPUTS if name in outputs), None)
    name_output = next((name for name in CLASS_NAME_OUTPUTS if name in outputs), None)
    missing = [name for name in (BOXES, SCORES) if name not in outputs]
    if id_output is None and name_output is None:
        missing.append(CLASSES)
    if missing:
        raise DetectionOutputError(
            f"the answer has no {', '.join(missing)} (outputs: {', '.join(sorted(outputs))}); "
            f"{_HINT}"
        )
    boxes = _boxes(outputs[BOXES])
    scores = _column(SCORES, outputs[SCORES])
    names = _names(name_output, outputs[name_output]) if name_output else None
    if id_output is not None:
        class_ids = _class_ids(id_output, outputs[id_output])
    else:
        class_ids = np.array([label_map.id_of(name) for name in names], np.int64)
    columns = {BOXES: len(boxes), SCORES: len(scores), id_output or name_output: len(class_ids)}
    if names is not None:
        columns[name_output] = len(names)
    if len(set(columns.values())) != 1:
        counts = " and ".join(f"{count} {name}" for name, count in columns.items())
        raise DetectionOutputError(
            f"the answer has {counts}: one of each per detection expected; {_HINT}"
        )
    count = _count(outputs[COUNT], len(scores)) if COUNT in outputs else len(scores)

    order = np.argsort(-scores[:count], kind="stable")
    order = order[scores[order] >= min_score][:max_boxes]
    labels = None if names is None else [names[i] for i in order.tolist()]
    return _detections(
        boxes[order], scores[order], class_ids[order], order, width, height, label_map, labels
    )


def _detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    rows: np.ndarray,
    width: int,
    height: int,
    label_map: LabelMap,
    labels: list[str] | None = None,
) -> list[Detection]:
    """Detection objects from the kept rows, every value computed on whole arrays first; the
    label map names them unless the model's own `labels` are given."""
    boxes = np.clip(boxes, 0.0, 1.0)
    pixels = np.rint(boxes * np.array([height, width, height, width], np.float64))
    ids = class_ids.tolist()
    if labels is None:
        named = {class_id: label_map.label(class_id) for class_id in set(ids)}
        labels = [named[class_id] for class_id in ids]
    return list(
        map(
            Detection,
            ids,
            labels,
            scores.tolist(),
            map(tuple, boxes.tolist()),
            map(tuple, pixels.astype(np.int64).tolist()),
            rows.tolist(),
        )
    )


def _boxes(value: Any) -> np.ndarray:
    """N x 4 float64; an empty list is no boxes."""
    boxes = finite_array(BOXES, value)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DetectionOutputError(
            f"{BOXES} has shape {_shape(boxes)}, not N rows of 4 numbers "
            f"[ymin, xmin, ymax, xmax]; {_HINT}"
        )
    return boxes


def _column(name: str, value: Any) -> np.ndarray:
    """A flat list of N finite numbers, as float64."""
    column = finite_array(name, value)
    if column.ndim != 1:
        raise DetectionOutputError(
            f"{name} has shape {_shape(column)}, not a flat list of numbers; {_HINT}"
        )
    return column


def _class_ids(name: str, value: Any) -> np.ndarray:
    """Whole numbers 0..MAX_CLASS_ID as int64: 1e30 must not become -9223372036854775808."""
    ids = _column(name, value)
    bad = np.flatnonzero((ids != np.rint(ids)) | (ids < 0) | (ids > MAX_CLASS_ID))
    if bad.size:
        raise DetectionOutputError(
            f"{name}[{bad[0]}] is {ids[bad[0]]:g}, not a class id (a whole number from 0 to "
            f"{MAX_CLASS_ID}); {_HINT}"
        )
    return ids.astype(np.int64)


def _names(name: str, value: Any) -> list[str]:
    """A flat list of class names (strings: TF Serving writes a DT_STRING output as text)."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DetectionOutputError(
            f"{name} is {reprlib.repr(value)}, not a flat list of class names; {_HINT}"
        )
    return value


def _count(value: Any, available: int) -> int:
    """num_detections: one number >= 0, bare or in a 1-element list; at most `available`."""
    count = finite_array(COUNT, value)
    if count.size != 1 or count.ravel()[0] < 0:
        raise DetectionOutputError(
            f"{COUNT} is {reprlib.repr(value)}, not one number >= 0 (or a list holding one); "
            f"{_HINT}"
        )
    return min(int(count.ravel()[0]), available)


def finite_array(name: str, value: Any) -> np.ndarray:
    """`value` (JSON numbers, in nested lists of even lengths) as a float64 array in which
    every value is finite; DetectionOutputError otherwise."""
    array = _numbers(name, value)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        where = "".join(f"[{i}]" for i in np.unravel_index(bad[0], array.shape))
        raise DetectionOutputError(
            f"{name}{where} is {array.flat[bad[0]]}: every value must be a finite number; {_HINT}"
        )
    return array


def _numbers(name: str, value: Any) -> np.ndarray:
    try:
        array = np.asarray(value)
        if array.dtype.kind in "iuf":
            return array.astype(np.float64, copy=False)
        # Integers beyond int64 make an object array; anything else there is not a number.
        if array.dtype == object and all(_is_number(item) for item in array.flat):
            return array.astype(np.float64)
    except ValueError:  # rows of different lengths
        raise DetectionOutputError(
            f"{name} has rows of different lengths: {reprlib.repr(value)}; {_HINT}"
        ) from None
    except OverflowError:  # an integer beyond float64
        pass
    raise DetectionOutputError(f"{name} is {reprlib.repr(value)}, not numbers; {_HINT}")


def _is_number(item: Any) -> bool:
    return isinstance(item, int | float) and not isinstance(item, bool)


def _shape(array: np.ndarray) -> str:
    return "(" + ", ".join(map(str, array.shape)) + ")" if array.ndim else "() (a single number)"
