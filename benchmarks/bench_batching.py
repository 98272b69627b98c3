"""Server-side batching (--enable_batching) against none: throughput and latency under load.

    .venv/bin/python -m benchmarks.bench_batching [--seconds 5]

For each shared model, two local servers run side by side, one without batching and one with
--enable_batching (BATCHING below), and `client.py bench`'s closed loop (tfserving.loadtest:
`concurrency` workers, each sending its next request once its answer is in) drives each at
concurrency 1, 4 and 16 for `--seconds`, the two servers taking turns at each concurrency so
machine load hits both alike. Requests are REST, as client.py sends them: image1.jpg's pixels
(1024x636, compact JSON) to the pixel model, its JPEG bytes as {"b64"} to the encoded model.

There is no target: the figures are reported (with the machine's load average before and
after, since the machine may be shared). The exit code is 1 only if a request failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from PIL import Image

from sidecar_testing.data import ENCODED_MODEL, IMAGE1, PIXEL_MODEL
from sidecar_testing.servers import LocalServer
from tfserving.client import TFServingClient
from tfserving.loadtest import run_bench

CONCURRENCY = (1, 4, 16)
# TF Serving's advice for CPUs (batching/README.md): no timeout (a batch is whatever gathered
# while the threads were busy), one batch thread per core (the default).
BATCHING = "max_batch_size { value: 16 } batch_timeout_micros { value: 0 }"


def servers(stack: ExitStack, base_path: Path, parameters: Path) -> dict[str, LocalServer]:
    """The model served without and with batching, both started before either is waited for
    (their loads overlap)."""
    batching = ["--enable_batching", f"--batching_parameters_file={parameters}"]
    started = {
        "off": LocalServer(base_path, model_name="bench"),
        "on": LocalServer(base_path, model_name="bench", extra_args=batching),
    }
    for server in started.values():
        stack.callback(server.__exit__, None, None, None)
        server.launch()
    for server in started.values():
        server.wait_until_listening()
    return started


def measure(model: str, base_path: Path, image, parameters: Path, seconds: float) -> list[dict]:
    """Figures of both servers at each concurrency, taking turns."""
    rows = []
    with ExitStack() as stack:
        by_mode = servers(stack, base_path, parameters)
        clients = {
            mode: stack.enter_context(TFServingClient(server.spec, timeout=120))
            for mode, server in by_mode.items()
        }
        body = clients["off"].image_request(image, "inputs", "serving_default")
        for concurrency in CONCURRENCY:
            for mode, client in clients.items():
                result = run_bench(
                    client, [body], concurrency, duration=seconds, warmup=concurrency
                )
                rows.append({"model": model, "batching": mode, **result.summary()})
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        f"{'model':<9} {'concurrency':>11} {'batching':>9} {'req/s':>7} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'requests':>9} {'req/s on/off':>13}"
    )
    off = {(r["model"], r["concurrency"]): r for r in rows if r["batching"] == "off"}
    for row in rows:
        latency = row["latency_ms"]
        ratio = ""
        if row["batching"] == "on":
            before = off[row["model"], row["concurrency"]]["throughput_rps"]
            ratio = f"{row['throughput_rps'] / before:.2f}x" if before else "-"
        print(
            f"{row['model']:<9} {row['concurrency']:>11} {row['batching']:>9} "
            f"{row['throughput_rps']:>7.1f} {latency['p50']:>8.1f} {latency['p99']:>8.1f} "
            f"{row['requests']:>9} {ratio:>13}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per figure")
    args = parser.parse_args()

    load_before = os.getloadavg()
    pixels = np.asarray(Image.open(IMAGE1).convert("RGB"))
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as workdir:
        parameters = Path(workdir) / "batching.txt"
        parameters.write_text(BATCHING)
        rows = measure("pixels", PIXEL_MODEL, pixels, parameters, args.seconds)
        rows += measure("b64", ENCODED_MODEL, IMAGE1.read_bytes(), parameters, args.seconds)

    print(f"image: {IMAGE1.name} over REST, {args.seconds:g} s per figure; batching: {BATCHING}")
    print_table(rows)
    print(
        f"load average (1 min) before: {load_before[0]:.2f}, after: {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} cores"
    )
    errors = {r["model"] + " " + r["batching"]: r["errors"] for r in rows if r["errors"]}
    if errors:
        print(f"errors: {errors}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
