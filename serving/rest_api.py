"""TF Serving's REST API over the models of a ModelManager, independent of the HTTP transport.

Routing, version/label resolution and error wording follow tensorflow_serving/model_servers/
http_rest_api_handler.cc and http_rest_api_util.cc: the same URL regexes (case-insensitive), the
same order of checks, the same canonical error codes.
"""

from __future__ import annotations

import json
import logging
import re
import time
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import unquote

import numpy as np

from serving import classify, fast_tensor, json_tensor
from serving.batching import BatchScheduler
from serving.errors import StatusError, invalid_argument, not_found
from serving.metrics import CONTENT_TYPE, ServingMetrics
from serving.model import ServedModel
from serving.model_manager import ModelManager

log = logging.getLogger(__name__)

API_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_SPEC = r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
PREDICT_PATH = re.compile(_SPEC + r":(classify|regress|predict)", re.IGNORECASE)
STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
_INT64_MAX = 2**63 - 1


@dataclass
class RequestInfo:
    """What a request named, for the metrics: TF Serving's model_name and API labels."""

    model_name: str = ""
    api: str = ""


class RestApi:
    """Answers (method, path, body) with (HTTP status, JSON body), as TF Serving would."""

    def __init__(
        self,
        models: ModelManager | ServedModel,
        executor: Executor,
        timeout_ms: int = 30000,
        metrics: ServingMetrics | None = None,
        metrics_path: str | None = None,
        batching: BatchScheduler | None = None,
    ) -> None:
        if isinstance(models, ServedModel):
            models = ModelManager.serving(models)
        self.models = models
        self.executor = executor
        self.timeout_s = timeout_ms / 1000 if timeout_ms > 0 else None
        self.metrics = metrics or ServingMetrics()
        self.metrics_path = metrics_path  # --monitoring_config_file's Prometheus page, if any
        self.batching = batching  # --enable_batching: model calls go through its queues

    def handle(self, method: str, path: str, body: bytes | bytearray) -> tuple[int, bytes]:
        if method == "GET" and path.split("?", 1)[0] == self.metrics_path:
            return 200, self.metrics.page()
        start = time.perf_counter()
        info = RequestInfo()
        try:
            # The query is part of the path, as in TF Serving (EvHTTPRequest::uri_path()): it
            # has no query parameters, so "?x=1" ends up in a model name or breaks the route.
            status, answer, code = 200, self._dispatch(method, path, body, info), "OK"
        except StatusError as e:
            status, answer, code = e.http_status, json_tensor.error_json(e.message), e.code
        except Exception as e:  # a bug or a model failure: TF Serving answers INTERNAL too
            log.exception("internal error on %s %s", method, path)
            status, code = 500, "INTERNAL"
            answer = json_tensor.error_json(f"Internal error: {type(e).__name__}: {e}")
        if API_PATH.fullmatch(path):  # what TF Serving's REST handler sees, and counts
            self.metrics.record_request(info.model_name, info.api, "REST", code, start)
        return status, answer

    def content_type(self, path: str) -> str:
        """The Prometheus page is text; every other answer is JSON."""
        if path.split("?", 1)[0] == self.metrics_path:
            return CONTENT_TYPE
        return "application/json"

    def _dispatch(
        self, method: str, path: str, body: bytes | bytearray, info: RequestInfo
    ) -> bytes:
        if not API_PATH.fullmatch(path):
            # TF Serving has no handler there: a bare 404 (we still answer in its JSON form).
            raise not_found(f"Not found: {path}; the REST API is under /v1/models/")
        malformed = invalid_argument(f"Malformed request: {method} {path}")
        models = self.models  # the manager: each lookup gives one version for the request
        if method == "POST":
            match = PREDICT_PATH.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, verb = match.groups()
            info.model_name, info.api = unquote(name), verb
            if verb == "predict":
                return self._predict(models, unquote(name), _version(version), label, body)
            if verb in classify.TASKS:
                task = classify.TASKS[verb]
                return self._classify(task, models, unquote(name), _version(version), label, body)
            raise malformed  # TF Serving matches the verb case-insensitively, then compares it
        if method == "GET":
            match = STATUS_PATH.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, subresource = match.groups()
            if not name:
                raise invalid_argument("Missing model name in request.")
            info.model_name = unquote(name)
            if subresource == "metadata":
                servable = find_servable(models, unquote(name), _version(version), label)
                return _pretty(servable.metadata_json())
            # GetModelStatus ignores labels: with one, it reports every version.
            return model_status(models, unquote(name), _version(version))
        raise malformed

    def _predict(
        self,
        models: ModelManager,
        name: str,
        version: int | None,
        label: str | None,
        body: bytes | bytearray,
    ) -> bytes:
        found: list[ServedModel] = []  # looked up once the body parsed, as TF Serving does

        def lookup_inputs(signature_name: str) -> dict[str, str]:
            if not found:  # one version for the whole request, even if a new one comes in
                found.append(find_servable(models, name, version, label))
            return found[0].input_dtypes(signature_name)

        # The common big request (one numeric tensor) is parsed with numpy; anything else, and
        # every error, goes through the general path, which words errors as TF Serving does.
        fast = fast_tensor.parse_predict_request(body, lookup_inputs)
        if fast is not None:
            signature_name, fmt, tensors = fast
        else:
            doc = json_tensor.parse_json_document(body)
            signature_name = json_tensor.signature_name_of(doc)
            inputs = lookup_inputs(signature_name)
            if not inputs:
                raise invalid_argument(
                    f"Failed to get input map for signature: {signature_name or 'DEFAULT'}"
                )
            fmt, tensors = json_tensor.request_tensors(doc, inputs)
        outputs = self.run(found[0], signature_name, tensors, self.timeout_s)
        return json_tensor.tensors_to_json(outputs, fmt)

    def _classify(
        self,
        task: classify.Task,
        models: ModelManager,
        name: str,
        version: int | None,
        label: str | None,
        body: bytes | bytearray,
    ) -> bytes:
        """:classify or :regress; the body is read before the model is looked up, as in TF
        Serving."""
        signature_name, examples = classify.examples_from_json(body)
        servable = find_servable(models, name, version, label)
        signature_name, tensors = classify.model_input(task, servable, signature_name, examples)
        outputs = self.run(servable, signature_name, tensors, self.timeout_s, task.api)
        return task.to_json(task.result(outputs, len(examples)))

    def run(
        self,
        model: ServedModel,
        signature_name: str,
        tensors: dict[str, np.ndarray],
        timeout_s: float | None,
        api: str = "Predict",
    ) -> dict[str, np.ndarray]:
        """The model call of both APIs, bounded by a deadline like TF Serving's RunOptions
        (--rest_api_timeout_in_ms, or the gRPC client's deadline); with --enable_batching it is
        merged with other calls of the same model version and signature.

        A call past the deadline is answered with DEADLINE_EXCEEDED (504); TensorFlow can't
        cancel a running call, so it finishes in the background and its result is dropped (a
        call still waiting for its batch is dropped from it).
        """
        if self.batching is None:
            future = self.submit_run(model, api, signature_name, tensors)
        else:
            start = time.perf_counter()  # the wait for the batch included
            future = self.batching.submit(model, signature_name, tensors)
            future.add_done_callback(lambda _: self.metrics.record_runtime(model.name, api, start))
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            future.cancel()
            raise StatusError("DEADLINE_EXCEEDED", "Timed out waiting for notification") from None

    def submit_run(
        self, model: ServedModel, api: str, signature_name: str, tensors: dict[str, np.ndarray]
    ) -> Future:
        """The model call on the model executor (REST and gRPC alike), its runtime timed."""

        def run() -> dict[str, np.ndarray]:
            start = time.perf_counter()
            outputs = model.run(signature_name, tensors)
            self.metrics.record_runtime(model.name, api, start)
            return outputs

        return self.executor.submit(run)


def _version(version: str | None) -> int | None:
    """ParseModelInfo: the requested version number (None = latest)."""
    if version is None:
        return None
    if int(version) > _INT64_MAX:
        raise invalid_argument(f"Failed to convert version: {version} to numeric.")
    return int(version)


def find_servable(
    models: ModelManager, name: str, version: int | None, label: str | None = None
) -> ServedModel:
    """ServerCore::GetServableHandle: the model version asked for (a label from a URL is
    percent-decoded), or NOT_FOUND / INVALID_ARGUMENT as TF Serving words them."""
    return models.find(name, version, None if label is None else unquote(label))


def model_status(models: ModelManager, name: str, version: int | None) -> bytes:
    """GetModelStatus: the state of every version the server has seen (or of one)."""
    return _pretty(models.status(name, version))


def _pretty(document: dict) -> bytes:
    return json.dumps(document, indent=2).encode()
