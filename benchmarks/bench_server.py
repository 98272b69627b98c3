"""How much a request through the local server costs over the bare model call.

    .venv/bin/python -m benchmarks.bench_server [--repeats 15]

On ../shared/images/image2.jpg (1352x900), for the encoded model ({"b64"} JPEG) and for the pixel
model (3.6 million uint8 JSON integers, compact as client.py sends them, and with json.dumps's
", "), it times the pure model call (the floor on this machine: the SavedModel signature called
in this process) and a full HTTP predict through `python -m serving.local_server`, in interleaved
rounds so machine load hits both alike, and prints the medians and their ratio.
Targets: encoded <= 1.3x, pixels <= 6x.

Memory, from the server's /proc status: the peak RSS one request adds over the idle server, as
a multiple of its body (target: pixels within 7x), and the server's RSS after the timed calls
and 3.5 s idle, against its RSS once the model is loaded (target: within 250 MB of it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import requests
from PIL import Image

from benchmarks.measure import medians_side_by_side, report_targets
from serving.model import ServedModel
from sidecar_testing.data import ENCODED_MODEL, IMAGE2, PIXEL_MODEL
from sidecar_testing.servers import LocalServer
from tfserving.encoding import b64_request, pixels_request

# The targets are for what client.py sends; json.dumps's ", " body (what other clients
# send, 22 % bigger and through the slower whitespace path) is shown beside them for comparison.
TARGETS = {"encoded": 1.3, "pixels": 6.0}
PEAK_TARGET = 7.0  # peak RSS a pixel request adds, in bodies (the old server: ~10x)
IDLE_TARGET_MB = 250  # idle RSS after the bench over the RSS after loading
IDLE_S = 3.5  # the server returns freed memory after 2 s idle


def measure(label: str, base_path, tensor: np.ndarray, body: bytes, repeats: int) -> dict:
    """Median model-call and request times (ms), measured side by side."""
    model = ServedModel.load("bench", base_path)
    with LocalServer(base_path, model_name="bench") as server, requests.Session() as session:
        loaded_mb = server.rss_mb()

        def model_call() -> None:
            model.run("", {"inputs": tensor})

        def request() -> None:
            response = session.post(
                server.predict_url, data=body, headers={"Content-Type": "application/json"}
            )
            response.raise_for_status()

        model_median, request_median = medians_side_by_side(model_call, request, repeats)
        time.sleep(IDLE_S)
        idle_mb = server.rss_mb()
        server.reset_peak_rss()
        request()
        peak_mb = server.peak_rss_mb() - idle_mb
    return {
        "label": label,
        "body_mb": len(body) / 1e6,
        "model_ms": model_median,
        "request_ms": request_median,
        "ratio": request_median / model_median,
        "target": TARGETS.get(label),
        "peak_bodies": peak_mb / (len(body) / 2**20),
        "idle_over_loaded_mb": idle_mb - loaded_mb,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls of each kind")
    args = parser.parse_args()

    jpeg = IMAGE2.read_bytes()
    pixels = np.asarray(Image.open(IMAGE2).convert("RGB"))
    encoded_body = b64_request(jpeg, "serving_default")
    # What client.py sends (compact JSON), and what json.dumps sends by default (", ").
    pixel_body = pixels_request(pixels, "serving_default")
    spaced_body = json.dumps({"instances": [pixels.tolist()]}).encode()

    results = [
        measure(
            "encoded", ENCODED_MODEL, np.array([jpeg], dtype=object), encoded_body, args.repeats
        ),
        measure("pixels", PIXEL_MODEL, pixels[np.newaxis], pixel_body, args.repeats),
        measure("pixels, json.dumps", PIXEL_MODEL, pixels[np.newaxis], spaced_body, args.repeats),
    ]
    print(f"image: {IMAGE2.name} {pixels.shape[1]}x{pixels.shape[0]}, median of {args.repeats}")
    print(
        f"{'path':<19} {'body MB':>8} {'model ms':>9} {'request ms':>11} {'ratio':>6} {'target':>7}"
        f" {'peak/body':>10} {'idle-loaded MB':>15}"
    )
    for r in results:
        print(
            f"{r['label']:<19} {r['body_mb']:>8.2f} {r['model_ms']:>9.1f} "
            f"{r['request_ms']:>11.1f} {r['ratio']:>5.2f}x "
            + (f"{r['target']:>6.1f}x" if r["target"] else f"{'-':>7}")
            + f" {r['peak_bodies']:>9.1f}x {r['idle_over_loaded_mb']:>+15.0f}"
        )
    pixels = next(r for r in results if r["label"] == "pixels")
    return report_targets(
        [
            (
                f"{r['label']} <= {r['target']:.1f}x the model call",
                r["ratio"] <= r["target"],
                f"{r['ratio']:.2f}x",
            )
            for r in results
            if r["target"]
        ]
        + [
            (
                f"pixels: peak RSS of a request <= {PEAK_TARGET:.0f}x its body",
                pixels["peak_bodies"] <= PEAK_TARGET,
                f"{pixels['peak_bodies']:.1f}x",
            ),
            (
                f"idle RSS after the bench within {IDLE_TARGET_MB} MB of the loaded server",
                all(r["idle_over_loaded_mb"] <= IDLE_TARGET_MB for r in results),
                ", ".join(f"{r['idle_over_loaded_mb']:+.0f} MB" for r in results),
            ),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
