"""Cold start of client.py: scripts run the seed's command once per photo, so for one photo the
start-up is most of the time.

    .venv/bin/python -m benchmarks.bench_cold_start

Whole processes, side by side in rounds (so machine load hits all alike), against the floor
every run pays: a Python that imports numpy, Pillow and urllib3 and does nothing else.
- `client.py --help`: target within 1.3x of the floor (nothing beyond the CLI's own modules).
- one b64 `predict` of image2.jpg against a warm local server (the encoded model, its first
  calls traced before timing), writing the JSON: target within 1.7x of the floor.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.measure import report_targets
from sidecar_testing.data import ENCODED_MODEL, IMAGE2, ROOT
from sidecar_testing.servers import LocalServer

ROUNDS = 11
HELP_TARGET = 1.3
PREDICT_TARGET = 1.7


# As a user's Python does by default (and pip does at install), the first run writes the project's
# bytecode cache and later runs load it; where PYTHONDONTWRITEBYTECODE is set (CI machines) every
# run would compile every module from source again, which no user pays.
ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def seconds(command: list[str]) -> float:
    """Wall time of one process, start to exit; it must succeed."""
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=ENV, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    floor = [sys.executable, "-c", "import numpy, PIL.Image, urllib3"]
    help_command = [sys.executable, "client.py", "--help"]
    with (
        LocalServer(ENCODED_MODEL, model_name="ssd") as server,
        tempfile.TemporaryDirectory() as out,
    ):
        output = str(Path(out) / "image2.json")
        predict = [sys.executable, "client.py", "--server_url", server.predict_url]
        predict += ["--image_path", str(IMAGE2), "--output_json", output]
        for _ in range(2):  # the model's first calls (tracing), the page cache, the bytecode cache
            seconds(predict)
        times: dict[str, list[float]] = {"floor": [], "help": [], "predict": []}
        for _ in range(ROUNDS):
            times["floor"].append(seconds(floor))
            times["help"].append(seconds(help_command))
            times["predict"].append(seconds(predict))
    median = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    for name, label in (
        ("floor", "import numpy, PIL.Image, urllib3"),
        ("help", "client.py --help"),
        ("predict", "client.py one b64 predict, warm server"),
    ):
        print(f"{label:<42}{median[name]:>8.0f} ms  (median of {ROUNDS})")
    help_ratio = median["help"] / median["floor"]
    predict_ratio = median["predict"] / median["floor"]
    return report_targets(
        [
            (
                f"--help within {HELP_TARGET}x of the floor",
                help_ratio <= HELP_TARGET,
                f"{help_ratio:.2f}x",
            ),
            (
                f"one predict within {PREDICT_TARGET}x of the floor",
                predict_ratio <= PREDICT_TARGET,
                f"{predict_ratio:.2f}x",
            ),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
