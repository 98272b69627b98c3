"""client.py with models that give masks and keypoints, served by the local TF Serving
stand-in: the seed's command line, the masks (COCO RLE) and keypoints in the JSON and on the
picture, --no-masks, and --format coco read back by pycocotools' COCO and COCOeval.

The models are the shared SSD with masks and keypoints drawn from its boxes
(sidecar_testing.model_kinds): an ellipse in each box, a stick figure in each box."""

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image, ImageFilter
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from object_detection.instances import INSTANCE_OUTPUTS
from object_detection.visualize import MASK_ALPHA, class_color, font_size, line_width
from sidecar_testing.cli import run, seed_args
from sidecar_testing.data import COCO_DOG, IMAGE1, IMAGE2, LEFT_DOG, RIGHT_DOG, ROOT
from sidecar_testing.model_kinds import KEYPOINT_SCORE, STICK_FIGURE
from sidecar_testing.reference import assert_two_dogs

WIDTH, HEIGHT = Image.open(IMAGE1).size


@pytest.fixture(autouse=True)
def in_project_root(monkeypatch):
    """The seed's command line names data/labels.pbtxt relative to the project."""
    monkeypatch.chdir(ROOT)


def seed_command(server, output_json, *extra, url=None):
    """The seed's command line (plus `extra`); the JSON (or COCO list) it wrote."""
    result = run(*seed_args(url or server.predict_url, output_json, *extra))
    assert result.exit_code == 0, result.output
    return json.loads(output_json.read_text())


def decoded(detection):
    mask = coco_mask.decode(detection["mask"]).astype(bool)
    assert mask.shape == (HEIGHT, WIDTH)  # the photo's size, whatever size was sent
    return mask


def assert_mask_in_its_box(detection):
    """Mask pixels only inside the box, and most of an ellipse inscribed in it (pi/4)."""
    mask = decoded(detection)
    ymin, xmin, ymax, xmax = detection["box_pixels"]
    rows, columns = np.nonzero(mask)
    assert ymin - 1 <= rows.min() and rows.max() < ymax + 1
    assert xmin - 1 <= columns.min() and columns.max() < xmax + 1
    assert mask.sum() == pytest.approx(math.pi / 4 * (ymax - ymin) * (xmax - xmin), rel=0.1)


def boxes_and_tags(detections):
    """Where boxes and labels are drawn (with a margin for JPEG noise)."""
    zone = np.zeros((HEIGHT, WIDTH), bool)
    stroke, text, margin = line_width(WIDTH, HEIGHT), font_size(WIDTH, HEIGHT), 3
    for detection in detections:
        ymin, xmin, ymax, xmax = detection["box_pixels"]
        outline = np.zeros_like(zone)
        outline[max(0, ymin - margin) : ymax + margin, max(0, xmin - margin) : xmax + margin] = True
        outline[
            ymin + stroke + margin : ymax - stroke - margin,
            xmin + stroke + margin : xmax - stroke - margin,
        ] = False
        zone |= outline  # each box's own band: another box's inside must not erase it
        zone[
            max(0, ymin - 2 * text) : ymin + 2 * text, max(0, xmin - margin) : xmin + 12 * text
        ] = True
    return zone


def assert_masks_filled(picture, detections, masks):
    """Inside one mask (away from boxes and tags) the photo blended with the box's color at
    MASK_ALPHA; outside every mask, boxes and tags, the photo as it was (up to JPEG noise)."""
    before = np.asarray(Image.open(IMAGE1).convert("RGB"), np.float64)
    after = np.asarray(Image.open(picture), np.float64)
    coverage = np.sum(masks, axis=0)
    lines = boxes_and_tags(detections)
    for detection, mask in zip(detections, masks, strict=True):
        alone = mask & (coverage == 1) & ~lines
        assert alone.sum() > 500
        color = np.array(class_color(detection["class_id"]), np.float64)
        blended = (1 - MASK_ALPHA) * before[alone] + MASK_ALPHA * color
        assert np.abs(after[alone] - blended).mean() < 3  # the fill...
        assert np.abs(after[alone] - before[alone]).max(axis=1).mean() > 15  # ...which shows
    near_masks = np.asarray(
        Image.fromarray((coverage > 0).astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(5))
    )
    untouched = ~lines & (near_masks == 0)
    assert untouched.mean() > 0.1
    diff = np.abs(after - before).max(axis=2)
    assert diff[untouched].mean() < 1.5 and diff[untouched].max() < 40


def test_box_masks_with_the_seed_command(kind_server, tmp_path):
    result = seed_command(kind_server("box_masks"), tmp_path / "image1.json")
    for dog in assert_two_dogs(result, 0.03):
        assert_mask_in_its_box(dog)
    masks = [decoded(d) for d in result["detections"]]
    assert_masks_filled(tmp_path / "image1_annotated.jpg", result["detections"], masks)
    # The masks are in the detections, not repeated in the raw answer.
    [raw] = result["raw_response"]["predictions"]
    assert "detection_boxes" in raw and not set(INSTANCE_OUTPUTS) & set(raw)


def test_image_masks_from_a_smaller_sent_image(kind_server, tmp_path):
    # Full-image masks over the image sent (320 px wide here): scaled up to the photo's size.
    result = seed_command(kind_server("image_masks"), tmp_path / "image1.json", "--max_side", 320)
    assert result["request"]["sent_size"] == [320, round(320 * HEIGHT / WIDTH)]
    for dog in assert_two_dogs(result, 0.03):
        assert_mask_in_its_box(dog)
    masks = [decoded(d) for d in result["detections"]]
    assert_masks_filled(tmp_path / "image1_annotated.jpg", result["detections"], masks)
    assert not set(INSTANCE_OUTPUTS) & set(result["raw_response"]["predictions"][0])


def test_no_masks_keeps_them_out_of_the_json_but_on_the_picture(kind_server, tmp_path):
    server = kind_server("box_masks")
    with_masks = seed_command(server, tmp_path / "with.json")
    without = seed_command(server, tmp_path / "without.json", "--no-masks")
    assert not any("mask" in d for d in without["detections"])
    assert [d["box"] for d in without["detections"]] == [d["box"] for d in with_masks["detections"]]
    masks = [decoded(d) for d in with_masks["detections"]]
    assert_masks_filled(tmp_path / "without_annotated.jpg", without["detections"], masks)


def test_masks_over_grpc_are_the_same(kind_server, tmp_path):
    server = kind_server("box_masks")
    rest = seed_command(server, tmp_path / "rest.json")
    grpc = seed_command(
        server, tmp_path / "grpc.json", "--model_name", server.model_name, url=server.grpc_url
    )
    assert [d["mask"] for d in grpc["detections"]] == [d["mask"] for d in rest["detections"]]
    assert not set(INSTANCE_OUTPUTS) & set(grpc["raw_response"]["predictions"][0])


def test_keypoints_in_pixels_inside_their_box(kind_server, tmp_path):
    result = seed_command(kind_server("keypoints"), tmp_path / "image1.json")
    for dog in assert_two_dogs(result, 0.03):
        ymin, xmin, ymax, xmax = dog["box_pixels"]
        points = np.array(dog["keypoints"])
        assert points.shape == (17, 3)
        # (x, y) in the photo's pixels: the stick figure's (y, x) fractions of the box.
        expected_x = xmin + STICK_FIGURE[:, 1] * (xmax - xmin)
        expected_y = ymin + STICK_FIGURE[:, 0] * (ymax - ymin)
        assert points[:, 0] == pytest.approx(expected_x, abs=1.5)
        assert points[:, 1] == pytest.approx(expected_y, abs=1.5)
        assert points[:, 2] == pytest.approx(KEYPOINT_SCORE, abs=1e-4)
    assert not set(INSTANCE_OUTPUTS) & set(result["raw_response"]["predictions"][0])
    # Each dog's keypoints are dots in its box's color on the picture.
    picture = np.asarray(Image.open(tmp_path / "image1_annotated.jpg"), np.int16)
    lines = boxes_and_tags(result["detections"])
    for dog in assert_two_dogs(result, 0.03):
        color = np.array(class_color(dog["class_id"]))
        dots = [
            (round(y), round(x)) for x, y, _ in dog["keypoints"] if not lines[round(y), round(x)]
        ]
        assert len(dots) >= 10
        assert all(np.abs(picture[y, x] - color).max() < 40 for y, x in dots)


def ground_truth(path, images, annotations):
    """A COCO annotations file: the dog category, `images` [(id, file_name, size)]."""
    data = {
        "images": [
            {"id": i, "file_name": name, "width": w, "height": h} for i, name, (w, h) in images
        ],
        "annotations": [{"id": n, "iscrowd": 0, **a} for n, a in enumerate(annotations, 1)],
        "categories": [{"id": COCO_DOG, "name": "dog"}],
    }
    path.write_text(json.dumps(data))
    return COCO(str(path))


def dog_annotations(image_id, segmentation=False, keypoints=False):
    """image1.jpg's two dogs at the shared model's boxes; an ellipse in each box as its
    segmentation, the stick figure in it as its keypoints."""
    annotations = []
    for ymin, xmin, ymax, xmax in (LEFT_DOG, RIGHT_DOG):
        x, y, w, h = xmin * WIDTH, ymin * HEIGHT, (xmax - xmin) * WIDTH, (ymax - ymin) * HEIGHT
        annotation = {"image_id": image_id, "category_id": COCO_DOG, "bbox": [x, y, w, h]}
        annotation["area"] = w * h
        if segmentation:
            rows, columns = np.ogrid[:HEIGHT, :WIDTH]
            inside = ((rows + 0.5 - y - h / 2) / (h / 2)) ** 2 + (
                (columns + 0.5 - x - w / 2) / (w / 2)
            ) ** 2 <= 1
            rle = coco_mask.encode(np.asfortranarray(inside.astype(np.uint8)))
            annotation["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        if keypoints:
            points = [(x + fx * w, y + fy * h, 2) for fy, fx in STICK_FIGURE.tolist()]
            annotation["keypoints"] = [value for point in points for value in point]
            annotation["num_keypoints"] = len(points)
        annotations.append(annotation)
    return annotations


def evaluate(gt, results_path, iou_type):
    """COCOeval's 12 stats for the results file, loaded as it is."""
    evaluation = COCOeval(gt, gt.loadRes(str(results_path)), iou_type)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    stats = [float(value) for value in evaluation.stats]
    assert len(stats) in (10, 12) and all(math.isfinite(value) for value in stats)
    return stats


def test_coco_results_for_one_photo(kind_server, tmp_path):
    output = tmp_path / "image1.json"
    results = seed_command(kind_server("box_masks"), output, "--format", "coco")
    assert {r["image_id"] for r in results} == {1}
    assert all(
        set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"} for r in results
    )
    ids = json.loads((tmp_path / "image1_image_ids.json").read_text())
    assert ids == [{"id": 1, "path": str(IMAGE1)}]
    assert (tmp_path / "image1_annotated.jpg").is_file()

    gt = ground_truth(
        tmp_path / "gt.json", [(1, "image1.jpg", (WIDTH, HEIGHT))], dog_annotations(1, True)
    )
    assert evaluate(gt, output, "bbox")[0] > 0.8  # AP over IoU 0.5..0.95: the boxes are right
    assert evaluate(gt, output, "segm")[1] > 0.8  # AP at IoU 0.5: the ellipses overlap


def test_coco_keypoints(kind_server, tmp_path):
    output = tmp_path / "image1.json"
    gt = ground_truth(
        tmp_path / "gt.json",
        [(3, "image1.jpg", (WIDTH, HEIGHT))],
        dog_annotations(3, keypoints=True),
    )
    results = seed_command(
        kind_server("keypoints"), output, "--format", "coco", "--coco_gt", tmp_path / "gt.json"
    )
    assert {r["image_id"] for r in results} == {3}
    assert all(len(r["keypoints"]) == 51 and r["keypoints"][2::3] == [2] * 17 for r in results)
    assert not (tmp_path / "image1_image_ids.json").exists()  # the ground truth has the ids
    assert evaluate(gt, output, "keypoints")[0] > 0.8


def test_coco_results_for_a_folder_with_resume(kind_server, tmp_path):
    server = kind_server("box_masks")
    stray = tmp_path / "photos" / "stray.jpg"
    stray.parent.mkdir()
    shutil.copy(IMAGE1, stray)
    gt = ground_truth(
        tmp_path / "gt.json",
        [(5, "image1.jpg", (WIDTH, HEIGHT)), (9, "image2.jpg", Image.open(IMAGE2).size)],
        dog_annotations(5, segmentation=True),
    )
    out = tmp_path / "out"
    command = ["predict", "--server_url", server.predict_url, IMAGE1, IMAGE2, stray]
    command += ["--output_dir", out, "--format", "coco", "--coco_gt", tmp_path / "gt.json"]

    result = run(*command)
    assert result.exit_code == 1  # the photo missing from the ground truth fails alone
    assert "stray.jpg is not an image of" in result.output
    summary = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in summary) == ["error", "ok", "ok"]
    results = json.loads((out / "coco_results.json").read_text())
    assert {r["image_id"] for r in results} == {5, 9}
    assert evaluate(gt, out / "coco_results.json", "bbox")[0] > 0.8
    evaluate(gt, out / "coco_results.json", "segm")
    assert not (out / "image_ids.json").exists()

    (out / "coco_results.json").unlink()
    result = run(*command, "--resume")  # nothing sent again: made from the results on disk
    assert result.exit_code == 1
    assert json.loads((out / "coco_results.json").read_text()) == results


def test_coco_ids_of_a_folder_without_ground_truth(kind_server, tmp_path):
    server = kind_server("box_masks")
    out = tmp_path / "out"
    result = run("predict", "--server_url", server.predict_url, IMAGE2, IMAGE1,
                 "--output_dir", out, "--format", "coco", "--no-masks")  # fmt: skip
    assert result.exit_code == 0, result.output
    ids = json.loads((out / "image_ids.json").read_text())
    assert ids == [{"id": 1, "path": str(IMAGE2)}, {"id": 2, "path": str(IMAGE1)}]
    results = json.loads((out / "coco_results.json").read_text())
    dogs = [r for r in results if r["category_id"] == COCO_DOG and r["image_id"] == 2]
    assert len(dogs) == 2 and not any("segmentation" in r for r in results)


def test_coco_options_misused(kind_server, tmp_path):
    server = kind_server("box_masks")
    (tmp_path / "gt.json").write_text("{}")
    result = run("--server_url", server.predict_url, IMAGE1, "--coco_gt", tmp_path / "gt.json")
    assert result.exit_code == 2 and "--coco_gt goes with --format coco" in result.output
    result = run("--server_url", server.predict_url, IMAGE1, "--format", "coco",
                 "--coco_gt", tmp_path / "gt.json")  # fmt: skip
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == f"Error: {tmp_path / 'gt.json'}: not COCO annotations (no 'images' list)"
    )
    ground_truth(tmp_path / "gt.json", [(1, "other.jpg", (WIDTH, HEIGHT))], [])
    requests_before = server.stderr().count(":predict")
    result = run("--server_url", server.predict_url, IMAGE1, "--format", "coco",
                 "--coco_gt", tmp_path / "gt.json")  # fmt: skip
    assert result.exit_code == 1
    missing = f"{IMAGE1} is not an image of {tmp_path / 'gt.json'} (no such file_name)"
    assert result.output.strip() == f"Error: {missing}"
    assert server.stderr().count(":predict") == requests_before  # refused before sending
    ground_truth(tmp_path / "gt.json", [(1, "image1.jpg", (WIDTH, HEIGHT))], [])
    result = run("--server_url", server.predict_url, IMAGE1, "--format", "coco",
                 "--coco_gt", tmp_path / "gt.json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert server.stderr().count(":predict") == requests_before + 1  # as a request is logged
