"""How `predict` talks to one signature: what it sends, and how it reads the answer.

Detection exports differ in both (docs/client.md has the table):
- the input: DT_UINT8 pixels, DT_STRING encoded files, DT_FLOAT / DT_HALF pixels holding 0-255
  (TF Object Detection API float exports) or 0-1 (TF Hub); a fixed height and width (Keras,
  EfficientDet-Lite) gets the picture resized to it; a batch dimension of any size, since
  every request holds one image;
- the outputs: with a batch dimension (`detection_boxes` [B, N, 4]) or without ([N, 4], TF
  Hub), class ids (`detection_classes`, or TF Hub's `detection_class_labels`) and class names
  from the model itself (`detection_class_entities`, `detection_class_names`).
All of it is read from the signature's metadata, once, before the first request, so that the
request has the one format TF Serving can answer: its row format (`instances`) needs every
output to have the batch dimension; an output without one needs the columnar `inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass

from object_detection.detections import CLASS_ID_OUTPUTS, CLASS_NAME_OUTPUTS
from tfserving.errors import UnfeedableInput
from tfserving.metadata import Signature, TensorSpec
from tfserving.model_client import NO_JSON_FORM

ENCODING_FOR_DTYPE = {
    "DT_STRING": "b64",
    "DT_UINT8": "pixels",
    "DT_FLOAT": "pixels",
    "DT_HALF": "pixels",
}
FLOAT_INPUTS = ("DT_FLOAT", "DT_HALF")
# The rank of each output a detection model's answer is read from, with a batch dimension.
BATCHED_RANKS = {
    "detection_boxes": 3,
    "detection_scores": 2,
    "detection_classes": 2,
    "detection_class_labels": 2,
    "detection_class_entities": 2,
    "detection_class_names": 2,
    "num_detections": 1,
    "detection_masks": 4,
    "detection_keypoints": 4,
    "detection_keypoint_scores": 3,
}


def choose_encoding(image_input: TensorSpec, requested: str = "auto") -> str:
    """b64 for a DT_STRING input, pixels for DT_UINT8, DT_FLOAT and DT_HALF; an explicit choice
    always wins."""
    if requested != "auto":
        return requested
    try:
        return ENCODING_FOR_DTYPE[image_input.dtype]
    except KeyError:
        raise UnfeedableInput(
            f"input {image_input.name!r} is {image_input.dtype}; this client sends images as "
            "DT_UINT8, DT_FLOAT or DT_HALF pixels or DT_STRING encoded bytes"
        ) from None


@dataclass(frozen=True)
class Plan:
    """One signature as `predict` uses it."""

    signature: Signature
    encoding: str  # "b64" (the file's bytes) or "pixels"
    input_range: str  # pixels into a float input: "0-255" or "0-1"
    fixed_size: tuple[int, int] | None  # (width, height) the input demands
    unbatched: frozenset[str]  # outputs read without a batch dimension

    @property
    def input(self) -> TensorSpec:
        return self.signature.image_input

    @property
    def columnar(self) -> bool:
        """Send `inputs`, not `instances`: TF Serving can't answer some outputs row by row."""
        return bool(self.unbatched)

    @property
    def float_input(self) -> bool:
        return self.encoding == "pixels" and self.input.dtype in FLOAT_INPUTS

    @property
    def unit_range(self) -> bool:
        return self.float_input and self.input_range == "0-1"

    def outputs_named(self, candidates: tuple[str, ...]) -> str | None:
        names = {spec.name for spec in self.signature.outputs}
        return next((name for name in candidates if name in names), None)

    def describe(self) -> list[str]:
        """What predict sends and how it reads the answer, for `client.py metadata`."""
        if self.encoding == "b64":
            sent = f'the image file\'s bytes as {{"b64": ...}} to {self.input.name!r}'
        else:
            values = "0-1" if self.unit_range else "0-255"
            if self.float_input and not self.unit_range:
                values += " (--input_range 0-1 for 0-1)"
            sent = f"RGB pixels as {self.input.dtype} {values} to {self.input.name!r}"
            if self.input.dtype in NO_JSON_FORM:
                sent += f" (gRPC only: TF Serving's REST API takes no {self.input.dtype})"
            if self.fixed_size:
                sent += ", resized to {}x{}".format(*self.fixed_size)
        request = "columnar 'inputs'" if self.columnar else "row 'instances'"
        lines = [f"predict sends: {sent}, one image a request ({request} over REST)"]
        batch = "without" if self.unbatched else "with"
        ids = self.outputs_named(CLASS_ID_OUTPUTS)
        names = self.outputs_named(CLASS_NAME_OUTPUTS)
        classes = f"names from {names}" if names else "names from the label map"
        if ids:
            classes = f"ids from {ids}, {classes}"
        extras = [
            what
            for what, output in (("masks", "detection_masks"), ("keypoints", "detection_keypoints"))
            if self.outputs_named((output,))
        ]
        lines.append(
            f"predict reads: detection_boxes and detection_scores {batch} a batch dimension, "
            f"class {classes}" + (f", {' and '.join(extras)}" if extras else "")
        )
        return lines


def plan_for(signature: Signature, encoding: str = "auto", input_range: str = "0-255") -> Plan:
    """The plan for one signature; UnfeedableInput when no image fits its input."""
    image_input = signature.image_input
    chosen = choose_encoding(image_input, encoding)
    return Plan(
        signature=signature,
        encoding=chosen,
        input_range=input_range,
        fixed_size=_fixed_size(image_input) if chosen == "pixels" else None,
        unbatched=frozenset(
            spec.name
            for spec in signature.outputs
            if spec.shape is not None and len(spec.shape) == BATCHED_RANKS.get(spec.name, 0) - 1
        ),
    )


def _fixed_size(image_input: TensorSpec) -> tuple[int, int] | None:
    """(width, height) of a [B, H, W, C] input whose H and W are fixed."""
    shape = image_input.shape
    if shape is None or len(shape) != 4 or shape[1] <= 0 or shape[2] <= 0:
        return None
    return shape[2], shape[1]
