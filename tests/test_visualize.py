"""Drawing: boxes where the detections are, nothing elsewhere, labels inside the picture."""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from object_detection.detections import Detection
from object_detection.visualize import (
    MASK_ALPHA,
    class_color,
    draw_detections,
    font_size,
    line_width,
)

GRAY = (128, 128, 128)


def detection(box_pixels, class_id=18, label="dog", score=0.72):
    return Detection(class_id, label, score, (0.0, 0.0, 0.0, 0.0), box_pixels)


def changed(before, after):
    return np.any(np.asarray(before) != np.asarray(after), axis=2)


def test_box_outline_in_class_color_and_nothing_else_changes():
    image = Image.new("RGB", (400, 300), GRAY)
    ymin, xmin, ymax, xmax = 100, 120, 250, 350
    drawn = draw_detections(image, [detection((ymin, xmin, ymax, xmax))])
    pixels = np.asarray(drawn)
    stroke = line_width(400, 300)

    assert np.asarray(image).max() == 128  # the input is left as it was
    color = class_color(18)
    for y, x in [(ymin, 200), (ymax - 1, 200), (180, xmin), (180, xmax - 1)]:
        assert tuple(pixels[y, x]) == color
    assert tuple(pixels[ymin + stroke, 200]) == GRAY  # inside the outline: untouched
    # Every changed pixel is on the outline or in the label tag just above the box.
    diff = changed(image, drawn)
    tag = np.zeros_like(diff)
    tag[ymin - 2 * font_size(400, 300) : ymin, xmin : xmin + 200] = True
    outline = np.zeros_like(diff)
    outline[ymin:ymax, xmin:xmax] = True
    outline[ymin + stroke : ymax - stroke, xmin + stroke : xmax - stroke] = False
    assert diff[outline].all()
    assert not diff[~(outline | tag)].any()
    assert diff[tag].sum() > 100  # the label was drawn


@pytest.mark.parametrize(
    "box_pixels",
    [(0, 0, 50, 50), (250, 350, 300, 400), (0, 380, 300, 400), (290, 0, 300, 10)],
    ids=["top-left", "bottom-right", "right-edge", "bottom-edge"],
)
def test_label_stays_inside_the_picture(box_pixels):
    image = Image.new("RGB", (400, 300), GRAY)
    long_label = detection(box_pixels, label="a rather long label")
    diff = changed(image, draw_detections(image, [long_label]))
    # The tag (about 110 px wide at this size) is moved in rather than cut off at the edge:
    # some row holds its full width, which no box here is wide enough to explain.
    assert diff.sum(axis=1).max() >= 100


def test_sizes_scale_with_the_image():
    assert line_width(300, 300) < line_width(4000, 3000)
    assert font_size(300, 300) < font_size(4000, 3000)
    assert line_width(50, 50) >= 2 and font_size(50, 50) >= 10


def test_each_class_has_its_own_color():
    colors = {class_color(class_id) for class_id in range(1, 91)}
    assert len(colors) == 90


def test_font_is_matplotlibs_dejavu_sans():
    from object_detection.visualize import _font

    assert _font(20).getname() == ("DejaVu Sans", "Book")


def test_labels_of_one_box_share_one_tag_best_first_in_its_color():
    image = Image.new("RGB", (400, 300), GRAY)
    box = (100, 120, 250, 350)
    kite = detection(box, class_id=38, label="kite", score=0.51)
    person = detection(box, class_id=1, label="person", score=0.56)
    both = np.asarray(draw_detections(image, [kite, person]))
    # The same picture as one detection labelled with both, best first, in the best's color.
    tag = detection(box, class_id=1, label="person: 56%, kite", score=0.51)
    assert np.array_equal(both, np.asarray(draw_detections(image, [tag])))
    assert tuple(both[180, 120]) == class_color(1)  # the box drawn once, in the person's color
    assert not np.any(np.all(both == class_color(38), axis=2))  # nothing in the kite's


def test_masks_are_translucent_fills_in_the_box_color():
    image = Image.new("RGB", (400, 300), GRAY)
    box = (100, 120, 250, 350)
    mask = np.zeros((300, 400), bool)
    mask[150:200, 200:300] = True
    drawn = np.asarray(draw_detections(image, [replace(detection(box), mask=mask)]), np.float64)
    plain = np.asarray(draw_detections(image, [detection(box)]), np.float64)
    expected = (1 - MASK_ALPHA) * np.array(GRAY) + MASK_ALPHA * np.array(class_color(18))
    assert np.abs(drawn[mask] - expected).max() <= 1  # the fill, the gray still showing through
    assert np.array_equal(drawn[~mask], plain[~mask])  # outside the mask: only box and tag


def test_keypoints_as_dots_and_coco_limbs():
    image = Image.new("RGB", (400, 300), GRAY)
    box = (0, 0, 300, 400)
    # COCO's 17 points on a vertical line; the nose scores too low to be drawn.
    points = np.array([[200.0, 20 + 15 * k, 0.9] for k in range(17)])
    points[0, 2] = 0.1
    drawn = changed(image, draw_detections(image, [replace(detection(box), keypoints=points)]))
    assert drawn[int(points[16, 1]), 200] and drawn[int(points[8, 1]), 200]  # dots
    assert drawn[int(points[13, 1]) + 7, 200]  # the limb from the left knee to the left ankle
    assert not drawn[int(points[0, 1]), 200 - 1 : 200 + 2].any()  # the unsure nose: no dot
    assert not drawn[60:290, 100].any() and not drawn[60:290, 300].any()  # nothing else
