"""Masks and keypoints from a model's outputs: pasted where their boxes are, at the photo's
size, in pixels, checked like the boxes, and written as COCO RLE."""

import math

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from object_detection.detections import Detection
from object_detection.errors import DetectionOutputError
from object_detection.instances import (
    attach_instances,
    detection_json,
    mask_rle,
    without_instance_outputs,
)

WIDTH, HEIGHT = 200, 100


def detection(index, box=(0.0, 0.0, 1.0, 1.0)):
    pixels = tuple(round(v * s) for v, s in zip(box, (HEIGHT, WIDTH, HEIGHT, WIDTH), strict=True))
    return Detection(18, "dog", 0.9, box, pixels, index)


def with_masks(boxes, masks, sent_size=(WIDTH, HEIGHT)):
    outputs = {"detection_boxes": boxes, "detection_masks": masks}
    detections = [detection(row, tuple(boxes[row])) for row in range(len(boxes))]
    return attach_instances(detections, outputs, (WIDTH, HEIGHT), sent_size)


def test_box_relative_mask_fills_its_box_in_the_photos_pixels():
    box = [0.2, 0.25, 0.6, 0.75]  # rows 20..60, columns 50..150
    [dog] = with_masks([box], [np.ones((15, 15)).tolist()])
    assert dog.mask.shape == (HEIGHT, WIDTH) and dog.mask.dtype == bool
    expected = np.zeros((HEIGHT, WIDTH), bool)
    expected[20:60, 50:150] = True
    assert np.array_equal(dog.mask, expected)


def test_box_relative_mask_is_resampled_not_just_scaled_to_fit():
    # The left half of the mask set: the left half of the box in the picture.
    half = np.zeros((10, 10))
    half[:, :5] = 1
    [dog] = with_masks([[0.0, 0.0, 1.0, 1.0]], [half.tolist()])
    assert dog.mask[:, : WIDTH // 2 - 1].all()
    assert not dog.mask[:, WIDTH // 2 + 1 :].any()


def test_box_past_the_edge_keeps_the_mask_where_the_box_is():
    # The box's right half lies outside the picture: only the mask's left half shows, over the
    # picture's right half (a clipped box would squeeze the whole mask in there).
    half = np.zeros((10, 10))
    half[:, :5] = 1
    [dog] = with_masks([[0.0, 0.5, 1.0, 1.5]], [half.tolist()])
    assert dog.mask[:, WIDTH // 2 : -2].all()
    assert not dog.mask[:, : WIDTH // 2].any()
    # A box far outside the picture costs nothing and shows nothing.
    [far] = with_masks([[5.0, 5.0, 1e9, 1e9]], [half.tolist()])
    assert not far.mask.any()


def test_mask_values_are_thresholded_at_one_half():
    [weak, strong] = with_masks(
        [[0.0, 0.0, 1.0, 1.0]] * 2, [np.full((4, 4), 0.5).tolist(), np.full((4, 4), 0.51).tolist()]
    )
    assert not weak.mask.any() and strong.mask.all()


def test_full_image_mask_at_the_sent_size_is_scaled_to_the_photo():
    # The model saw the photo at half size (--max_side): its mask's left half becomes the
    # photo's left half.
    sent = np.zeros((HEIGHT // 2, WIDTH // 2))
    sent[:, : WIDTH // 4] = 1
    [dog] = with_masks([[0.1, 0.1, 0.2, 0.2]], [sent.tolist()], sent_size=(WIDTH // 2, HEIGHT // 2))
    assert dog.mask.shape == (HEIGHT, WIDTH)
    assert dog.mask[:, : WIDTH // 2 - 1].all() and not dog.mask[:, WIDTH // 2 + 1 :].any()


def test_keypoints_in_pixels_x_first_with_scores():
    outputs = {
        "detection_keypoints": [[[0.5, 0.25], [1.2, -0.1]], [[0.0, 0.0], [1.0, 1.0]]],
        "detection_keypoint_scores": [[0.9, 0.2], [0.1, 0.1]],
    }
    [first] = attach_instances([detection(0)], outputs, (WIDTH, HEIGHT), (WIDTH, HEIGHT))
    # (y, x) normalized -> (x, y) pixels; the point past the picture clipped to its edge.
    assert first.keypoints.tolist() == [[50.0, 50.0, 0.9], [0.0, 100.0, 0.2]]
    assert detection_json(first)["keypoints"] == [[50.0, 50.0, 0.9], [0.0, 100.0, 0.2]]


def test_keypoints_without_scores_have_a_null_score():
    outputs = {"detection_keypoints": [[[0.5, 0.5]]]}
    [dog] = attach_instances([detection(0)], outputs, (WIDTH, HEIGHT), (WIDTH, HEIGHT))
    [[x, y, score]] = detection_json(dog)["keypoints"]
    assert (x, y) == (100.0, 50.0) and math.isnan(score)  # strict JSON writes it as null


def test_rows_are_the_detections_own():
    # The kept detection is row 1: it gets row 1's mask, not the first one.
    masks = [np.zeros((3, 3)).tolist(), np.ones((3, 3)).tolist()]
    outputs = {"detection_boxes": [[0, 0, 1, 1]] * 2, "detection_masks": masks}
    [dog] = attach_instances([detection(1)], outputs, (WIDTH, HEIGHT), (WIDTH, HEIGHT))
    assert dog.mask.all()


def test_models_without_instances_are_left_alone():
    detections = [detection(0)]
    outputs = {"detection_boxes": [[0, 0, 1, 1]]}
    assert attach_instances(detections, outputs, (WIDTH, HEIGHT), (WIDTH, HEIGHT)) is detections
    assert detection_json(detections[0]) == detections[0].to_json()


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ({"detection_masks": [[[1.0]]]}, r"detection_masks is 1 rows: detection 1 has no row"),
        ({"detection_masks": "abc"}, r"detection_masks is 'abc': detection 1 has no row"),
        ({"detection_masks": [[[1.0]], [1.0, 2.0]]}, r"detection_masks\[1\] has shape \(2,\)"),
        (
            {"detection_masks": [[[1.0]], [[float("nan")]]]},
            r"detection_masks\[1\]\[0\]\[0\] is nan",
        ),
        (
            {"detection_keypoints": [[[0.5, 0.5, 0.5]]] * 2},
            r"detection_keypoints\[0\] has shape \(1, 3\), not K x 2",
        ),
        (
            {
                "detection_keypoints": [[[0.5, 0.5]]] * 2,
                "detection_keypoint_scores": [[0.5, 0.5]] * 2,
            },
            r"detection_keypoint_scores\[0\] has shape \(2,\), not 1 numbers",
        ),
    ],
)
def test_malformed_outputs_are_one_line_errors(outputs, message):
    outputs = {"detection_boxes": [[0, 0, 1, 1]] * 2, **outputs}
    with pytest.raises(DetectionOutputError, match=message) as error:
        attach_instances([detection(0), detection(1)], outputs, (WIDTH, HEIGHT), (9, 9))
    assert "\n" not in str(error.value)


def test_masks_differently_shaped_per_row_are_refused():
    outputs = {"detection_boxes": [[0, 0, 1, 1]] * 2, "detection_masks": [[[1.0]], [[1.0, 1.0]]]}
    with pytest.raises(DetectionOutputError, match=r"must be alike"):
        attach_instances([detection(0), detection(1)], outputs, (WIDTH, HEIGHT), (9, 9))


def test_mask_rle_is_what_pycocotools_decodes():
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[10:40, 30:90] = True
    rle = mask_rle(mask)
    assert rle["size"] == [HEIGHT, WIDTH] and isinstance(rle["counts"], str)
    assert np.array_equal(coco_mask.decode(rle), mask)
    assert coco_mask.area(rle) == 30 * 60


def test_raw_response_loses_the_instance_tensors_only():
    outputs = {
        "detection_boxes": [[0, 0, 1, 1]],
        "detection_masks": [[[1.0]]],
        "detection_keypoints": [[[0.5, 0.5]]],
        "detection_keypoint_scores": [[0.5]],
    }
    rows = without_instance_outputs({"predictions": [outputs]})
    assert rows == {"predictions": [{"detection_boxes": [[0, 0, 1, 1]]}]}
    columns = without_instance_outputs({"outputs": outputs, "model_spec": {"name": "m"}})
    assert columns == {"outputs": {"detection_boxes": [[0, 0, 1, 1]]}, "model_spec": {"name": "m"}}
    assert "detection_masks" in outputs  # the answer itself is left as it was
