"""Detection models shaped like each kind of export users bring, built from the shared SSD.

The TF Object Detection API (TF1 and TF2), TF Hub and Keras export detectors with other inputs
(float pixels 0-255 or 0-1, fixed sizes, a batch of one, encoded bytes), other signatures
(`default` only), other outputs (unbatched, class names as strings, masks, keypoints). Those
exports can't be downloaded here, so each kind is made by wrapping the shared SSD's signature
with TensorFlow: the wrapper converts the input into the uint8 pixels the SSD takes and reshapes
its answer into the kind's outputs. The detections stay the SSD's, so every kind must find
image1.jpg's two dogs at the shared model's boxes.

Masks and keypoints are drawn from the boxes (an ellipse in each box, 17 points on a stick
figure in each box): what matters here is that they travel, not that they are learned.

    path = build_kind("hub_default", tmp_dir)   # tmp_dir/hub_default/1, a TF Serving base path
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from object_detection.label_map import coco_label_map
from sidecar_testing.data import ENCODED_MODEL, PIXEL_MODEL

MASK_SIZE = 15  # box-relative masks, as Mask R-CNN exports give them (theirs are 33x33)
FULL_MASK_DETECTIONS = 10  # full-image masks are H x W each: the kind returns fewer detections
# A stick figure inside each box, (y, x) as fractions of the box, in COCO's keypoint order
# (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles).
STICK_FIGURE = np.array(
    [
        [0.10, 0.50],
        [0.08, 0.45],
        [0.08, 0.55],
        [0.10, 0.40],
        [0.10, 0.60],
        [0.30, 0.35],
        [0.30, 0.65],
        [0.45, 0.25],
        [0.45, 0.75],
        [0.60, 0.20],
        [0.60, 0.80],
        [0.60, 0.40],
        [0.60, 0.60],
        [0.80, 0.40],
        [0.80, 0.60],
        [0.95, 0.40],
        [0.95, 0.60],
    ],
    np.float32,
)
KEYPOINT_SCORE = 0.9


def _ssd(base_path: Path = PIXEL_MODEL) -> tuple[object, Callable]:
    loaded = tf.saved_model.load(str(base_path / "1"))
    return loaded, loaded.signatures["serving_default"]


def _ellipses(height: int, width: int) -> tf.Tensor:
    """An (height, width) float mask: 1 inside the ellipse inscribed in the frame, else 0."""
    y = (tf.range(height, dtype=tf.float32) + 0.5) / height * 2 - 1
    x = (tf.range(width, dtype=tf.float32) + 0.5) / width * 2 - 1
    return tf.cast(y[:, None] ** 2 + x[None, :] ** 2 <= 1.0, tf.float32)


def _box_masks(boxes: tf.Tensor) -> tf.Tensor:
    """[B, N, MASK_SIZE, MASK_SIZE] box-relative masks, as the OD API's Mask R-CNN exports."""
    ellipse = _ellipses(MASK_SIZE, MASK_SIZE)
    return tf.broadcast_to(ellipse, tf.concat([tf.shape(boxes)[:2], [MASK_SIZE, MASK_SIZE]], 0))


def _image_masks(boxes: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """[B, N, H, W] masks over the whole image: the ellipse inscribed in each box."""
    y = (tf.cast(tf.range(height), tf.float32) + 0.5) / tf.cast(height, tf.float32)
    x = (tf.cast(tf.range(width), tf.float32) + 0.5) / tf.cast(width, tf.float32)
    ymin, xmin, ymax, xmax = (boxes[..., i, None, None] for i in range(4))
    cy, cx = (ymin + ymax) / 2, (xmin + xmax) / 2
    ry, rx = tf.maximum((ymax - ymin) / 2, 1e-6), tf.maximum((xmax - xmin) / 2, 1e-6)
    inside = ((y[:, None] - cy) / ry) ** 2 + ((x[None, :] - cx) / rx) ** 2 <= 1.0
    return tf.cast(inside, tf.float32)


def _keypoints(boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """[B, N, 17, 2] normalized (y, x) over the image and [B, N, 17] scores, as CenterNet."""
    figure = tf.constant(STICK_FIGURE)
    top_left, size = boxes[..., None, :2], boxes[..., None, 2:] - boxes[..., None, :2]
    points = top_left + size * figure
    scores = tf.fill(tf.shape(points)[:-1], KEYPOINT_SCORE)
    return points, scores


def _class_table() -> tuple[tf.Tensor, tf.Tensor]:
    """COCO ids -> display names, and -> made-up machine ids (TF Hub's names are '/m/...')."""
    labels = coco_label_map()
    names = [labels.label(class_id) if class_id in labels else "" for class_id in range(256)]
    return tf.constant(names), tf.constant([f"/m/coco{class_id}" for class_id in range(256)])


class _Wrapper(tf.Module):
    """Keeps the wrapped SSD (its variables) alive in the saved object graph."""

    def __init__(self, base_path: Path = PIXEL_MODEL) -> None:
        super().__init__()
        self.ssd, self.signature = _ssd(base_path)


def _save(module: tf.Module, signatures: dict[str, Callable], dest: Path) -> Path:
    version = dest / "1"
    tf.saved_model.save(module, str(version), signatures=signatures)
    return dest


def _pixels_kind(
    dtype: tf.DType, shape: list[int | None], scale: float, name: str = "input_tensor"
) -> Callable[[Path], Path]:
    """An export taking `dtype` pixels of `shape`, values 0-255 / scale."""

    def build(dest: Path) -> Path:
        module = _Wrapper()

        @tf.function(input_signature=[tf.TensorSpec(shape, dtype, name=name)])
        def serve(images):
            pixels = tf.cast(
                tf.clip_by_value(tf.cast(images, tf.float32) * scale, 0, 255) + 0.5, tf.uint8
            )
            return module.signature(inputs=pixels)

        return _save(module, {"serving_default": serve.get_concrete_function()}, dest)

    return build


def _fixed_size(dest: Path) -> Path:
    """uint8 [1, 300, 300, 3], as Keras and EfficientDet-Lite exports: the client resizes."""
    return _pixels_kind(tf.uint8, [1, 300, 300, 3], 1.0)(dest)


def _encoded_batch1(dest: Path) -> Path:
    """DT_STRING [1]: a TF2 OD API encoded_image_string_tensor export (one image a call)."""
    module = _Wrapper(ENCODED_MODEL)

    @tf.function(input_signature=[tf.TensorSpec([1], tf.string, name="input_tensor")])
    def serve(images):
        return module.signature(inputs=images)

    return _save(module, {"serving_default": serve.get_concrete_function()}, dest)


def _hub_default(dest: Path) -> Path:
    """TF Hub's detector form: signature `default` only, float [1, H, W, 3] in [0, 1], outputs
    without a batch dimension, class names as strings, no detection_classes."""
    module = _Wrapper()
    module.entities, module.names = (tf.Variable(t, trainable=False) for t in _class_table())

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32, name="images")])
    def serve(images):
        pixels = tf.cast(tf.clip_by_value(images * 255.0, 0, 255) + 0.5, tf.uint8)
        out = module.signature(inputs=pixels)
        ids = tf.cast(out["detection_classes"][0], tf.int64)
        return {
            "detection_boxes": out["detection_boxes"][0],
            "detection_scores": out["detection_scores"][0],
            "detection_class_labels": ids,
            "detection_class_entities": tf.gather(module.entities, ids),
            "detection_class_names": tf.gather(module.names, ids),
        }

    return _save(module, {"default": serve.get_concrete_function()}, dest)


def _with_extra_outputs(extra: Callable[[dict, tf.Tensor], dict]) -> Callable[[Path], Path]:
    """The pixel SSD's signature with outputs added from its boxes (masks, keypoints)."""

    def build(dest: Path) -> Path:
        module = _Wrapper()

        @tf.function(
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="inputs")]
        )
        def serve(images):
            out = dict(module.signature(inputs=images))
            out.update(extra(out, images))
            return out

        return _save(module, {"serving_default": serve.get_concrete_function()}, dest)

    return build


def _box_mask_outputs(out: dict, images: tf.Tensor) -> dict:
    return {"detection_masks": _box_masks(out["detection_boxes"])}


def _image_mask_outputs(out: dict, images: tf.Tensor) -> dict:
    """The best FULL_MASK_DETECTIONS only, each with an H x W mask of the image sent."""
    kept = {
        key: value[:, :FULL_MASK_DETECTIONS]
        for key, value in out.items()
        if key != "num_detections"
    }
    kept["num_detections"] = tf.minimum(out["num_detections"], FULL_MASK_DETECTIONS)
    shape = tf.shape(images)
    kept["detection_masks"] = _image_masks(kept["detection_boxes"], shape[1], shape[2])
    return kept


def _keypoint_outputs(out: dict, images: tf.Tensor) -> dict:
    points, scores = _keypoints(out["detection_boxes"])
    return {"detection_keypoints": points, "detection_keypoint_scores": scores}


def _tf1(dest: Path) -> Path:
    """A TF1-format SavedModel: a frozen graph (weights as constants, no variables, no object
    graph) and a signature, as the TF1 zoo's exports such as the seed's
    faster_rcnn_resnet101_coco_2018_01_28 are."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    _, signature = _ssd()
    frozen = convert_variables_to_constants_v2(signature)
    [image] = frozen.inputs
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        tf.compat.v1.import_graph_def(frozen.graph.as_graph_def(), name="")
        # The frozen function's outputs are the signature's, flattened: in sorted name order.
        outputs = {
            name: graph.get_tensor_by_name(tensor.name)
            for name, tensor in zip(
                sorted(signature.structured_outputs), frozen.outputs, strict=True
            )
        }
        definition = tf.compat.v1.saved_model.signature_def_utils.predict_signature_def(
            {"inputs": graph.get_tensor_by_name(image.name)}, outputs
        )
        builder = tf.compat.v1.saved_model.Builder(str(dest / "1"))
        builder.add_meta_graph_and_variables(
            session, ["serve"], signature_def_map={"serving_default": definition}
        )
        builder.save()
    return dest


KINDS: dict[str, Callable[[Path], Path]] = {
    "tf1_saved_model": _tf1,
    "uint8_batch1": _pixels_kind(tf.uint8, [1, None, None, 3], 1.0),
    "encoded_batch1": _encoded_batch1,
    "float_0_255": _pixels_kind(tf.float32, [1, None, None, 3], 1.0),
    "half_0_255": _pixels_kind(tf.float16, [1, None, None, 3], 1.0),
    "float_0_1": _pixels_kind(tf.float32, [None, None, None, 3], 255.0, name="images"),
    "hub_default": _hub_default,
    "fixed_300": _fixed_size,
    "box_masks": _with_extra_outputs(_box_mask_outputs),
    "image_masks": _with_extra_outputs(_image_mask_outputs),
    "keypoints": _with_extra_outputs(_keypoint_outputs),
}


def build_kind(kind: str, root: Path) -> Path:
    """root/KIND, a TF Serving base path holding version 1 of the kind (built once)."""
    dest = root / kind
    if not (dest / "1").is_dir():
        KINDS[kind](dest)
    return dest
