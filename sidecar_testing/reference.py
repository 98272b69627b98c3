"""The shared models called in-process: the answer a server running the same graph must give.

The models are quantized, so their scores differ from CPU to CPU (../shared/README.md); a
score hard-coded on one machine fails on the next. The same model called here, on the same
machine, is the reference the local server and client.py must match exactly.
TensorFlow is imported on first use only: most tests never need it in the test process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sidecar_testing.data import COCO_DOG, LEFT_DOG, RIGHT_DOG


class ModelReference:
    """The shared models called in-process on this machine: what a server running the same
    graph must answer, whatever the CPU (the quantized models give other scores elsewhere)."""

    def __init__(self) -> None:
        # The loaded SavedModel is kept beside its signature: the signature alone does not keep
        # the model's variables alive.
        self._signatures: dict[Path, tuple[Any, Any]] = {}

    def signature(self, base_path: Path) -> Any:
        """The `serving_default` signature of the model's version 1, loaded once."""
        if base_path not in self._signatures:
            import tensorflow as tf

            loaded = tf.saved_model.load(str(base_path / "1"))
            self._signatures[base_path] = (loaded, loaded.signatures["serving_default"])
        return self._signatures[base_path][1]

    def outputs(self, base_path: Path, image: str | Path) -> dict[str, np.ndarray]:
        """The model's outputs for one image, fed as the client feeds it: the decoded upright
        RGB pixels to the pixel model, the bytes the client sends to the encoded one."""
        import tensorflow as tf

        from object_detection.images import load_image

        loaded = load_image(image)
        signature = self.signature(base_path)
        if signature.structured_input_signature[1]["inputs"].dtype == tf.string:
            tensor = tf.constant([loaded.encoded()])
        else:
            tensor = tf.constant(loaded.pixels()[None])
        return {name: value.numpy()[0] for name, value in signature(inputs=tensor).items()}

    def detections(self, base_path: Path, image: str | Path, min_score: float = 0.5) -> list[dict]:
        """[{class_id, score, box}] scoring at least min_score, best first, boxes clipped to
        0..1: the fields client.py writes."""
        out = self.outputs(base_path, image)
        order = np.argsort(-out["detection_scores"], kind="stable")
        return [
            {
                "class_id": round(float(out["detection_classes"][i])),
                "score": float(out["detection_scores"][i]),
                "box": np.clip(out["detection_boxes"][i], 0.0, 1.0).tolist(),
            }
            for i in order
            if out["detection_scores"][i] >= min_score
        ]

    def assert_matches(
        self, detections: list[dict], base_path: Path, image: str | Path, min_score: float = 0.5
    ) -> None:
        """client.py's detections are the in-process model's, up to the JSON's 4 decimals."""
        expected = self.detections(base_path, image, min_score)
        assert [d["class_id"] for d in detections] == [e["class_id"] for e in expected]
        for got, want in zip(detections, expected, strict=True):
            assert got["score"] == pytest.approx(want["score"], abs=1e-4)
            assert got["box"] == pytest.approx(want["box"], abs=1e-4)


def assert_two_dogs(result: dict, tolerance: float = 0.02) -> list[dict]:
    """client.py's result on image1.jpg: the two beagles first, where ../shared/README.md puts
    them (any CPU, any export kind of the same model); returned left one first."""
    left, right = sorted(result["detections"][:2], key=lambda d: d["box"][1])
    assert (left["label"], right["label"]) == ("dog", "dog")
    assert (left["class_id"], right["class_id"]) == (COCO_DOG, COCO_DOG)
    assert all(0.5 <= dog["score"] < 0.8 for dog in (left, right))
    assert left["box"] == pytest.approx(LEFT_DOG, abs=tolerance)
    assert right["box"] == pytest.approx(RIGHT_DOG, abs=tolerance)
    height, width = result["image"]["height"], result["image"]["width"]
    scale = [height, width, height, width]
    for dog in (left, right):
        expected = [value * size for value, size in zip(dog["box"], scale, strict=True)]
        assert dog["box_pixels"] == pytest.approx(expected, abs=1)
    return [left, right]
