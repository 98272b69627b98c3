"""Many images through one served model, with nothing lost when one of them fails.

Inputs are streamed (paths, directories walked recursively, globs) into a thread pool through a
bounded window of at most 2 x workers requests, so memory does not grow with the number of
images. Each image's result is written (atomically) by the worker that got it, the moment it is
done, and the main thread appends one line per input to OUTPUT_DIR/summary.jsonl with a single
`write()`: a run killed at any point leaves whole result files and whole summary lines, and
`resume` skips the inputs whose result file is already complete.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from object_detection.inputs import BatchInput
from object_detection.label_map import LabelMap
from object_detection.pipeline import (
    DetectOptions,
    annotated_image_path,
    detect,
    write_annotated_image,
    write_json,
)
from object_detection.strict_json import dumps_json
from tfserving.model_client import ModelClient

SUMMARY_NAME = "summary.jsonl"


@dataclass(frozen=True)
class BatchOptions:
    output_dir: Path
    workers: int = 4
    save_image: bool = False
    resume: bool = False

    def json_path(self, item: BatchInput) -> Path:
        return self.output_dir / item.name.with_suffix(".json")

    def image_path(self, item: BatchInput) -> Path:
        return annotated_image_path(self.json_path(item))


@dataclass
class BatchTally:
    """How many inputs ended with each summary status."""

    ok: int = 0
    error: int = 0
    skipped: int = 0

    def add(self, status: str) -> None:
        setattr(self, status, getattr(self, status) + 1)


class SummaryLog:
    """OUTPUT_DIR/summary.jsonl: one JSON object per input, each written with a single
    `write()` on an O_APPEND file, so a crash can never leave half a line."""

    def __init__(self, path: Path, append: bool) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if append else os.O_TRUNC)
        self._fd = os.open(path, flags, 0o644)

    def write(self, record: dict[str, Any]) -> None:
        os.write(self._fd, dumps_json(record).encode() + b"\n")

    def close(self) -> None:
        os.close(self._fd)


def is_complete(json_path: Path, image_path: Path | None) -> bool:
    """A result from an earlier run that can be kept: the JSON parses (it was written
    atomically, but it may come from elsewhere) and the picture, when wanted, is there. The
    picture is written before the JSON, so a JSON implies its picture."""
    try:
        data = json.loads(json_path.read_bytes())
    except (OSError, ValueError, RecursionError):  # RecursionError: "[[[[..." a mile deep
        return False
    return (
        isinstance(data, dict)
        and "detections" in data
        and (image_path is None or image_path.is_file())
    )


def process(
    client: ModelClient,
    item: BatchInput,
    label_map: LabelMap,
    detect_options: DetectOptions,
    options: BatchOptions,
) -> dict[str, Any]:
    """Detect in one image and write its results; returns its summary record. Never raises for
    a problem with this one image, so the others go on."""
    json_path = options.json_path(item)
    image_path = options.image_path(item) if options.save_image else None
    record: dict[str, Any] = {"input": str(item.path)}
    if item.problem is not None:
        return {**record, "status": "error", "error_kind": "InputError", "error": item.problem}
    if options.resume and is_complete(json_path, image_path):
        return {
            **record,
            "status": "skipped",
            "reason": "result already there",
            "json": str(json_path),
        }
    started = time.perf_counter()
    try:
        result = detect(client, item.path, label_map, detect_options)
        if image_path is not None:
            write_annotated_image(result, image_path)
        write_json(result, json_path)
    except Exception as exc:
        return {
            **record,
            "status": "error",
            "error_kind": type(exc).__name__,
            "error": str(exc),
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }
    record.update(status="ok", json=str(json_path))
    if image_path is not None:
        record["image"] = str(image_path)
    record.update(detections=len(result.detections), ms=result.timing_ms["total"])
    return record


def run_batch(
    client: ModelClient,
    inputs: Iterable[BatchInput],
    label_map: LabelMap,
    detect_options: DetectOptions,
    options: BatchOptions,
    on_record: Callable[[dict[str, Any], BatchTally], None] = lambda record, tally: None,
) -> BatchTally:
    """Run every input through `client` with `options.workers` requests in flight; each record
    goes to the summary file, then to `on_record` (progress, messages)."""
    tally = BatchTally()
    summary = SummaryLog(options.output_dir / SUMMARY_NAME, append=options.resume)
    window = 2 * options.workers  # queued + in flight: enough to keep every worker busy
    pool = ThreadPoolExecutor(options.workers, thread_name_prefix="detect")
    pending: set[Future[dict[str, Any]]] = set()

    def record(futures: Iterable[Future[dict[str, Any]]]) -> None:
        for future in futures:
            result = future.result()
            summary.write(result)
            tally.add(result["status"])
            on_record(result, tally)

    try:
        for item in inputs:
            if len(pending) >= window:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                record(done)
            pending.add(pool.submit(process, client, item, label_map, detect_options, options))
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            record(done)
    finally:
        # On Ctrl-C: drop what has not started; requests in flight finish writing their files.
        pool.shutdown(wait=True, cancel_futures=True)
        summary.close()
    return tally
