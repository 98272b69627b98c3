"""COCO results from result documents, and image ids from a ground truth's file names."""

import json
from pathlib import Path

import pytest

from object_detection.coco import CocoError, ImageIds, coco_results, numbered, results_from_files
from object_detection.inputs import BatchInput

RLE = {"size": [100, 200], "counts": "abc"}
RESULT = {
    "image": {"path": "photos/a.jpg", "width": 200, "height": 100},
    "detections": [
        {"class_id": 18, "label": "dog", "score": 0.9, "box": [0.1, 0.25, 0.5, 0.75], "mask": RLE},
        {
            "class_id": 1,
            "label": "person",
            "score": 0.6,
            "box": [0.0, 0.0, 1.0, 0.5],
            "keypoints": [[10.0, 20.0, 0.9], [30.0, 40.0, 0.1], [50.0, 60.0, None]],
        },
    ],
}


def test_detections_become_coco_results_in_pixels():
    dog, person = coco_results(7, RESULT)
    assert dog == {
        "image_id": 7,
        "category_id": 18,
        "bbox": [50.0, 10.0, 100.0, 40.0],  # [x, y, width, height] in the photo's pixels
        "score": 0.9,
        "segmentation": RLE,
    }
    assert person["bbox"] == [0.0, 0.0, 100.0, 100.0] and "segmentation" not in person
    # v = 2: scored at least the threshold (or no score given); 1: below it.
    assert person["keypoints"] == [10.0, 20.0, 2, 30.0, 40.0, 1, 50.0, 60.0, 2]


def test_a_document_that_is_not_a_result_is_one_line(tmp_path):
    with pytest.raises(CocoError, match="not a detection result"):
        coco_results(1, {"detections": []})
    broken = tmp_path / "a.json"
    broken.write_text('{"image": {"width": 1, "height": 1}, "detections": [{"box": 3}]}')
    with pytest.raises(CocoError, match=r"a.json: not a detection result"):
        results_from_files([(1, broken)])


def test_ids_without_ground_truth_count_from_one():
    ids = ImageIds()
    assert [ids.assign(Path(p), Path(p)) for p in ("b.jpg", "a/c.jpg")] == [1, 2]
    assert ids.id_map() == [{"id": 1, "path": "b.jpg"}, {"id": 2, "path": "a/c.jpg"}]


@pytest.fixture
def ground_truth(tmp_path):
    images = [
        {"id": 11, "file_name": "val/a.jpg"},
        {"id": 12, "file_name": "a.jpg"},
        {"id": 13, "file_name": "x/b.jpg"},
        {"id": 14, "file_name": "y/b.jpg"},
        {"id": 15, "file_name": "deep/c.jpg"},
    ]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    return path


@pytest.mark.parametrize(
    ("name", "image_id"),
    [
        ("val/a.jpg", 11),
        ("./val/a.jpg", 11),
        ("a.jpg", 12),
        ("y/b.jpg", 14),
        ("c.jpg", 15),
        ("other/c.jpg", 15),
    ],
)
def test_ids_from_the_ground_truth_by_path_then_base_name(ground_truth, name, image_id):
    assert ImageIds(ground_truth).assign(Path("/data") / name, Path(name)) == image_id


def test_photos_the_ground_truth_does_not_name_clearly(ground_truth):
    ids = ImageIds(ground_truth)
    with pytest.raises(CocoError, match=r"z.jpg is not an image of .*gt.json"):
        ids.assign(Path("z.jpg"), Path("z.jpg"))
    with pytest.raises(CocoError, match=r"matches several images .* \(ids 13, 14\)"):
        ids.assign(Path("b.jpg"), Path("b.jpg"))
    assert ids.assign(Path("in/one/c.jpg"), Path("one/c.jpg")) == 15
    with pytest.raises(CocoError, match=r"two/c.jpg is image 15 of .*gt.json, and so is in/one"):
        ids.assign(Path("in/two/c.jpg"), Path("two/c.jpg"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "cannot read it as JSON"),
        ('{"annotations": []}', "no 'images' list"),
        ('{"images": [{"id": "1", "file_name": "a.jpg"}]}', r"images\[0\] has no integer 'id'"),
    ],
)
def test_unusable_ground_truth(tmp_path, text, message):
    path = tmp_path / "gt.json"
    path.write_text(text)
    with pytest.raises(CocoError, match=message):
        ImageIds(path)


def test_a_batch_input_missing_from_the_ground_truth_fails_alone(ground_truth):
    items = [
        BatchInput(Path("in/a.jpg"), Path("a.jpg")),
        BatchInput(Path("in/z.jpg"), Path("z.jpg")),
        BatchInput(Path("in/gone.jpg"), Path("gone.jpg"), "image not found: in/gone.jpg"),
    ]
    ids = ImageIds(ground_truth)
    a, z, gone = numbered(items, ids)
    assert a.problem is None and "z.jpg is not an image of" in z.problem
    assert gone.problem == "image not found: in/gone.jpg"  # its own problem, kept
    assert [(image.image_id, image.path) for image in ids.images] == [(12, Path("in/a.jpg"))]
