"""gRPC against REST against the bare model call, through one local server serving both ports.

    .venv/bin/python -m benchmarks.bench_grpc [--repeats 20]

Each row times, side by side in rounds (benchmarks.measure), the SavedModel's signature called
in this process (the floor) and a predict through `python -m serving.local_server` with the
project's client library, from what the client has in memory to the parsed answer:
- pixels (uint8 model), from decoded pixels: image2.jpg (1352x900) and a 12 MP upscale of it
  (4000x3000). gRPC sends them as tensor_content (raw bytes), REST as JSON text;
- b64 (encoded model), from the file's bytes: the JPEG as a DT_STRING tensor, or `{"b64": ...}`.
Then `client.py bench` at concurrency 1 and 4 over both protocols (whole processes; figures
only), and the client's peak memory per in-flight 12 MP gRPC request (4 at once, a process of
its own, VmHWM) against the raw tensor's size.

Targets: gRPC pixels <= 1.3x the model call, gRPC b64 <= 1.15x, client peak memory per in-flight
12 MP request <= 3x the raw tensor.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image

from benchmarks.measure import medians_side_by_side, report_targets
from serving.model import ServedModel
from sidecar_testing.data import ENCODED_MODEL, IMAGE2, PIXEL_MODEL, ROOT
from sidecar_testing.servers import LocalServer
from tfserving.client import TFServingClient
from tfserving.grpc_client import GrpcClient
from tfserving.model_client import ModelClient

TARGETS = {"gRPC pixels": 1.3, "gRPC b64": 1.15}
MEMORY_TARGET = 3.0
TWELVE_MP = (4000, 3000)
IN_FLIGHT = 4

# A process of its own: 4 gRPC predicts of a 12 MP picture at once, its peak memory over what
# it held before the first request (the pixels, the modules, the channel).
MEMORY_PROBE = """
import sys, threading
import numpy as np
from PIL import Image
from tfserving.grpc_client import GrpcClient
from tfserving.model_client import ModelClient

def vm(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

target, model, image, width, height, count = sys.argv[1:]
pixels = np.asarray(Image.open(image).convert("RGB").resize((int(width), int(height))))
with GrpcClient(target, model, timeout=300) as client:
    client.status()
    before = vm("VmRSS:")
    def one():
        client.predict(client.image_request(pixels, "inputs", "serving_default"))
    threads = [threading.Thread(target=one) for _ in range(int(count))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
print(vm("VmHWM:") - before, pixels.nbytes)
"""


def side_by_side(label: str, model: ServedModel, tensor, request, repeats: int) -> dict:
    model_ms, request_ms = medians_side_by_side(
        lambda: model.run("", {"inputs": tensor}), request, repeats
    )
    return {"label": label, "model_ms": model_ms, "request_ms": request_ms}


@contextmanager
def both_protocols(server: LocalServer) -> Iterator[list[tuple[str, ModelClient]]]:
    """A gRPC and a REST client of the server's model, as (protocol, client) pairs."""
    with (
        GrpcClient(server.grpc_target, server.model_name, timeout=300) as over_grpc,
        TFServingClient(server.spec, timeout=300) as over_rest,
    ):
        yield [("gRPC", over_grpc), ("REST", over_rest)]


def predict_rows(server: LocalServer, model: ServedModel, repeats: int, pixels_by_name) -> list:
    """gRPC and REST rows for the pixel model, for each picture."""
    rows = []
    with both_protocols(server) as clients:
        for name, pixels in pixels_by_name.items():
            for protocol, client in clients:

                def request(client=client, pixels=pixels) -> None:
                    client.predict(client.image_request(pixels, "inputs", "serving_default"))

                label = f"{protocol} pixels" + ("" if name == IMAGE2.name else f" {name}")
                rows.append(side_by_side(label, model, pixels[np.newaxis], request, repeats))
    return rows


def b64_rows(server: LocalServer, model: ServedModel, repeats: int) -> list:
    jpeg = IMAGE2.read_bytes()
    rows = []
    with both_protocols(server) as clients:
        for protocol, client in clients:

            def request(client=client) -> None:
                client.predict(client.image_request(jpeg, "inputs", "serving_default"))

            tensor = np.array([jpeg], dtype=object)
            rows.append(side_by_side(f"{protocol} b64", model, tensor, request, repeats))
    return rows


def cli_bench(server: LocalServer) -> list[str]:
    """`client.py bench` at concurrency 1 and 4 over both protocols: throughput and p50."""
    lines = []
    for protocol, target in (("REST", server.predict_url), ("gRPC", server.grpc_url)):
        for concurrency in (1, 4):
            command = [sys.executable, "client.py", "bench", "--server_url", target]
            command += ["--model_name", server.model_name, "--requests", "40"]
            command += ["--concurrency", str(concurrency), "--json", str(IMAGE2)]
            out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
            figures = json.loads(out.stdout)
            lines.append(
                f"client.py bench {protocol:<4} concurrency {concurrency}: "
                f"{figures['throughput_rps']:.1f} requests/s, "
                f"p50 {figures['latency_ms']['p50']:.1f} ms, errors {figures['errors'] or 'none'}"
            )
    return lines


def memory_per_request(server: LocalServer) -> float:
    """Peak client memory per in-flight 12 MP gRPC request, in raw tensor sizes."""
    command = [sys.executable, "-c", MEMORY_PROBE, server.grpc_target, server.model_name]
    command += [str(IMAGE2), *map(str, TWELVE_MP), str(IN_FLIGHT)]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    grown, raw = map(int, out.stdout.split())
    return grown / IN_FLIGHT / raw


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed calls of each kind")
    args = parser.parse_args()

    picture = Image.open(IMAGE2).convert("RGB")
    pixels_by_name = {
        IMAGE2.name: np.asarray(picture),
        "12 MP": np.asarray(picture.resize(TWELVE_MP, Image.Resampling.BILINEAR)),
    }
    pixel_model = ServedModel.load("bench", PIXEL_MODEL)
    with LocalServer(PIXEL_MODEL, model_name="bench") as server:
        rows = predict_rows(server, pixel_model, args.repeats, pixels_by_name)
        bench_lines = cli_bench(server)
        memory = memory_per_request(server)
    encoded_model = ServedModel.load("bench", ENCODED_MODEL)
    with LocalServer(ENCODED_MODEL, model_name="bench") as server:
        rows += b64_rows(server, encoded_model, args.repeats)

    print(f"image: {IMAGE2.name} and a {TWELVE_MP[0]}x{TWELVE_MP[1]} upscale, median of "
          f"{args.repeats}")  # fmt: skip
    print(f"{'path':<22} {'model ms':>9} {'request ms':>11} {'ratio':>7} {'target':>7}")
    checks = []
    for row in rows:
        ratio = row["request_ms"] / row["model_ms"]
        target = TARGETS.get(row["label"])
        print(
            f"{row['label']:<22} {row['model_ms']:>9.1f} {row['request_ms']:>11.1f} "
            f"{ratio:>6.2f}x " + (f"{target:>6.2f}x" if target else f"{'-':>7}")
        )
        if target:
            checks.append((f"{row['label']} <= {target}x the model call", ratio <= target,
                           f"{ratio:.2f}x"))  # fmt: skip
    for line in bench_lines:
        print(line)
    checks.append(
        (
            f"client peak memory per in-flight 12 MP gRPC request <= {MEMORY_TARGET:g}x the raw "
            "tensor",
            memory <= MEMORY_TARGET,
            f"{memory:.2f}x",
        )
    )
    return report_targets(checks)


if __name__ == "__main__":
    sys.exit(main())
