"""Server-side request batching: tensorflow_model_server's --enable_batching.

Concurrent predict calls of one model version and signature are merged into one model call and
the outputs split back, so each caller gets exactly its own rows. The rules are TF Serving's
(tensorflow_serving/batching/batching_session.cc over TensorFlow's SharedBatchScheduler):

- one shared pool of `num_batch_threads` threads runs the batches of every queue, taking the
  queues in turn; a queue is one (model version, signature);
- a task (one call) joins the open batch if it fits; a batch is run once it holds
  `max_batch_size` rows, once a task did not fit (it is closed and a new one started), or once
  `batch_timeout_micros` have passed since its first task, whichever comes first, as soon as a
  thread is free (with a timeout of 0, whatever has gathered while the threads were busy);
- a task with more rows than `max_batch_size` is refused (INVALID_ARGUMENT); a task that needs a
  new batch when `max_enqueued_batches` are waiting is refused (UNAVAILABLE, HTTP 503);
- with `allowed_batch_sizes` a batch is padded up to the next allowed size with copies of the
  last task's first row, and the padding's outputs dropped;
- with `pad_variable_length_inputs`, tensors of different non-batch sizes are padded at the end
  of each dimension up to the largest, with their own first element.

Where this differs: TF Serving fails a whole batch whose tensors differ in shape (without
padding); here tasks are grouped by their inputs' dtypes and non-batch shapes (or rank, with
padding), and only alike tasks share a batch. A batch of several tasks that the model refuses
is run again task by task, so one bad request does not fail the others with it. A task whose
caller's deadline has passed before its batch runs is dropped from it.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from google.protobuf import text_format

from serving.errors import ServingError, StatusError, invalid_argument
from serving.protos.session_bundle_config_pb2 import BatchingParameters
from tfserving.conventions import DEFAULT_SIGNATURE

log = logging.getLogger(__name__)

Tensors = Mapping[str, np.ndarray]


class Model(Protocol):
    """What batching needs of a served model (serving.model.ServedModel)."""

    def run(self, signature_name: str, inputs: Tensors) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class BatchingOptions:
    """The BatchingParameters the server uses, with TF Serving's defaults for unset fields
    (SharedBatchScheduler's QueueOptions and Options: 1000 rows, no timeout, 10 batches, one
    thread per core)."""

    max_batch_size: int = 1000
    batch_timeout_s: float = 0.0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def padded_size(self, size: int) -> int:
        """RoundToLowestAllowedBatchSize: the smallest allowed size that holds `size` rows."""
        return next((allowed for allowed in self.allowed_batch_sizes if allowed >= size), size)


def read_batching_parameters(path: Path | None) -> BatchingOptions:
    """--batching_parameters_file (BatchingParameters in text format) as checked options; no
    file: TF Serving's defaults. Errors are one line naming the file."""
    if path is None:
        return BatchingOptions()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ServingError(f"cannot read the batching parameters file {path}: {e}") from None
    parameters = BatchingParameters()
    try:
        text_format.Parse(text, parameters)
    except text_format.ParseError as e:
        raise ServingError(f"{path}: not a BatchingParameters text proto: {e}") from None
    try:
        return batching_options(parameters)
    except ServingError as e:
        raise ServingError(f"{path}: {e}") from None


def batching_options(parameters: BatchingParameters) -> BatchingOptions:
    """BatchingParameters checked as TF Serving checks them when it creates the queue (the
    wording is TensorFlow's, with the file's field names)."""
    defaults = BatchingOptions()

    def value(name: str, default: int) -> int:
        return getattr(parameters, name).value if parameters.HasField(name) else default

    options = BatchingOptions(
        max_batch_size=value("max_batch_size", defaults.max_batch_size),
        batch_timeout_s=value("batch_timeout_micros", 0) / 1e6,
        max_enqueued_batches=value("max_enqueued_batches", defaults.max_enqueued_batches),
        num_batch_threads=value("num_batch_threads", defaults.num_batch_threads),
        allowed_batch_sizes=tuple(parameters.allowed_batch_sizes),
        pad_variable_length_inputs=parameters.pad_variable_length_inputs,
    )
    for name, floor in (
        ("max_batch_size", 1),
        ("batch_timeout_micros", 0),
        ("max_enqueued_batches", 1),
        ("num_batch_threads", 1),
    ):
        given = value(name, floor)
        if given < floor:
            kind = "non-negative" if floor == 0 else "positive"
            raise ServingError(f"{name} must be {kind}; was {given}")
    allowed = options.allowed_batch_sizes
    if allowed and allowed[-1] != options.max_batch_size:
        raise ServingError(
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
            f"{allowed[-1]}; expected {options.max_batch_size}"
        )
    if any(size <= 0 for size in allowed) or list(allowed) != sorted(set(allowed)):
        raise ServingError(f"allowed_batch_sizes must increase and be positive; was {allowed}")
    if parameters.HasField("enable_large_batch_splitting") and (
        parameters.enable_large_batch_splitting.value
    ):
        log.warning(
            "enable_large_batch_splitting is not supported here: a request of more than "
            "max_batch_size rows is refused"
        )
    return options


def _batch_size(inputs: Tensors) -> int:
    """ComputeTensorBatchSize: every input's 0th dimension, which must be the same."""
    if not inputs:
        raise invalid_argument("Batching Run() must have at least one input tensor")
    sizes = set()
    for tensor in inputs.values():
        if tensor.ndim == 0:
            raise invalid_argument("Batching Run() input tensors must have at least one dimension")
        sizes.add(tensor.shape[0])
    if len(sizes) > 1:
        raise invalid_argument("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


@dataclass(eq=False)
class _Task:
    inputs: Tensors
    size: int
    future: Future = field(default_factory=Future)


@dataclass(eq=False)
class _Batch:
    """Tasks of alike inputs (`kind`) to be run in one model call."""

    kind: tuple
    started: float  # monotonic time of its first task
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    closed: bool = False


@dataclass(eq=False)
class _Queue:
    """The batches waiting for one (model version, signature)."""

    model: Model
    signature_name: str
    batches: list[_Batch] = field(default_factory=list)


class BatchScheduler:
    """TF Serving's shared batch scheduler: one queue per (model version, signature), batches
    run on `options.num_batch_threads` threads shared by all queues."""

    def __init__(self, options: BatchingOptions) -> None:
        self.options = options
        self._lock = threading.Condition()
        # Keyed by the model object: a queue lives only while it has batches (so an unloaded
        # version is not kept alive by it), and its tasks hold the model meanwhile.
        self._queues: dict[tuple[int, str], _Queue] = {}
        self._turn = itertools.count()  # round-robin over the queues
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"batch-{n}", daemon=True)
            for n in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, model: Model, signature_name: str, inputs: Tensors) -> Future:
        """Queue one call; its future gets the call's own output rows (or its error). Refusals
        (too many rows, a full queue) are raised at once, as TF Serving's Schedule() does."""
        size = _batch_size(inputs)
        if size > self.options.max_batch_size:
            raise invalid_argument(
                f"Task size {size} is larger than maximum input batch size "
                f"{self.options.max_batch_size}"
            )
        task = _Task(inputs, size)
        kind = self._kind(inputs)
        signature_name = signature_name or DEFAULT_SIGNATURE  # REST's "" is gRPC's default
        with self._lock:
            key = (id(model), signature_name)
            queue = self._queues.get(key) or _Queue(model, signature_name)
            self._add(queue, task, kind)
            self._queues[key] = queue
            self._lock.notify()
        return task.future

    def stop(self) -> None:
        """Let the threads run what is queued, then end them."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        for thread in self._threads:
            thread.join()

    def _kind(self, inputs: Tensors) -> tuple:
        """What tasks must share to be merged: each input's dtype, and its non-batch shape
        (only its rank when variable-length inputs are padded)."""
        pad = self.options.pad_variable_length_inputs
        return tuple(
            (name, tensor.dtype.str, tensor.ndim if pad else tensor.shape[1:])
            for name, tensor in sorted(inputs.items())
        )

    def _add(self, queue: _Queue, task: _Task, kind: tuple) -> None:
        """Queue::Schedule: into the open batch of its kind if it fits, else a new batch."""
        limit = self.options.max_batch_size
        batch = next((b for b in reversed(queue.batches) if b.kind == kind and not b.closed), None)
        if batch is not None and batch.size + task.size > limit:
            batch.closed, batch = True, None
        if batch is None:
            if len(queue.batches) >= self.options.max_enqueued_batches:
                raise StatusError(
                    "UNAVAILABLE",
                    "The batch scheduling queue to which this task was submitted is full; "
                    f"currently {len(queue.batches)} batches enqueued and max_enqueued_batches "
                    f"is {self.options.max_enqueued_batches}",
                )
            batch = _Batch(kind, time.monotonic())
            queue.batches.append(batch)
        batch.tasks.append(task)
        batch.size += task.size
        batch.closed = batch.size >= limit

    def _work(self) -> None:
        while True:
            with self._lock:
                taken = self._take()
                while taken is None:
                    if self._stopping and not self._queues:
                        return
                    self._lock.wait(self._seconds_to_next_timeout())
                    taken = self._take()
                if self._queues:  # more waiting: another thread watches their timeouts
                    self._lock.notify()
            self._run(*taken)

    def _take(self) -> tuple[_Queue, _Batch] | None:
        """The next runnable batch (closed, or past its timeout), the queues taken in turn."""
        queues = list(self._queues.items())
        if not queues:
            return None
        start = next(self._turn) % len(queues)
        now = time.monotonic()
        for key, queue in queues[start:] + queues[:start]:
            for batch in queue.batches:
                if batch.closed or self._stopping or now >= batch.started + self._timeout:
                    queue.batches.remove(batch)
                    if not queue.batches:
                        del self._queues[key]
                    return queue, batch
        return None

    @property
    def _timeout(self) -> float:
        return self.options.batch_timeout_s

    def _seconds_to_next_timeout(self) -> float | None:
        starts = [b.started for q in self._queues.values() for b in q.batches]
        if not starts:
            return None
        return max(0.0, min(starts) + self._timeout - time.monotonic())

    def _run(self, queue: _Queue, batch: _Batch) -> None:
        """One model call for the batch's tasks (those whose caller still waits)."""
        tasks = [task for task in batch.tasks if task.future.set_running_or_notify_cancel()]
        if not tasks:
            return
        try:
            rows = self._call(queue, tasks)
        except StatusError as e:
            if len(tasks) > 1:  # maybe one task's fault: each gets its own answer instead
                for task in tasks:
                    self._run_alone(queue, task)
                return
            tasks[0].future.set_exception(e)
            return
        except Exception as e:  # a bug: every caller gets it (answered as INTERNAL)
            log.exception("batch of %d tasks failed", len(tasks))
            for task in tasks:
                task.future.set_exception(e)
            return
        for task, outputs in zip(tasks, rows, strict=True):
            task.future.set_result(outputs)

    def _run_alone(self, queue: _Queue, task: _Task) -> None:
        try:
            task.future.set_result(self._call(queue, [task])[0])
        except Exception as e:
            task.future.set_exception(e)

    def _call(self, queue: _Queue, tasks: list[_Task]) -> list[dict[str, np.ndarray]]:
        """Merge, run, split: each task's output rows, padding dropped."""
        size = sum(task.size for task in tasks)
        padded = self.options.padded_size(size)
        merged = merge_inputs(
            [task.inputs for task in tasks], padded - size, self.options.pad_variable_length_inputs
        )
        outputs = queue.model.run(queue.signature_name, merged)
        return split_outputs(outputs, [task.size for task in tasks], padded)


def merge_inputs(inputs: list[Tensors], padding_rows: int, pad_lengths: bool) -> dict:
    """MergeInputTensors: each input's tensors concatenated along the batch dimension, then
    `padding_rows` copies of the last task's first row. One task without padding is passed as
    it is (no copy)."""
    if len(inputs) == 1 and not padding_rows:
        return dict(inputs[0])
    merged = {}
    for name in inputs[0]:
        tensors = [task[name] for task in inputs]
        if pad_lengths:
            tensors = _padded_to_longest(tensors)
        tensors += [tensors[-1][:1]] * padding_rows
        merged[name] = np.concatenate(tensors)
    return merged


def _padded_to_longest(tensors: list[np.ndarray]) -> list[np.ndarray]:
    """batching_util's AddPadding: each tensor padded at the end of every non-batch dimension
    up to the longest, with its own first element (a value known to be valid input)."""
    longest = np.max([tensor.shape for tensor in tensors], axis=0)
    padded = []
    for tensor in tensors:
        shortfall = longest[1:] - tensor.shape[1:]
        widths = [(0, 0)] + [(0, int(after)) for after in shortfall]
        if any(after for _, after in widths):
            fill = tensor.flat[0] if tensor.size else tensor.dtype.type()
            tensor = np.pad(tensor, widths, constant_values=fill)
        padded.append(tensor)
    return padded


def split_outputs(
    outputs: Mapping[str, Any], sizes: list[int], padded: int
) -> list[dict[str, np.ndarray]]:
    """SplitOutputTensors: each output's rows cut back into the tasks' shares (views, no copy);
    an output without a batch dimension can't be split, as in TF Serving."""
    for tensor in outputs.values():
        if np.ndim(tensor) == 0:
            raise StatusError("FAILED_PRECONDITION", "Batched output tensor has 0 dimensions")
        if tensor.shape[0] != padded:
            raise StatusError(
                "FAILED_PRECONDITION",
                "Batched output tensor's 0th dimension does not equal the sum of the 0th "
                "dimension sizes of the input tensors",
            )
    ends = list(itertools.accumulate(sizes))
    return [
        {name: tensor[end - size : end] for name, tensor in outputs.items()}
        for size, end in zip(sizes, ends, strict=True)
    ]
