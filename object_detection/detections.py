"""Turn a TF Object Detection API model's predict answer into a list of labelled boxes.

These models return, per image, `detection_boxes` (normalized [ymin, xmin, ymax, xmax]),
`detection_classes`, `detection_scores` and `num_detections`, usually 100 of them with the
weakest scores near zero: the client keeps those above a threshold. TF Serving sends them
either row-wise (`{"predictions": [{...}]}`, answer to `instances`) or column-wise
(`{"outputs": {...}}`, answer to `inputs`); both are read here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from object_detection.label_map import LabelMap
from tfserving.errors import TFServingError

BOXES, CLASSES, SCORES, COUNT = (
    "detection_boxes",
    "detection_classes",
    "detection_scores",
    "num_detections",
)


class DetectionOutputError(TFServingError):
    """The answer does not look like an object detection model's output."""


@dataclass(frozen=True)
class Detection:
    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]  # normalized [ymin, xmin, ymax, xmax], within 0..1
    box_pixels: tuple[int, int, int, int]  # [ymin, xmin, ymax, xmax] in the image's pixels

    def to_json(self) -> dict[str, Any]:
        return {
            "class_id": self.class_id,
            "label": self.label,
            "score": round(self.score, 4),
            "box": [round(value, 4) for value in self.box],
            "box_pixels": list(self.box_pixels),
        }


def first_instance(response: Mapping[str, Any]) -> dict[str, Any]:
    """The named outputs for the first (only) image, from a row or a columnar answer."""
    if "predictions" in response:
        rows = response["predictions"]
        if rows and isinstance(rows[0], dict):
            return rows[0]
        raise DetectionOutputError(
            "the model returned a single unnamed output; an object detection model returns "
            f"named outputs ({BOXES}, {CLASSES}, {SCORES}, ...)"
        )
    if "outputs" in response and isinstance(response["outputs"], dict):
        return {name: batch[0] for name, batch in response["outputs"].items()}
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
) -> list[Detection]:
    """Detections scoring at least min_score, best first, at most max_boxes of them."""
    outputs = first_instance(response)
    missing = [name for name in (BOXES, CLASSES, SCORES) if name not in outputs]
    if missing:
        raise DetectionOutputError(
            f"the answer has no {', '.join(missing)} (outputs: {', '.join(sorted(outputs))}); "
            "is this a TF Object Detection API model?"
        )
    boxes = np.clip(np.asarray(outputs[BOXES], np.float64).reshape(-1, 4), 0.0, 1.0)
    class_ids = np.rint(np.asarray(outputs[CLASSES], np.float64).ravel()).astype(int)
    scores = np.asarray(outputs[SCORES], np.float64).ravel()
    count = int(np.asarray(outputs.get(COUNT, len(scores))).ravel()[0])
    count = min(count, len(scores), len(class_ids), len(boxes))

    order = np.argsort(-scores[:count], kind="stable")
    order = order[scores[order] >= min_score][:max_boxes]
    scale = np.array([height, width, height, width], np.float64)
    return [
        Detection(
            class_id=int(class_ids[i]),
            label=label_map.label(int(class_ids[i])),
            score=float(scores[i]),
            box=tuple(float(v) for v in boxes[i]),
            box_pixels=tuple(int(v) for v in np.rint(boxes[i] * scale)),
        )
        for i in order
    ]
