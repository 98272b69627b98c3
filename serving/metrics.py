"""TF Serving's Prometheus metrics: its metric names and labels, its exposition format.

The metrics are those a TF Serving dashboard reads (servables/tensorflow/util.cc,
model_servers/http_server.cc and prediction_service_impl.cc, TensorFlow's
cc/saved_model/loader.cc, servables/tensorflow/saved_model_warmup_util.cc):

- `:tensorflow:serving:request_count{model_name, status}`: every REST request (status and
  metadata too, as TF Serving's HTTP server counts them) and every gRPC Predict, by canonical
  status ("OK", "NOT_FOUND", ...);
- `:tensorflow:serving:request_latency{model_name, API, entrypoint}`: microseconds of the
  successful ones (API: the REST verb, "predict", or "" for a GET; gRPC: "Predict"; entrypoint
  "REST" or "GRPC");
- `:tensorflow:serving:runtime_latency{model_name, API, runtime}`: microseconds of the model
  call itself;
- `:tensorflow:cc:saved_model:load_attempt_count{model_path, status}` ("success"/"fail") and
  `:tensorflow:cc:saved_model:load_latency{model_path}` (microseconds, successful loads);
- `:tensorflow:serving:model_warmup_latency{model_path, status}` and
  `:tensorflow:serving:model_warmup_records_read{model_path, status}`.

prometheus_client keeps the values (thread-safe, in a registry of this server's own); the page
is written as TF Serving's PrometheusExporter writes it: TensorFlow's '/' names with every
character outside [a-zA-Z0-9_] turned into ':', counters without the `_total` suffix that
prometheus_client's own exposition would add, a TYPE line per metric, histograms in
microseconds on TensorFlow's exponential buckets (10 x 1.8^i, 33 of them, then +Inf).
"""

from __future__ import annotations

import re
import time

from prometheus_client import CollectorRegistry, Counter, Histogram

# monitoring::Buckets::Exponential(10, 1.8, 33): TF Serving's latency buckets (~20 minutes).
LATENCY_BUCKETS_US = (*(10 * 1.8**i for i in range(33)), float("inf"))
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def prometheus_name(tensorflow_name: str) -> str:
    """GetPrometheusMetricName: "/tensorflow/serving/request_count" ->
    ":tensorflow:serving:request_count"."""
    name = re.sub(r"[^a-zA-Z0-9_]", ":", tensorflow_name)
    return f"_{name}" if name[:1].isdigit() else name


class ServingMetrics:
    """The server's metrics (see the module's doc), recorded by the REST and gRPC APIs and the
    model manager, and written out by `page()`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_count = self._counter(
            "/tensorflow/serving/request_count",
            "The total number of requests.",
            ("model_name", "status"),
        )
        self.request_latency = self._histogram(
            "/tensorflow/serving/request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ("model_name", "API", "entrypoint"),
        )
        self.runtime_latency = self._histogram(
            "/tensorflow/serving/runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            ("model_name", "API", "runtime"),
        )
        self.load_attempt_count = self._counter(
            "/tensorflow/cc/saved_model/load_attempt_count",
            "The number of times a SavedModel was successfully loaded.",
            ("model_path", "status"),
        )
        self.load_latency = self._counter(
            "/tensorflow/cc/saved_model/load_latency",
            "Latency in microseconds for SavedModels that were successfully loaded.",
            ("model_path",),
        )
        self.warmup_latency = self._histogram(
            "/tensorflow/serving/model_warmup_latency",
            "Distribution of wall time (in microseconds) for warming up the model.",
            ("model_path", "status"),
        )
        self.warmup_records_read = self._counter(
            "/tensorflow/serving/model_warmup_records_read",
            "Total number of warmup records read during model warmup.",
            ("model_path", "status"),
        )

    def _counter(self, name: str, documentation: str, labels: tuple[str, ...]) -> Counter:
        return Counter(prometheus_name(name), documentation, labels, registry=self.registry)

    def _histogram(self, name: str, documentation: str, labels: tuple[str, ...]) -> Histogram:
        return Histogram(
            prometheus_name(name),
            documentation,
            labels,
            registry=self.registry,
            buckets=LATENCY_BUCKETS_US,
        )

    def record_request(
        self, model_name: str, api: str, entrypoint: str, status: str, start: float
    ) -> None:
        """RecordModelRequestCount, and RecordRequestLatency when the request succeeded."""
        self.request_count.labels(model_name, status).inc()
        if status == "OK":
            self.request_latency.labels(model_name, api, entrypoint).observe(_micros_since(start))

    def record_runtime(self, model_name: str, api: str, start: float) -> None:
        """RecordRuntimeLatency of one model call (TF Serving's SavedModel path: "TF1")."""
        self.runtime_latency.labels(model_name, api, "TF1").observe(_micros_since(start))

    def record_load(self, path: object, success: bool, seconds: float) -> None:
        """The SavedModel loader's attempt count and, when it succeeded, its latency."""
        self.load_attempt_count.labels(str(path), "success" if success else "fail").inc()
        if success:
            self.load_latency.labels(str(path)).inc(round(seconds * 1e6))

    def record_warmup(self, path: object, status: str, records: int, start: float) -> None:
        """The warm-up's latency and the records it read, by its outcome ("OK" or the error)."""
        self.warmup_latency.labels(str(path), status).observe(_micros_since(start))
        self.warmup_records_read.labels(str(path), status).inc(records)

    def page(self) -> bytes:
        """The metrics in PrometheusExporter::GeneratePage's form."""
        lines = []
        for family in self.registry.collect():
            # A counter's family is named without the `_total` its samples carry here: TF
            # Serving's samples have the family's name.
            counter = family.type == "counter"
            lines.append(f"# TYPE {family.name} {family.type}")
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # prometheus_client's own; TF Serving has no such samples
                name = family.name if counter else sample.name
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
                lines.append(f"{name}{{{labels}}} {_number(sample.value)}")
        return ("\n".join(lines) + "\n").encode()


def _micros_since(start: float) -> float:
    return (time.perf_counter() - start) * 1e6


def _escape(value: str) -> str:
    """SanitizeLabelValue: backslash and double quote escaped (and a newline, which the text
    format can't carry raw)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))
