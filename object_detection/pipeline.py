"""One image through a served detection model: load, encode, predict, post-process, write.

`detect()` is the library entry point. It holds no state of its own: the shared client
(`TFServingClient` for REST, `GrpcClient` for gRPC) keeps the connections and the cached model
metadata, so many threads can call `detect()` at once with one client. Both clients build a
request for an image in their own protocol and answer in REST's form, so nothing here depends
on the protocol.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from object_detection.detections import Detection, detections_from_outputs, first_instance
from object_detection.errors import OutputError
from object_detection.images import LoadedImage, load_image
from object_detection.instances import attach_instances, detection_json, without_instance_outputs
from object_detection.label_map import LabelMap
from object_detection.options import DetectOptions
from object_detection.plan import Plan, plan_for
from object_detection.strict_json import dumps_json
from tfserving.model_client import RequestForm

if TYPE_CHECKING:
    from tfserving.model_client import ModelClient

# The result document as written: its sections and the detections one a line, each output in
# raw_response one a line, the numbers inside them on that line (see dumps_json).
RESULT_LAYOUT = 2
_DEFAULTS = DetectOptions()


@dataclass
class DetectionResult:
    image: LoadedImage
    detections: list[Detection]
    model_name: str
    model_version: str
    plan: Plan  # the signature called, what was sent, how the answer was read
    request_bytes: int
    sent_size: tuple[int, int]  # (width, height) the model saw: smaller with max_side
    timing_ms: dict[str, float] = field(default_factory=dict)
    raw_response: dict[str, Any] | None = None
    keep_masks: bool = True  # masks in to_json() (COCO RLE); they are drawn either way

    @property
    def encoding(self) -> str:
        return self.plan.encoding

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "image": {
                "path": str(self.image.path),
                "width": self.image.width,
                "height": self.image.height,
            },
            "model": {
                "name": self.model_name,
                "version": self.model_version,
                "signature_name": self.plan.signature.name,
            },
            "request": {
                "encoding": self.encoding,
                "bytes": self.request_bytes,
                "file_sent_as_is": self.encoding == "b64" and self.image.sent_as_is,
                "sent_size": list(self.sent_size),
            },
            "timing_ms": self.timing_ms,
            "detections": [detection_json(d, self.keep_masks) for d in self.detections],
        }
        if self.raw_response is not None:
            result["raw_response"] = self.raw_response
        return result


def detect(
    client: ModelClient,
    image_path: str | Path,
    label_map: LabelMap,
    options: DetectOptions = _DEFAULTS,
) -> DetectionResult:
    """Detect objects in one image file. Raises ImageError or TFServingError subclasses."""
    started = time.perf_counter()
    metadata = client.metadata()
    plan = plan_for(
        metadata.signature(options.signature_name), options.encoding, options.input_range
    )
    image = load_image(image_path, decode=plan.encoding != "b64")  # b64: pixels only to draw
    loaded = time.perf_counter()

    body, sent_size = request_body(client, image, plan, options.max_side)
    encoded = time.perf_counter()

    response = client.predict(body, plan.columnar)
    answered = time.perf_counter()

    outputs = first_instance(response, plan.unbatched)
    detections = detections_from_outputs(
        outputs, image.width, image.height, label_map, options.min_score, options.max_boxes
    )
    detections = attach_instances(detections, outputs, image.size, sent_size)
    done = time.perf_counter()
    return DetectionResult(
        image=image,
        detections=detections,
        model_name=metadata.model_name,
        model_version=metadata.version,
        plan=plan,
        request_bytes=len(body),
        sent_size=sent_size,
        timing_ms={
            "load": _ms(loaded - started),
            "encode": _ms(encoded - loaded),
            "request": _ms(answered - encoded),
            "postprocess": _ms(done - answered),
            "total": _ms(done - started),
        },
        raw_response=without_instance_outputs(response) if options.keep_raw else None,
        keep_masks=options.keep_masks,
    )


def request_body(
    client: ModelClient, image: LoadedImage, plan: Plan, max_side: int | None = None
) -> tuple[bytes, tuple[int, int]]:
    """The predict request for one image in the client's protocol, and the (width, height) the
    model will see.

    A signature with a fixed height and width gets the picture stretched to it, as those
    models (Keras, EfficientDet-Lite) were trained; `max_side` shrinks what goes over the wire
    on the pixel path otherwise (a 12 MP photo is about 100 MB of JSON; the SSD models look at
    300x300 anyway). Boxes come back normalized, so they land on the original picture all the
    same. b64 sends the file's bytes as they are.
    """
    input_name, signature_name = plan.input.name, plan.signature.name
    form = RequestForm(plan.input.dtype, plan.unit_range, plan.columnar)
    if plan.encoding == "b64":
        return client.image_request(image.encoded(), input_name, signature_name, form), image.size
    picture = image.image
    if plan.fixed_size:
        if picture.size != plan.fixed_size:
            picture = picture.resize(plan.fixed_size, Image.Resampling.BILINEAR)
    elif max_side and max(picture.size) > max_side:
        picture = ImageOps.contain(picture, (max_side, max_side), Image.Resampling.BILINEAR)
    return client.image_request(np.asarray(picture), input_name, signature_name, form), (
        picture.size
    )


def annotated_image_path(output_json: Path) -> Path:
    """Beside the JSON: out/photo.json -> out/photo_annotated.jpg (never the input photo's name,
    even when the JSON is named after it in the same folder)."""
    return output_json.with_name(f"{output_json.stem}_annotated.jpg")


def write_json(result: DetectionResult, path: Path) -> None:
    write_document(result.to_json(), path)


def write_document(document: Any, path: Path, layout: int | None = RESULT_LAYOUT) -> None:
    """`document` as strict JSON (see dumps_json for `layout`), written atomically."""
    data = dumps_json(document, layout).encode() + b"\n"
    _write_atomically(path, lambda file: file.write(data))


def write_annotated_image(result: DetectionResult, path: Path) -> None:
    """JPEG with the boxes drawn; refuses to overwrite the input photo."""
    # realpath, not resolve(): resolve() raises on a symlink loop (Python < 3.13).
    if os.path.realpath(path) == os.path.realpath(result.image.path):
        raise OutputError(f"{path} is the input image: choose another output name")
    from object_detection.visualize import draw_detections  # ImageDraw, fonts: when drawing

    picture = draw_detections(result.image.image, result.detections)
    _write_atomically(path, lambda file: picture.save(file, "JPEG", quality=95, subsampling=0))


def _write_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Readers (and an interrupted run) see the old file or the whole new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        try:
            write(tmp)
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.chmod(tmp.name, 0o644)  # NamedTemporaryFile makes 0600 files
    os.replace(tmp.name, path)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
