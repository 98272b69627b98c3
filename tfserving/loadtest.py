"""A TF Serving load tester (`client.py bench`): how fast a served model answers, and how many
requests per second it holds. It knows request bodies, not what is in them: any model will do.

Measured the way Triton's perf_analyzer measures: request bodies are built before the clock
starts (the figures are the server's and the network's, not our JPEG decoder's); warm-up
requests go first and are not counted (connections opened, the model's first calls traced);
then `concurrency` workers each send their next request as soon as their previous answer is in
(a closed loop), for N requests or D seconds. Latency is taken at the client, from sending the
body to holding the decoded answer. Nothing is retried: a 503 counts as an error.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfserving.errors import NotTFServing, ServerError
from tfserving.model_client import ModelClient

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class Sample:
    start: float  # seconds since the measured phase began
    latency: float  # seconds
    error: str | None = None  # kind of failure: "HTTP 500", "ServerTimeout", ...


@dataclass(frozen=True)
class BenchResult:
    samples: list[Sample]
    wall_seconds: float  # from the first measured request sent to the last answer in
    concurrency: int
    warmup: int
    body_bytes: list[int]  # one per image; requests cycle through the images

    def summary(self) -> dict[str, Any]:
        """The figures, as `--json` prints them (latencies in ms)."""
        latencies = np.array([s.latency for s in self.samples if s.error is None]) * 1000
        errors = Counter(s.error for s in self.samples if s.error is not None)
        sent = [self.body_bytes[i % len(self.body_bytes)] for i in range(len(self.samples))]
        return {
            "concurrency": self.concurrency,
            "warmup_requests": self.warmup,
            "requests": len(self.samples),
            "ok": int(latencies.size),
            "errors": dict(errors.most_common()),
            "duration_s": round(self.wall_seconds, 3),
            "throughput_rps": round(latencies.size / self.wall_seconds, 2) if self.samples else 0,
            "latency_ms": _latency_figures(latencies),
            "bytes_sent_per_request": round(float(np.mean(sent))) if sent else 0,
        }


def _latency_figures(latencies_ms: np.ndarray) -> dict[str, float | None]:
    names = ["min", "mean", *(f"p{p}" for p in PERCENTILES), "max"]
    if not latencies_ms.size:
        return dict.fromkeys(names)
    values = [
        latencies_ms.min(),
        latencies_ms.mean(),
        *np.percentile(latencies_ms, PERCENTILES),
        latencies_ms.max(),
    ]
    return {name: round(float(value), 2) for name, value in zip(names, values, strict=True)}


def error_kind(exc: Exception) -> str:
    """How failures are counted: by HTTP status when the server answered, else by exception."""
    if isinstance(exc, ServerError):
        return f"HTTP {exc.status}"
    if isinstance(exc, NotTFServing):
        return f"HTTP {exc.status} (not TF Serving)"
    return type(exc).__name__


def run_bench(
    client: ModelClient,
    bodies: Sequence[bytes],
    concurrency: int = 1,
    requests: int | None = None,
    duration: float | None = None,
    warmup: int = 0,
) -> BenchResult:
    """Send `requests` predict bodies (or as many as fit in `duration` seconds), `concurrency`
    at a time, after `warmup` uncounted ones. Bodies are used in turn."""
    if (requests is None) == (duration is None):
        raise ValueError("give requests or duration, not both")
    if warmup:
        _closed_loop(client, bodies, concurrency, warmup, None, time.perf_counter())
    started = time.perf_counter()
    samples = _closed_loop(client, bodies, concurrency, requests, duration, started)
    wall = max((s.start + s.latency for s in samples), default=0.0)
    return BenchResult(samples, wall, concurrency, warmup, [len(body) for body in bodies])


def _closed_loop(
    client: ModelClient,
    bodies: Sequence[bytes],
    concurrency: int,
    requests: int | None,
    duration: float | None,
    started: float,
) -> list[Sample]:
    tickets = itertools.count()  # next() on a count is atomic under the GIL
    samples: list[Sample] = []
    deadline = None if duration is None else started + duration

    def worker() -> None:
        for ticket in tickets:
            sent = time.perf_counter()
            if requests is not None and ticket >= requests:
                return
            if deadline is not None and sent >= deadline:
                return
            error = None
            try:
                client.predict(bodies[ticket % len(bodies)])
            except Exception as exc:
                error = error_kind(exc)
            samples.append(Sample(sent - started, time.perf_counter() - sent, error))

    with ThreadPoolExecutor(concurrency, thread_name_prefix="bench") as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return sorted(samples, key=lambda sample: sample.start)


def format_report(summary: dict[str, Any]) -> str:
    """The human-readable report (`--json` prints `summary` itself)."""
    latency = summary["latency_ms"]
    lines = [
        f"{summary['requests']} requests at concurrency {summary['concurrency']} in "
        f"{summary['duration_s']:.2f} s (after {summary['warmup_requests']} warm-up requests), "
        f"{summary['bytes_sent_per_request']:,} bytes sent per request",
        f"  throughput: {summary['throughput_rps']:.2f} requests/s",
    ]
    if summary["ok"]:
        figures = "  ".join(f"{name} {latency[name]:.1f}" for name in latency)
        lines.append(f"  latency ms: {figures}")
    errors = ", ".join(f"{kind}: {count}" for kind, count in summary["errors"].items())
    lines.append(f"  errors: {errors or 'none'}")
    return "\n".join(lines)


def plot(result: BenchResult, path: Path) -> None:
    """PNG: the latency histogram with p50/p90/p99 marked, and each request's latency over time
    (failed ones as red crosses at their failure time)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in any thread

    summary = result.summary()
    ok = [s for s in result.samples if s.error is None]
    failed = [s for s in result.samples if s.error is not None]
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    histogram, timeline = figure.subplots(1, 2)
    latencies = [s.latency * 1000 for s in ok]
    histogram.hist(latencies, bins=min(50, max(5, len(latencies) // 4)), color="tab:blue")
    for name, style in (("p50", "-"), ("p90", "--"), ("p99", ":")):
        if summary["latency_ms"][name] is not None:
            value = summary["latency_ms"][name]
            histogram.axvline(value, color="k", linestyle=style, label=f"{name} {value:.0f} ms")
    histogram.set(xlabel="latency (ms)", ylabel="requests", title="latency distribution")
    if ok:
        histogram.legend()
    timeline.scatter([s.start for s in ok], latencies, s=8, label="ok")
    if failed:
        timeline.scatter(
            [s.start for s in failed],
            [s.latency * 1000 for s in failed],
            s=20,
            marker="x",
            color="tab:red",
            label=f"failed ({len(failed)})",
        )
        timeline.legend()
    timeline.set(xlabel="request sent at (s)", ylabel="latency (ms)", title="latency over time")
    timeline.set_ylim(bottom=0)
    figure.suptitle(
        f"{summary['requests']} requests, concurrency {summary['concurrency']}: "
        f"{summary['throughput_rps']:.1f} requests/s"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, format="png")
