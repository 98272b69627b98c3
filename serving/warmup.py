"""Model warm-up: a SavedModel's recorded requests replayed before its version is served.

TF Serving (servables/tensorflow/saved_model_warmup*.cc) reads
`assets.extra/tf_serving_warmup_requests`, a TFRecord file of PredictionLog protos, and runs
each request `num_request_iterations` times right after the load, so that the first real
requests don't pay for TensorFlow's lazy initialisation (graph optimisation, kernel choice,
allocations); the version becomes AVAILABLE only afterwards, and a record that fails fails the
load. At most 1000 records are read. This server replays Predict, Classify and Regress records;
the other kinds (multi-inference, session run) are refused by name, failing the load.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import tensorflow as tf
from google.protobuf.message import DecodeError

from serving import classify
from serving.errors import StatusError, invalid_argument
from serving.grpc_api import input_tensors, predict_signature
from serving.metrics import ServingMetrics
from serving.model import ServedModel
from tfserving.protos import prediction_log_pb2

log = logging.getLogger(__name__)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # WarmupConsts::kMaxNumRecords


def warm_up(model: ServedModel, iterations: int, metrics: ServingMetrics) -> int:
    """Replay the model's warm-up records (each `iterations` times); the number of records
    read. A bad record raises StatusError, which fails the load as in TF Serving."""
    path = model.path / WARMUP_FILE
    if not path.is_file():
        log.info("No warmup data file found at %s", path)
        return 0
    log.info("Starting to read warmup data for model at %s", path)
    start, records, status = time.perf_counter(), 0, "OK"
    try:
        for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            records += 1
            if records > MAX_RECORDS:
                raise invalid_argument(
                    f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}"
                )
            record = _parse(raw, path)
            for _ in range(iterations):
                _replay(model, record)
    except StatusError as e:
        status = str(e)
        raise
    except tf.errors.OpError as e:  # a truncated or corrupt TFRecord file
        status = f"DATA_LOSS: {e.message}"
        raise StatusError("DATA_LOSS", f"{e.message} in {path}") from None
    finally:
        metrics.record_warmup(model.path, status, records, start)
    log.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d. "
        "Elapsed time (microseconds): %d.",
        path,
        records,
        (time.perf_counter() - start) * 1e6,
    )
    return records


def _parse(raw: bytes, path: Path) -> prediction_log_pb2.PredictionLog:
    try:
        return prediction_log_pb2.PredictionLog.FromString(raw)
    except DecodeError:
        raise invalid_argument(f"Failed to parse warmup record from {path}") from None


def _replay(model: ServedModel, record: prediction_log_pb2.PredictionLog) -> None:
    """One record's request, checked and run as a gRPC call of it would be."""
    kind = record.WhichOneof("log_type")
    if kind == "predict_log":
        request = record.predict_log.request
        signature_name, signature = predict_signature(model, request)
        model.run(signature_name, input_tensors(signature, request.inputs))
    elif kind in _TASKS:
        request = getattr(record, kind).request
        examples = classify.examples_from_input(request.input)
        signature_name, inputs = classify.model_input(
            _TASKS[kind], model, request.model_spec.signature_name, examples
        )
        model.run(signature_name, inputs)
    else:
        number = record.DESCRIPTOR.fields_by_name[kind].number if kind else 0
        raise StatusError(
            "UNIMPLEMENTED",
            f"Unsupported log_type for warmup: {number} ({kind}; this server replays "
            "predict, classify and regress records)",
        )


_TASKS = {"classify_log": classify.CLASSIFY, "regress_log": classify.REGRESS}
