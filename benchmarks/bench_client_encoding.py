"""Benchmark: building one predict request for a photo, the seed's way against ours.

From the image file to the request body, for ../shared/images/image2.jpg (1352x900, 1.4 MB):
- seed:    Image.open + np.array(image.getdata()) + json.dumps({"instances": [array.tolist()]})
- pixels:  our load_image (decode, EXIF, RGB) + pixels_request (JSON text built with numpy)
- b64:     our load_image + b64_request (the JPEG file's own bytes, base64)
Each is run --repeat times, side by side in one process; the median is reported. The pixel
body is checked to hold exactly the seed's pixel values before anything is timed.

Targets: pixel path at least 10x faster than the seed's way; b64 body at most 1.4x the JPEG.

    .venv/bin/python -m benchmarks.bench_client_encoding [--image PATH] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.measure import report_targets
from object_detection.images import load_image
from sidecar_testing.data import IMAGE2
from tfserving.encoding import b64_request, pixels_request

DEFAULT_IMAGE = IMAGE2
SPEED_TARGET = 10.0  # pixel path vs the seed's way
B64_SIZE_TARGET = 1.4  # b64 body vs the JPEG file
SIGNATURE = "serving_default"


def seed_body(path: Path) -> bytes:
    """The seed client's encoding, as it was written."""
    image = Image.open(path)
    width, height = image.size
    with warnings.catch_warnings():  # getdata() is deprecated in recent Pillow; the seed used it
        warnings.simplefilter("ignore", DeprecationWarning)
        array = np.array(image.getdata()).reshape((height, width, 3)).astype(np.uint8)
    return json.dumps({"instances": [array.tolist()]}).encode()


def pixels_body(path: Path) -> bytes:
    return pixels_request(load_image(path).pixels(), SIGNATURE)


def b64_body(path: Path) -> bytes:
    return b64_request(load_image(path).encoded(), SIGNATURE)


def median_seconds(build: Callable[[Path], bytes], path: Path, repeat: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        size = len(build(path))
        times.append(time.perf_counter() - started)
    return statistics.median(times), size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    ours = np.array(json.loads(pixels_body(args.image))["instances"][0], np.uint8)
    seed = np.array(json.loads(seed_body(args.image))["instances"][0], np.uint8)
    assert np.array_equal(ours, seed), "the pixel bodies differ"

    jpeg_size = args.image.stat().st_size
    width, height = Image.open(args.image).size
    print(f"{args.image.name}: {width}x{height}, {jpeg_size:,} bytes; median of {args.repeat} runs")
    seed_time, seed_size = median_seconds(seed_body, args.image, args.repeat)
    rows = [("seed: getdata + tolist + json.dumps", seed_time, seed_size)]
    rows.append(
        ("ours: pixels (numpy-built JSON)", *median_seconds(pixels_body, args.image, args.repeat))
    )
    rows.append(
        ("ours: b64 (the JPEG's own bytes)", *median_seconds(b64_body, args.image, args.repeat))
    )

    print(f"{'path':<38}{'time ms':>9}{'x faster':>10}{'body bytes':>13}{'x seed':>8}{'x JPEG':>8}")
    for name, seconds, size in rows:
        print(
            f"{name:<38}{seconds * 1000:>9.1f}{seed_time / seconds:>10.1f}{size:>13,}"
            f"{size / seed_size:>8.2f}{size / jpeg_size:>8.2f}"
        )

    speedup = seed_time / rows[1][1]
    b64_ratio = rows[2][2] / jpeg_size
    checks = [
        (f"pixel path >= {SPEED_TARGET:g}x faster than the seed's way", speedup >= SPEED_TARGET,
         f"{speedup:.1f}x"),
        (f"b64 body <= {B64_SIZE_TARGET}x the JPEG", b64_ratio <= B64_SIZE_TARGET,
         f"{b64_ratio:.3f}x"),
    ]  # fmt: skip
    return report_targets(checks)


if __name__ == "__main__":
    sys.exit(main())
