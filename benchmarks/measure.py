"""What the benchmarks share: timing a call, timing two calls side by side, and the verdicts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

ROUND = 5  # calls of one kind in a row


def ms(call: Callable[[], object]) -> float:
    """Wall time of one call, in milliseconds."""
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def medians_side_by_side(
    model_call: Callable[[], object], request: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """Median ms of an in-process model call and of a request to a server, measured together.

    Both are called twice first (tracing, allocation). Then in rounds of a few calls of each
    kind, so that machine load hits both alike, but not strictly alternating: TensorFlow's
    threads in this process spin a while after a call and would steal the CPU from the
    server's request right after it.
    """
    for _ in range(2):
        model_call()
        request()
    model_ms: list[float] = []
    request_ms: list[float] = []
    for _ in range(0, repeats, ROUND):
        model_ms += [ms(model_call) for _ in range(ROUND)]
        time.sleep(0.2)
        request_ms += [ms(request) for _ in range(ROUND)]
    return statistics.median(model_ms), statistics.median(request_ms)


def report_targets(checks: list[tuple[str, bool, str]]) -> int:
    """Print each (target, met, measured figure) as met or MISSED; the exit code: 0 only when
    every target is met."""
    for target, met, figure in checks:
        print(f"target: {target}: {figure} {'met' if met else 'MISSED'}")
    return 0 if all(met for _, met, _ in checks) else 1
