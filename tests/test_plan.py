"""What predict sends to a signature and how it reads the answer, decided from metadata alone
(no server: the kinds are served for real in test_model_kinds.py)."""

from __future__ import annotations

import pytest

from object_detection.detections import parse_detections
from object_detection.errors import DetectionOutputError
from object_detection.label_map import coco_label_map
from object_detection.plan import plan_for
from sidecar_testing.data import COCO_DOG
from tfserving.errors import UnfeedableInput
from tfserving.metadata import Signature, TensorSpec

BATCHED = (
    TensorSpec("detection_boxes", "DT_FLOAT", (-1, 100, 4)),
    TensorSpec("detection_classes", "DT_FLOAT", (-1, 100)),
    TensorSpec("detection_scores", "DT_FLOAT", (-1, 100)),
    TensorSpec("num_detections", "DT_FLOAT", (-1,)),
)
HUB = (
    TensorSpec("detection_boxes", "DT_FLOAT", (-1, 4)),
    TensorSpec("detection_class_entities", "DT_STRING", (-1,)),
    TensorSpec("detection_class_labels", "DT_INT64", (-1,)),
    TensorSpec("detection_scores", "DT_FLOAT", (-1,)),
)


def signature(dtype: str, shape, outputs=BATCHED, name: str = "serving_default") -> Signature:
    return Signature(name, "tensorflow/serving/predict", (TensorSpec("x", dtype, shape),), outputs)


@pytest.mark.parametrize(
    ("dtype", "encoding"),
    [("DT_UINT8", "pixels"), ("DT_FLOAT", "pixels"), ("DT_HALF", "pixels"), ("DT_STRING", "b64")],
)
def test_the_input_dtype_picks_the_encoding(dtype, encoding) -> None:
    assert plan_for(signature(dtype, (-1, -1, -1, 3))).encoding == encoding


def test_an_input_no_image_fits_is_refused_in_one_line() -> None:
    with pytest.raises(UnfeedableInput, match="'x' is DT_INT32; this client sends images as"):
        plan_for(signature("DT_INT32", (-1, -1, -1, 3)))


def test_the_value_range_matters_for_float_inputs_only() -> None:
    assert plan_for(signature("DT_FLOAT", (1, -1, -1, 3)), input_range="0-1").unit_range
    assert not plan_for(signature("DT_FLOAT", (1, -1, -1, 3))).unit_range
    assert not plan_for(signature("DT_UINT8", (1, -1, -1, 3)), input_range="0-1").unit_range


def test_a_fixed_height_and_width_is_the_size_sent() -> None:
    assert plan_for(signature("DT_UINT8", (1, 320, 480, 3))).fixed_size == (480, 320)
    assert plan_for(signature("DT_UINT8", (1, -1, -1, 3))).fixed_size is None
    assert plan_for(signature("DT_UINT8", None)).fixed_size is None  # unknown rank


def test_outputs_without_a_batch_dimension_make_the_request_columnar() -> None:
    batched = plan_for(signature("DT_UINT8", (-1, -1, -1, 3)))
    assert not batched.columnar and not batched.unbatched
    hub = plan_for(signature("DT_FLOAT", (1, -1, -1, 3), HUB))
    assert hub.columnar
    assert hub.unbatched == {spec.name for spec in HUB}
    unknown = (TensorSpec("detection_boxes", "DT_FLOAT", None), *BATCHED[1:])
    assert not plan_for(signature("DT_UINT8", (-1, -1, -1, 3), unknown)).columnar


HUB_ANSWER = {
    "outputs": {
        "detection_boxes": [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]],
        "detection_scores": [0.9, 0.8],
        "detection_class_entities": ["Beagle", "person"],
        "detection_class_labels": [7, 1],
    }
}


def test_the_models_own_class_names_win_over_the_label_map() -> None:
    names = list(HUB_ANSWER["outputs"])
    detections = parse_detections(HUB_ANSWER, 100, 100, coco_label_map(), unbatched=names)
    assert [(d.class_id, d.label) for d in detections] == [(7, "Beagle"), (1, "person")]


def test_names_without_ids_get_the_label_maps_ids() -> None:
    outputs = {k: v for k, v in HUB_ANSWER["outputs"].items() if k != "detection_class_labels"}
    outputs["detection_class_entities"] = ["DOG", "no such class"]
    answer = {"outputs": outputs}
    detections = parse_detections(answer, 100, 100, coco_label_map(), unbatched=list(outputs))
    assert [(d.class_id, d.label) for d in detections] == [(COCO_DOG, "DOG"), (0, "no such class")]


def test_class_names_are_checked_like_every_other_output() -> None:
    outputs = dict(HUB_ANSWER["outputs"], detection_class_entities=["dog"])
    mismatch = r"2 detection_boxes.*1 detection_class_entities"
    with pytest.raises(DetectionOutputError, match=mismatch):
        parse_detections({"outputs": outputs}, 10, 10, coco_label_map(), unbatched=list(outputs))
    outputs = dict(HUB_ANSWER["outputs"], detection_class_entities=[1, 2])
    with pytest.raises(DetectionOutputError, match="not a flat list of class names"):
        parse_detections({"outputs": outputs}, 10, 10, coco_label_map(), unbatched=list(outputs))
