"""COCO results: the detections of a run as the list COCO's evaluation reads
(pycocotools' `COCO.loadRes`, then `COCOeval`).

    [{"image_id": 1, "category_id": 18, "bbox": [x, y, width, height], "score": 0.72,
      "segmentation": {"size": [h, w], "counts": "..."}, "keypoints": [x1, y1, v1, ...]}, ...]

Boxes are in the photo's pixels (floats), `category_id` is the model's class id,
`segmentation` (models with masks) is the mask's compressed RLE, `keypoints` (models with
keypoints) are in pixels with v = 2 for a keypoint scoring at least KEYPOINT_THRESHOLD (or
without a score) and 1 for the others. The list is built from result documents (the JSON
`predict` writes per photo), so a batch's COCO file can be made from the results already on
disk, and `--resume` works as for the JSON.

Image ids come from a ground-truth annotations file (`ImageIds(gt_path)`: the image whose
`file_name` is the photo's path relative to the inputs' folder, else its base name), or are
1..N in the order the photos come.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from object_detection.errors import DetectionError
from object_detection.inputs import BatchInput
from object_detection.instances import keypoint_visible

IMAGE_IDS_NAME = "image_ids.json"
COCO_LAYOUT = 1  # one result a line


class CocoError(DetectionError, ValueError):
    """A ground-truth file that cannot be used, a photo that is not in it, or a result
    document that cannot be made into COCO results."""


@dataclass(frozen=True)
class NumberedImage:
    image_id: int
    path: Path  # as the run names it
    name: Path  # relative to the inputs' common folder (what OUTPUT_DIR mirrors)


class ImageIds:
    """COCO image ids for a run's photos: the ground truth's when a file is given, else 1..N
    in the order `assign` is called. Remembers every photo numbered."""

    def __init__(self, ground_truth: Path | None = None) -> None:
        self.ground_truth = ground_truth
        self.images: list[NumberedImage] = []
        self._by_path: dict[str, int] = {}
        self._by_base_name: dict[str, list[int]] = {}
        self._taken: dict[int, Path] = {}  # ground-truth ids given so far, and to which photo
        if ground_truth is not None:
            for image_id, file_name in _gt_images(ground_truth):
                self._by_path[posixpath.normpath(file_name)] = image_id
                self._by_base_name.setdefault(posixpath.basename(file_name), []).append(image_id)

    def assign(self, path: Path, name: Path) -> int:
        """The photo's id. Raises CocoError when a ground truth is given and the photo is not
        one of its images (or its base name is several), or is the image another photo of the
        run already is: their detections would be scored as one photo's."""
        image_id = len(self.images) + 1 if self.ground_truth is None else self._gt_id(name)
        if image_id in self._taken:
            raise CocoError(
                f"{name} is image {image_id} of {self.ground_truth}, and so is "
                f"{self._taken[image_id]}: name the photos by their paths in it"
            )
        self._taken[image_id] = path
        self.images.append(NumberedImage(image_id, path, name))
        return image_id

    def _gt_id(self, name: Path) -> int:
        relative = posixpath.normpath(name.as_posix())
        if relative in self._by_path:
            return self._by_path[relative]
        candidates = self._by_base_name.get(name.name, [])
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise CocoError(
                f"{name} matches several images of {self.ground_truth} by base name (ids "
                f"{', '.join(map(str, candidates[:5]))}) and none by its path"
            )
        raise CocoError(f"{name} is not an image of {self.ground_truth} (no such file_name)")

    def id_map(self) -> list[dict[str, Any]]:
        """[{"id": 1, "path": "photos/a.jpg"}, ...]: which photo each id stands for."""
        return [{"id": image.image_id, "path": str(image.path)} for image in self.images]


def numbered(items: Iterable[BatchInput], ids: ImageIds) -> Iterator[BatchInput]:
    """The batch's inputs, each given its id on the way; one that has none (not in the ground
    truth) gets that as its problem, so it fails alone and the others go on."""
    for item in items:
        if item.problem is None:
            try:
                ids.assign(item.path, item.name)
            except CocoError as exc:
                item = replace(item, problem=str(exc))
        yield item


def coco_results(image_id: int, result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One result document's detections as COCO results for image `image_id`."""
    try:
        width, height = result["image"]["width"], result["image"]["height"]
        return [_coco_result(image_id, d, width, height) for d in result["detections"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CocoError(f"not a detection result ({type(exc).__name__}: {exc})") from None


def results_from_files(documents: Iterable[tuple[int, Path]]) -> list[dict[str, Any]]:
    """COCO results from result documents on disk, given as (image_id, path)."""
    results: list[dict[str, Any]] = []
    for image_id, path in documents:
        try:
            document = json.loads(path.read_bytes())
        except (OSError, ValueError, RecursionError) as exc:
            raise CocoError(f"{path}: cannot read the result ({exc})") from None
        try:
            results.extend(coco_results(image_id, document))
        except CocoError as exc:
            raise CocoError(f"{path}: {exc}") from None
    return results


def image_ids_path(output_json: Path) -> Path:
    """Beside one photo's COCO results: out/photo.json -> out/photo_image_ids.json."""
    return output_json.with_name(f"{output_json.stem}_{IMAGE_IDS_NAME}")


def _coco_result(
    image_id: int, detection: Mapping[str, Any], width: int, height: int
) -> dict[str, Any]:
    ymin, xmin, ymax, xmax = detection["box"]
    entry: dict[str, Any] = {
        "image_id": image_id,
        "category_id": detection["class_id"],
        "bbox": [
            round(xmin * width, 2),
            round(ymin * height, 2),
            round((xmax - xmin) * width, 2),
            round((ymax - ymin) * height, 2),
        ],
        "score": detection["score"],
    }
    if "mask" in detection:
        entry["segmentation"] = detection["mask"]
    if "keypoints" in detection:
        entry["keypoints"] = [
            value
            for x, y, score in detection["keypoints"]
            for value in (x, y, 2 if keypoint_visible(_score(score)) else 1)
        ]
    return entry


def _score(score: float | None) -> float:
    """A keypoint's score from the JSON, where null means the model gave none."""
    return float("nan") if score is None else score


def _gt_images(path: Path) -> list[tuple[int, str]]:
    """(id, file_name) of every image in a COCO annotations file."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise CocoError(f"{path}: cannot read it as JSON ({exc})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise CocoError(f"{path}: not COCO annotations (no 'images' list)")
    found = []
    for number, image in enumerate(images):
        image_id = image.get("id") if isinstance(image, dict) else None
        file_name = image.get("file_name") if isinstance(image, dict) else None
        if not isinstance(image_id, int) or isinstance(image_id, bool) or not file_name:
            raise CocoError(f"{path}: images[{number}] has no integer 'id' and 'file_name'")
        found.append((image_id, str(file_name)))
    return found
