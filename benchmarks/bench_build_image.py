"""Benchmark: build_image.py on a 500 MB model — wall time and peak memory of the command.

The model (a saved_model.pb plus 500 MB of random bytes in variables/, so nothing compresses
or deduplicates) is made in a temporary dir; the base image is the tests' offline tiny image and
the push goes to a local `docker-registry` on 127.0.0.1, so the figures measure our streaming
and Docker, not the network. Target: peak RSS under 200 MB, i.e. the model never sits in memory.

For scale, the seed's manual route (docker create / cp / commit / rm with the docker CLI) is
timed on the same model in the same run.

    .venv/bin/python -m benchmarks.bench_build_image [--size-mb 500]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker

from benchmarks.measure import report_targets
from sidecar_testing.data import ROOT
from sidecar_testing.docker import LocalRegistry, import_tiny_base_image, remove_image

TARGET_RSS_MB = 200
BASE = "tfs-sidecar-bench/tiny-base:1"


def make_model(directory: Path, size_mb: int) -> Path:
    model = directory / "model" / "1"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(os.urandom(400_000))
    with (model / "variables" / "variables.data-00000-of-00001").open("wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))
    (model / "variables" / "variables.index").write_bytes(os.urandom(4096))
    return model.parent


def run_measured(command: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds, and peak RSS in MB from getrusage: the exact high-water mark of the
    children waited for so far, so a later run's figure is the peak of all runs up to it."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True)
    wall = time.perf_counter() - start
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    return wall, maxrss / 1e6, done


def seed_route(client: docker.DockerClient, model_dir: Path) -> float:
    """The seed's docker CLI steps on the same model (create instead of run: same copy work)."""
    name = f"bench-seed-{uuid.uuid4().hex[:8]}"
    image = f"bench_seed_serving:{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    try:
        subprocess.run(["docker", "create", "--name", name, BASE], check=True, capture_output=True)
        subprocess.run(["docker", "cp", f"{model_dir}/.", f"{name}:/models/bench"], check=True)
        subprocess.run(
            ["docker", "commit", "--change", "ENV MODEL_NAME bench", name, image],
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - start
    finally:
        subprocess.run(["docker", "rm", "-f", name], check=False, capture_output=True)
        remove_image(client, image)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=500, help="size of the random variables")
    args = parser.parse_args()

    client = docker.from_env()
    import_tiny_base_image(client, BASE)
    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        model_dir = make_model(Path(tmp), args.size_mb)
        with LocalRegistry(Path(tmp) / "registry") as registry:
            target = f"{registry.host}/bench/bench_serving:{tag}"
            command = [sys.executable, "build_image.py", "--model_dir", str(model_dir),
                       "--model_name", "bench", "--base_image", BASE, "--registry",
                       f"{registry.host}/bench", "--tag", tag]  # fmt: skip
            try:
                build_wall, build_peak, built = run_measured(command)
                remove_image(client, target)  # the second run builds it again, then pushes
                wall, peak_mb, done = run_measured([*command, "--push"])
            finally:
                remove_image(client, target)
        for proc in (built, done):
            if proc.returncode != 0:
                print(proc.stderr.decode(), file=sys.stderr)
                return 1
        seed_wall = seed_route(client, model_dir / "1")
    remove_image(client, BASE)

    size_mb = args.size_mb + 0.4
    peak_mb = max(peak_mb, build_peak)
    print(f"model: {size_mb:.0f} MB of random bytes (one version)")
    print(f"build_image.py, build only:   wall {build_wall:5.1f} s")
    print(f"seed's docker create/cp/commit: wall {seed_wall:5.1f} s "
          f"(build_image.py / seed = {build_wall / seed_wall:.2f})")  # fmt: skip
    print(f"build_image.py, build + push: wall {wall:5.1f} s")
    print(f"digest reference: {done.stdout.decode().strip()}")
    target = f"peak RSS of build_image.py < {TARGET_RSS_MB} MB"
    return report_targets([(target, peak_mb < TARGET_RSS_MB, f"{peak_mb:.0f} MB")])


if __name__ == "__main__":
    sys.exit(main())
