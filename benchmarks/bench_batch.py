"""Benchmark: a folder of photos through the local server, the seed's way against ours.

    .venv/bin/python -m benchmarks.bench_batch [--copies 16] [--rounds 3] [--repeats 15]
                                               [--rss-images 500]

All in one run, on the 2-core machine where the server and the client share the CPU:

1. 32 photos (16 copies each of ../shared/images/image1.jpg and image2.jpg):
   - seed-style: one at a time, Image.open + np.array(getdata()) + json.dumps(tolist()), a new
     connection per request (requests.post), the answer written as JSON. The seed's client
     sends pixels, so this baseline runs on the pixel model.
   - ours: `predict` on the folder (the library call behind `client.py predict DIR
     --output_dir OUT --workers N`) with --workers 1 and 4, on the pixel model and on the
     model re-exported by `python -m serving.reexport` (b64 JPEG bytes).
   Both sides run in this process (no interpreter start-up on either side) after one
   warm-up request to each server; each way runs once per round, medians of --rounds (3).
2. b64 end to end against the pure model call, per photo (median of --repeats, alternated so
   machine load hits both alike): the pure call is the re-exported SavedModel called in this
   process on the JPEG bytes; end to end is `detect()` (file read and checked, b64 body, HTTP,
   the server's decode and model call, JSON answer, detections) over a keep-alive connection.
3. Client peak RSS, `client.py predict DIR --output_dir OUT --workers 4` on 500 images
   against 20 (hard links to image1.jpg, re-exported model), each in a fresh process
   (getrusage of a waited-for child).

Targets: 1. workers 4 >= 5x faster than seed-style on the pixel model and >= 20x on the
re-exported model; 2. b64 p50 <= 1.5x the pure model call; 3. RSS(500) <= 1.5x RSS(20).
Exit code 0 only when every target is met.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests

from benchmarks.bench_client_encoding import seed_body
from benchmarks.measure import medians_side_by_side, report_targets
from object_detection.batch import BatchOptions, run_batch
from object_detection.inputs import iter_inputs
from object_detection.label_map import load_label_map
from object_detection.options import DetectOptions
from object_detection.pipeline import detect
from sidecar_testing.data import IMAGE1, IMAGE2, PIXEL_MODEL, ROOT, SHARED_LABELS
from sidecar_testing.servers import LocalServer
from tfserving.client import TFServingClient
from tfserving.spec import ServerSpec

TARGETS = {"pixel": 5.0, "reexport": 20.0}
B64_TARGET = 1.5
RSS_TARGET = 1.5
MODEL = "bench"


def photo_folder(directory: Path, copies: int) -> Path:
    """`copies` hard links to each shared photo (the files are read, never written)."""
    directory.mkdir(parents=True)
    for index in range(copies):
        for image in (IMAGE1, IMAGE2):
            os.link(image, directory / f"{image.stem}_{index:03}.jpg")
    return directory


def reexport(directory: Path) -> Path:
    """The pixel model re-exported to take JPEG bytes, as a base path."""
    base = directory / "ssd_jpeg"
    subprocess.run(
        [sys.executable, "-m", "serving.reexport", str(PIXEL_MODEL / "1"), str(base), "--version",
         "1"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    return base


def seed_style(folder: Path, predict_url: str, output: Path) -> float:
    """The seed client's loop as it was written: seconds for the whole folder."""
    output.mkdir()
    start = time.perf_counter()
    for path in sorted(folder.iterdir()):
        response = requests.post(predict_url, data=seed_body(path))  # a new connection each time
        response.raise_for_status()
        (output / f"{path.stem}.json").write_text(json.dumps(response.json()))
    return time.perf_counter() - start


def ours(folder: Path, server: LocalServer, output: Path, workers: int) -> float:
    """`client.py predict FOLDER --output_dir OUTPUT --workers N`, minus the progress bar."""
    labels = load_label_map(SHARED_LABELS)
    spec = ServerSpec.from_url(server.predict_url)
    start = time.perf_counter()
    with TFServingClient(spec, pool_size=workers) as client:
        tally = run_batch(
            client,
            iter_inputs([str(folder)], exclude=output),
            labels,
            DetectOptions(),
            BatchOptions(output, workers=workers),
        )
    seconds = time.perf_counter() - start
    assert tally.error == 0, f"{tally.error} images failed"
    return seconds


def warm_up(server: LocalServer) -> None:
    """One request first: the server's first model call traces the graph."""
    with TFServingClient(ServerSpec.from_url(server.predict_url)) as client:
        detect(client, IMAGE1, load_label_map(SHARED_LABELS))


def folder_runs(work: Path, folder: Path, jpeg_base: Path, rounds: int) -> dict[str, float]:
    """Median seconds of each way over `rounds` rounds; in each round every way runs once, so
    that other load on the machine falls on all of them alike."""
    times: dict[str, list[float]] = {}
    with (
        LocalServer(PIXEL_MODEL, model_name=MODEL) as pixel,
        LocalServer(jpeg_base, model_name=MODEL) as jpeg,
    ):
        ways: dict[str, Callable[[Path], float]] = {
            "seed-style, pixel model": lambda out: seed_style(folder, pixel.predict_url, out),
        }
        for server, model in ((pixel, "pixel model"), (jpeg, "re-exported model (b64)")):
            warm_up(server)
            for workers in (1, 4):
                ways[f"ours --workers {workers}, {model}"] = functools.partial(
                    ours, folder, server, workers=workers
                )
        for round_ in range(rounds):
            for index, (name, run) in enumerate(ways.items()):
                times.setdefault(name, []).append(run(work / f"out_{round_}_{index}"))
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def b64_against_model(jpeg_base: Path, repeats: int) -> list[tuple[str, float, float]]:
    """Per photo: median ms of the pure model call and of detect() end to end."""
    from serving.model import ServedModel  # TensorFlow: only this part needs it

    model = ServedModel.load(MODEL, jpeg_base)
    labels = load_label_map(SHARED_LABELS)
    rows = []
    with (
        LocalServer(jpeg_base, model_name=MODEL) as server,
        TFServingClient(ServerSpec.from_url(server.predict_url)) as client,
    ):
        for image in (IMAGE1, IMAGE2):
            jpeg = np.array([image.read_bytes()], dtype=object)

            def model_call(jpeg=jpeg) -> None:
                model.run("", {"inputs": jpeg})

            def end_to_end(image=image) -> None:
                detect(client, image, labels)

            model_ms, e2e_ms = medians_side_by_side(model_call, end_to_end, repeats)
            rows.append((image.name, model_ms, e2e_ms))
    return rows


def peak_rss_mb(command: list[str]) -> float:
    """Peak RSS of `command`, from getrusage in a fresh parent that waits only for it."""
    probe = (
        "import resource, subprocess, sys; "
        "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL).returncode; "
        "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *command], cwd=ROOT, capture_output=True, text=True
    )
    code, max_rss_kib = done.stdout.split()
    assert code == "0", f"{command} exited with {code}"
    return int(max_rss_kib) / 1024


def rss_runs(work: Path, jpeg_base: Path, counts: tuple[int, ...]) -> list[tuple[int, float]]:
    rows = []
    with LocalServer(jpeg_base, model_name=MODEL) as server:
        warm_up(server)
        for count in counts:
            folder = work / f"rss_{count}"
            folder.mkdir()
            for index in range(count):
                os.link(IMAGE1, folder / f"photo{index:05}.jpg")
            command = [
                sys.executable, "client.py", "--server_url", server.predict_url, str(folder),
                "--output_dir", str(work / f"rss_out_{count}"), "--workers", "4",
                "--label_map", str(SHARED_LABELS),
            ]  # fmt: skip
            rows.append((count, peak_rss_mb(command)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=16, help="copies of each shared photo")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each way on the folder")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per photo (b64)")
    parser.add_argument("--rss-images", type=int, default=500)
    args = parser.parse_args()
    checks = []
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        work = Path(tmp)
        folder = photo_folder(work / "photos", args.copies)
        jpeg_base = reexport(work)

        timings = folder_runs(work, folder, jpeg_base, args.rounds)
        seed = timings["seed-style, pixel model"]
        print(f"\n{2 * args.copies} photos ({args.copies} x image1.jpg 1024x636, "
              f"{args.copies} x image2.jpg 1352x900) through the local server, "
              f"median of {args.rounds} rounds")  # fmt: skip
        print(f"{'':<48}{'seconds':>9}{'photos/s':>10}{'x seed':>8}")
        for name, seconds in timings.items():
            print(f"{name:<48}{seconds:>9.2f}{2 * args.copies / seconds:>10.1f}"
                  f"{seed / seconds:>8.1f}")  # fmt: skip
        for model, target in (("pixel model", TARGETS["pixel"]),
                              ("re-exported model (b64)", TARGETS["reexport"])):  # fmt: skip
            speedup = seed / timings[f"ours --workers 4, {model}"]
            checks.append((f"--workers 4 on the {model} >= {target:g}x seed-style",
                           speedup >= target, f"{speedup:.1f}x"))  # fmt: skip

        print(f"\nb64 end to end (detect(): file to detections over HTTP) against the pure "
              f"model call (in process), median of {args.repeats}")  # fmt: skip
        print(f"{'photo':<12}{'model ms':>10}{'e2e ms':>9}{'ratio':>7}")
        for name, model_ms, e2e_ms in b64_against_model(jpeg_base, args.repeats):
            ratio = e2e_ms / model_ms
            print(f"{name:<12}{model_ms:>10.1f}{e2e_ms:>9.1f}{ratio:>6.2f}x")
            checks.append((f"b64 p50 on {name} <= {B64_TARGET}x the model call",
                           ratio <= B64_TARGET, f"{ratio:.2f}x"))  # fmt: skip

        small, large = rss_runs(work, jpeg_base, (20, args.rss_images))
        print("\nclient peak RSS, client.py predict DIR --workers 4 (re-exported model)")
        for count, megabytes in (small, large):
            print(f"{count:>5} images: {megabytes:.0f} MB")
        ratio = large[1] / small[1]
        checks.append((f"RSS({large[0]}) <= {RSS_TARGET}x RSS({small[0]})",
                       ratio <= RSS_TARGET, f"{ratio:.2f}x"))  # fmt: skip

    print()
    return report_targets(checks)


if __name__ == "__main__":
    sys.exit(main())
