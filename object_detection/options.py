"""What a detection request can be asked to do, and the defaults: a module of its own so the
CLI can declare its options (and answer --help) without importing the pipeline behind them."""

from __future__ import annotations

from dataclasses import dataclass

ENCODINGS = ("auto", "b64", "pixels")
# Pixel values for a DT_FLOAT / DT_HALF input: 0-255 (TF Object Detection API exports) or 0-1
# (TF Hub detectors).
INPUT_RANGES = ("0-255", "0-1")
OUTPUT_FORMATS = ("json", "coco")  # predict --format: the result document, or COCO results
COCO_RESULTS_NAME = "coco_results.json"  # a batch's COCO results, in OUTPUT_DIR
# Detections kept per image unless asked otherwise: 10x what the zoo's SSD models return (100)
# and 3x Faster R-CNN's (300), so a real model never reaches it, while an answer with a million
# rows above the threshold costs its numpy checks, not a million Python objects and JSON lines.
DEFAULT_MAX_BOXES = 1000


@dataclass(frozen=True)
class DetectOptions:
    min_score: float = 0.5
    max_boxes: int | None = DEFAULT_MAX_BOXES  # None: every detection above min_score
    encoding: str = "auto"  # auto: from the signature's input dtype
    signature_name: str | None = None  # None: serving_default, else the model's only one
    input_range: str = "0-255"  # pixel values for a float input: 0-255 or 0-1
    keep_raw: bool = True  # keep the server's full answer in the result
    max_side: int | None = None  # pixels: downscale so that neither side exceeds this
    keep_masks: bool = True  # write masks (COCO RLE) in the result; drawn either way
