"""TF Serving's REST API over one ServedModel, independent of the HTTP transport.

Routing, version/label resolution and error wording follow tensorflow_serving/model_servers/
http_rest_api_handler.cc and http_rest_api_util.cc: the same URL regexes (case-insensitive), the
same order of checks, the same canonical error codes.
"""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import Executor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import unquote

import numpy as np

from serving import fast_tensor, json_tensor
from serving.batching import BatchScheduler
from serving.errors import StatusError, invalid_argument, not_found
from serving.model import ServedModel

log = logging.getLogger(__name__)

API_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_SPEC = r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
PREDICT_PATH = re.compile(_SPEC + r":(classify|regress|predict)", re.IGNORECASE)
STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
_INT64_MAX = 2**63 - 1


class RestApi:
    """Answers (method, path, body) with (HTTP status, JSON body), as TF Serving would."""

    def __init__(
        self,
        model: ServedModel,
        executor: Executor,
        timeout_ms: int = 30000,
        batching: BatchScheduler | None = None,
    ) -> None:
        self.model = model  # replaced as a whole when a new version is loaded
        self.executor = executor
        self.timeout_s = timeout_ms / 1000 if timeout_ms > 0 else None
        self.batching = batching  # --enable_batching: model calls go through its queues

    def handle(self, method: str, path: str, body: bytes | bytearray) -> tuple[int, bytes]:
        try:
            return 200, self._dispatch(method, path.split("?", 1)[0], body)
        except StatusError as e:
            return e.http_status, json_tensor.error_json(e.message)
        except Exception as e:  # a bug or a model failure: TF Serving answers INTERNAL too
            log.exception("internal error on %s %s", method, path)
            return 500, json_tensor.error_json(f"Internal error: {type(e).__name__}: {e}")

    def _dispatch(self, method: str, path: str, body: bytes | bytearray) -> bytes:
        if not API_PATH.fullmatch(path):
            # TF Serving has no handler there: a bare 404 (we still answer in its JSON form).
            raise not_found(f"Not found: {path}; the REST API is under /v1/models/")
        malformed = invalid_argument(f"Malformed request: {method} {path}")
        model = self.model  # one version for the whole request, even if a new one comes in
        if method == "POST":
            match = PREDICT_PATH.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, verb = match.groups()
            if verb == "predict":
                return self._predict(model, unquote(name), _version(version), label, body)
            if verb in ("classify", "regress"):
                raise StatusError(
                    "UNIMPLEMENTED",
                    f"{verb} is not served by this local stand-in for TF Serving; use :predict",
                )
            raise malformed  # TF Serving matches the verb case-insensitively, then compares it
        if method == "GET":
            match = STATUS_PATH.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, subresource = match.groups()
            if not name:
                raise invalid_argument("Missing model name in request.")
            if subresource == "metadata":
                servable = find_servable(model, unquote(name), _version(version), label)
                return _pretty(servable.metadata_json())
            # GetModelStatus ignores labels: with one, it reports every version.
            return model_status(model, unquote(name), _version(version))
        raise malformed

    def _predict(
        self,
        model: ServedModel,
        name: str,
        version: int | None,
        label: str | None,
        body: bytes | bytearray,
    ) -> bytes:
        def lookup_inputs(signature_name: str) -> dict[str, str]:
            return find_servable(model, name, version, label).input_dtypes(signature_name)

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
        outputs = self.run(model, signature_name, tensors, self.timeout_s)
        return json_tensor.tensors_to_json(outputs, fmt)

    def run(
        self,
        model: ServedModel,
        signature_name: str,
        tensors: dict[str, np.ndarray],
        timeout_s: float | None,
    ) -> dict[str, np.ndarray]:
        """The model call of both APIs, bounded by a deadline like TF Serving's RunOptions
        (--rest_api_timeout_in_ms, or the gRPC client's deadline); with --enable_batching it is
        merged with other calls of the same model version and signature.

        A call past the deadline is answered with DEADLINE_EXCEEDED (504); TensorFlow can't
        cancel a running call, so it finishes in the background and its result is dropped (a
        call still waiting for its batch is dropped from it).
        """
        if self.batching is not None:
            future = self.batching.submit(model, signature_name, tensors)
        else:
            future = self.executor.submit(model.run, signature_name, tensors)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            future.cancel()
            raise StatusError("DEADLINE_EXCEEDED", "Timed out waiting for notification") from None


def _version(version: str | None) -> int | None:
    """ParseModelInfo: the requested version number (None = latest)."""
    if version is None:
        return None
    if int(version) > _INT64_MAX:
        raise invalid_argument(f"Failed to convert version: {version} to numeric.")
    return int(version)


def find_servable(
    model: ServedModel, name: str, version: int | None, label: str | None = None
) -> ServedModel:
    """ServerCore::GetServableHandle: the loaded model, or NOT_FOUND as TF Serving words it.

    No version labels are configured (TF Serving sets them in a model config file), so any label
    gets TF Serving's answer for an unknown one.
    """
    if label is not None:
        raise invalid_argument(f"Unrecognized servable version label: {unquote(label)}")
    if name != model.name or (version is not None and version != model.version):
        request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
        raise not_found(f"Servable not found for request: {request}")
    return model


def model_status(model: ServedModel, name: str, version: int | None) -> bytes:
    """GetModelStatus: only the loaded version is known (others were never loaded)."""
    if name != model.name:
        raise not_found(f"Could not find any versions of model {name}")
    if version is not None and version != model.version:
        raise not_found(f"Could not find version {version} of model {name}")
    return _pretty(model.status_json())


def _pretty(document: dict) -> bytes:
    return json.dumps(document, indent=2).encode()
