"""Run every benchmark in benchmarks/ in one go (`make bench`), printing all their figures.

    .venv/bin/python -m benchmarks.run_all [NAME ...]    # e.g. bench_batch bench_server

Each `benchmarks/bench_*.py` runs as `python -m benchmarks.NAME` in its own process, one after
the other (they time things: running two at once would spoil both), with its output shown as
it comes. TF_CPP_MIN_LOG_LEVEL=2 quietens TensorFlow's C++ logging (its oneDNN start-up
lines still show). At the end, a table of each benchmark's exit code and wall time; the exit
code is 1 if any of them failed (a missed target or an error).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    return sorted(path.stem for path in HERE.glob("bench_*.py"))


def main() -> int:
    available = discover()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(available)}")
    names = parser.parse_args().names or available
    unknown = sorted(set(names) - set(available))
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)} (have: {', '.join(available)})")

    environment = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ}
    results = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        code = subprocess.run(
            [sys.executable, "-m", f"benchmarks.{name}"], cwd=HERE.parent, env=environment
        ).returncode
        results.append((name, code, time.perf_counter() - start))

    print("\n=== summary ===")
    for name, code, seconds in results:
        outcome = "ok" if code == 0 else f"FAILED (exit code {code})"
        print(f"{name:<28}{seconds:>8.0f} s  {outcome}")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
