"""Post-processing of a detection model's answer, in both of TF Serving's answer layouts."""

import pytest

from object_detection.detections import DetectionOutputError, parse_detections
from object_detection.label_map import parse_label_map

LABELS = parse_label_map('item { id: 1 name: "person" } item { id: 18 name: "dog" }')
# Deliberately not sorted, with a box poking out of the image and a padding row past num_detections.
OUTPUTS = {
    "detection_boxes": [
        [0.5, 0.5, 1.2, 1.0],
        [0.1, 0.2, 0.3, 0.4],
        [0.0, 0.0, 0.1, 0.1],
        [0, 0, 1, 1],
    ],
    "detection_classes": [1.0, 18.0, 77.0, 1.0],
    "detection_scores": [0.6, 0.9, 0.55, 0.99],
    "num_detections": 3.0,
}


def row_answer():
    return {"predictions": [OUTPUTS]}


def columnar_answer():
    """{"outputs": {name: batch}}: every output gets the batch dimension, num_detections too."""
    return {"outputs": {name: [value] for name, value in OUTPUTS.items()}}


@pytest.mark.parametrize("answer", [row_answer, columnar_answer], ids=["row", "columnar"])
def test_threshold_order_labels_and_pixel_boxes(answer):
    detections = parse_detections(answer(), width=200, height=100, label_map=LABELS, min_score=0.5)
    # Best first; the 4th row (score 0.99) is beyond num_detections and ignored.
    assert [(d.label, d.score) for d in detections] == [
        ("dog", 0.9),
        ("person", 0.6),
        ("id 77", 0.55),
    ]
    dog, person, _ = detections
    assert dog.class_id == 18
    assert dog.box == pytest.approx((0.1, 0.2, 0.3, 0.4))
    assert dog.box_pixels == (10, 40, 30, 80)  # [ymin, xmin, ymax, xmax] in pixels
    assert person.box == (0.5, 0.5, 1.0, 1.0)  # clipped to the image
    assert person.box_pixels == (50, 100, 100, 200)
    assert dog.to_json() == {
        "class_id": 18,
        "label": "dog",
        "score": 0.9,
        "box": [0.1, 0.2, 0.3, 0.4],
        "box_pixels": [10, 40, 30, 80],
    }


def test_min_score_and_max_boxes():
    answer = row_answer()
    assert len(parse_detections(answer, 10, 10, LABELS, min_score=0.0)) == 3
    assert len(parse_detections(answer, 10, 10, LABELS, min_score=0.95)) == 0
    [best] = parse_detections(answer, 10, 10, LABELS, min_score=0.0, max_boxes=1)
    assert best.label == "dog"


def test_answers_that_are_not_detections():
    with pytest.raises(DetectionOutputError, match="no detection_boxes"):
        parse_detections({"predictions": [{"scores": [0.1]}]}, 1, 1, LABELS)
    with pytest.raises(DetectionOutputError, match="neither 'predictions' nor 'outputs'"):
        parse_detections({"result": []}, 1, 1, LABELS)
