"""A TF Serving gRPC client without TensorFlow: the REST client's shape over port 8500.

REST sends pixels as JSON text, about 4 bytes a byte, which TF Serving then parses; gRPC sends
them as they are (`tensor_content`, the raw little-endian bytes), so a 12 MP photo costs a
tenth of the bytes and no parsing. `GrpcClient` offers what `TFServingClient` does (status,
cached metadata, predict), bounded the same way:
- in time: `timeout` is a deadline for the whole call, retries included; gRPC carries it to
  the server, which stops waiting for the model once it has passed.
- in size: an answer larger than `max_response_bytes` is refused by gRPC as it arrives.

Retries are limited to UNAVAILABLE (no connection, or the server refused the call before
running it), with the REST client's backoff, within the deadline. Every other status is a
one-line `GrpcStatusError` that names TF Serving's canonical code (NOT_FOUND, ...).

The messages are this project's own (`tfserving.protos`), byte for byte TF Serving's; the method
paths are TF Serving's (`/tensorflow.serving.PredictionService/Predict`, ...), called directly
since the protos' package is not TF Serving's. grpc and the protos are imported when a client is
made, not with this module: a CLI that imports it for its options stays quick to start.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from tfserving.client import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    VersionStatus,
    _Deadline,
    parse_status,
)
from tfserving.conventions import DEFAULT_SIGNATURE, GRPC_PORT
from tfserving.errors import (
    GrpcStatusError,
    ResponseTooLarge,
    ServerTimeout,
    ServerUnreachable,
    TFServingError,
    one_line,
)
from tfserving.metadata import MalformedAnswer, ModelMetadata, parse_metadata
from tfserving.model_client import DEFAULT_FORM, RequestForm
from tfserving.spec import ServerSpec
from tfserving.tensors import TensorError, decode_tensor, encode_tensor

PREDICT = "/tensorflow.serving.PredictionService/Predict"
CLASSIFY = "/tensorflow.serving.PredictionService/Classify"
REGRESS = "/tensorflow.serving.PredictionService/Regress"
GET_MODEL_METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
GET_MODEL_STATUS = "/tensorflow.serving.ModelService/GetModelStatus"
# What metadata["signature_def"] holds: TF Serving's SignatureDefMap, named as TF Serving names it.
SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
# Pixels for a float image input travel as these (tensor_content: 4 or 2 bytes a value).
FLOAT_DTYPES = {"DT_FLOAT": np.float32, "DT_HALF": np.float16}

# grpc's own wording when an answer passes the channel's receive limit.
_TOO_LARGE = re.compile(r"Received message larger than max \((\d+) vs\. (\d+)\)")


class MalformedGrpcAnswer(MalformedAnswer):
    """An answer that is not what TF Serving sends (a tensor whose values don't fit its shape)."""

    def __init__(self, what: str, problem: str) -> None:
        TFServingError.__init__(
            self,
            f"unexpected {what} from the server: {problem}; is the target TF Serving's gRPC port?",
        )


class GrpcClient:
    """Talks to one model on TF Serving's gRPC port; close it, or use it as a context manager.

    `target` is `host:port`. `authorization` is sent as the `authorization` metadata of every
    call (e.g. "Bearer TOKEN"): the caller reads it from the environment or a file, so that it
    never shows in a process list. With `tls`, the server's certificate is checked against
    `ca_file`, or against the system's roots when there is none.
    """

    def __init__(
        self,
        target: str,
        model_name: str,
        version: int | None = None,
        label: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.5,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        tls: bool = False,
        ca_file: str | Path | None = None,
        authorization: str | None = None,
    ) -> None:
        import grpc  # ~0.1 s: only when a client is made

        if version is not None and label is not None:
            raise TFServingError("give a model version or a version label, not both")
        self.target = target
        self.url = f"{'grpcs' if tls else 'grpc'}://{target}"
        self.model_name = model_name
        self.version = version
        self.label = label
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_response_bytes = max_response_bytes
        self._call_metadata = (("authorization", authorization),) if authorization else None
        options = [
            ("grpc.max_receive_message_length", max_response_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.primary_user_agent", "tensorflow-serving-sidecar"),
            # Every address the name resolves to, in turn: behind a headless Kubernetes Service
            # (one DNS record per pod) calls spread over the pods; one address is as before.
            ("grpc.lb_policy_name", "round_robin"),
        ]
        if tls:
            roots = Path(ca_file).read_bytes() if ca_file is not None else None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = grpc.secure_channel(target, credentials, options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._metadata: ModelMetadata | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: ServerSpec, port: int = GRPC_PORT, **options: Any) -> GrpcClient:
        """The model a REST `ServerSpec` names, on the same host's gRPC port: TLS when its URL
        is https, its URL's credentials as basic auth (unless `authorization` is given)."""
        url = urlsplit(spec.base_url)
        host = f"[{url.hostname}]" if ":" in (url.hostname or "") else url.hostname
        options.setdefault("tls", url.scheme == "https")
        options["authorization"] = spec.authorization(options.get("authorization"))
        return cls(f"{host}:{port}", spec.model_name, spec.version, spec.label, **options)

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def status(self) -> list[VersionStatus]:
        """ModelService.GetModelStatus: the state of each version the server knows."""
        from tfserving.protos import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._fill_spec(request.model_spec)
        response = self._call(
            GET_MODEL_STATUS,
            request.SerializeToString(),
            get_model_status_pb2.GetModelStatusResponse,
        )
        return parse_status(_proto_json(response))

    def metadata(self) -> ModelMetadata:
        """The model's signatures, fetched on first use and then cached (thread-safe)."""
        with self._lock:
            if self._metadata is None:
                self._metadata = parse_metadata(self.metadata_json())
            return self._metadata

    def metadata_json(self) -> dict[str, Any]:
        """GetModelMetadata's answer as TF Serving's REST API writes it (the SignatureDefMap
        unpacked), so that the REST client's parser reads and checks it."""
        from tfserving.protos import get_model_metadata_pb2 as metadata_pb2

        request = metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._fill_spec(request.model_spec)
        response = self._call(
            GET_MODEL_METADATA, request.SerializeToString(), metadata_pb2.GetModelMetadataResponse
        )
        packed = response.metadata.get("signature_def")
        if packed is None or packed.type_url != SIGNATURE_DEF_MAP_URL:
            found = packed.type_url if packed is not None else "nothing"
            raise MalformedGrpcAnswer(
                "model metadata", f"metadata['signature_def'] is {found}, not a SignatureDefMap"
            )
        try:
            signatures = metadata_pb2.SignatureDefMap.FromString(packed.value)
        except Exception:  # google.protobuf's DecodeError, imported lazily like the rest
            raise MalformedGrpcAnswer(
                "model metadata", "metadata['signature_def'] is not a SignatureDefMap"
            ) from None
        spec = response.model_spec
        return {
            "model_spec": {
                "name": spec.name,
                "signature_name": spec.signature_name,
                "version": str(spec.version.value),
            },
            "metadata": {"signature_def": _proto_json(signatures)},
        }

    def request(
        self,
        inputs: Mapping[str, np.ndarray | Sequence[bytes]],
        signature_name: str = DEFAULT_SIGNATURE,
        output_filter: Sequence[str] = (),
    ) -> bytes:
        """A serialized PredictRequest for this client's model: numpy arrays in (as raw
        tensor_content), a list of bytes as a DT_STRING batch (such as encoded images)."""
        from tfserving.protos import predict_pb2

        request = predict_pb2.PredictRequest(output_filter=output_filter)
        self._fill_spec(request.model_spec, signature_name)
        for name, value in inputs.items():
            encode_tensor(value, request.inputs[name])
        return request.SerializeToString()

    def image_request(
        self,
        image: bytes | np.ndarray,
        input_name: str,
        signature_name: str,
        form: RequestForm = DEFAULT_FORM,
    ) -> bytes:
        """The request for one image, a batch of one: an encoded file's bytes for a DT_STRING
        input, or an (H, W, C) uint8 array of pixels, converted to `form.dtype` (float32,
        float16: 0-255, or 0-1 with `form.unit_range`)."""
        if isinstance(image, bytes):
            return self.request({input_name: [image]}, signature_name)
        batch = image[np.newaxis]
        if form.dtype in FLOAT_DTYPES:
            batch = batch.astype(FLOAT_DTYPES[form.dtype])
            if form.unit_range:
                batch /= 255
        return self.request({input_name: batch}, signature_name)

    def predict(self, body: bytes, columnar: bool = False) -> dict[str, Any]:
        """Send a request made by `request()` or `image_request()`; the answer in the form TF
        Serving's REST API gives it, so that one reader serves both protocols: rows
        (`{"predictions": [...]}`) when every output has the batch dimension, else columns
        (`{"outputs": {...}}`), and columns always with `columnar`, as REST answers `inputs`."""
        return rest_answer(self._outputs(body), columnar)

    def predict_arrays(
        self,
        inputs: Mapping[str, np.ndarray | Sequence[bytes]],
        signature_name: str = DEFAULT_SIGNATURE,
        output_filter: Sequence[str] = (),
    ) -> dict[str, np.ndarray]:
        """PredictionService.Predict from numpy arrays to numpy arrays (see `request()`)."""
        return self._outputs(self.request(inputs, signature_name, output_filter))

    def _outputs(self, body: bytes) -> dict[str, np.ndarray]:
        from tfserving.protos import predict_pb2

        response = self._call(PREDICT, body, predict_pb2.PredictResponse)
        try:
            return {name: decode_tensor(name, tensor) for name, tensor in response.outputs.items()}
        except TensorError as e:
            raise MalformedGrpcAnswer("answer", str(e)) from None

    def _fill_spec(self, spec: Any, signature_name: str = "") -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label
        spec.signature_name = signature_name

    def _call(self, path: str, request: bytes, response_class: Any) -> Any:
        """One unary call within the deadline, sent again only while the server is UNAVAILABLE.
        The request is already serialized (built once, sent on every attempt)."""
        import grpc

        method = self._channel.unary_unary(path, response_deserializer=response_class.FromString)
        deadline = _Deadline(self.timeout)
        for attempt in range(self.retries + 1):
            remaining = deadline.remaining()
            if remaining <= 0:
                raise ServerTimeout(self.url, self.timeout)
            try:
                return method(request, timeout=remaining, metadata=self._call_metadata)
            except grpc.RpcError as error:
                if (
                    error.code() == grpc.StatusCode.UNAVAILABLE
                    and attempt < self.retries
                    and deadline.sleep(0.0 if attempt == 0 else self.backoff * 2**attempt)
                ):
                    continue  # the REST client's schedule: 0, then backoff x 2, x 4, ...
                raise self._error(path, error.code().name, error.details() or "") from None
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _error(self, path: str, code: str, details: str) -> TFServingError:
        """The project's error for a failed call: a timeout, no server, too big, or TF
        Serving's own status."""
        if code == "DEADLINE_EXCEEDED":
            return ServerTimeout(self.url, self.timeout)
        if code == "UNAVAILABLE":
            return ServerUnreachable(self.url, one_line(details) or "unavailable")
        too_large = _TOO_LARGE.search(details)
        if (
            code == "RESOURCE_EXHAUSTED"
            and too_large
            and int(too_large[2]) == self.max_response_bytes
        ):
            return ResponseTooLarge(self.url, self.max_response_bytes)
        return GrpcStatusError(self.url, path.rpartition("/")[2], code, details)


def _proto_json(message: Any) -> dict:
    """A message as TF Serving's REST API writes it (proto field names, defaults included),
    for the REST client's parsers."""
    from google.protobuf import json_format

    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def rest_answer(outputs: Mapping[str, np.ndarray], columnar: bool = False) -> dict[str, Any]:
    """Predict outputs as TF Serving's REST API answers an `instances` request: a row per batch
    item when every output has the same first dimension, else (and with `columnar`, its answer
    to `inputs`) the columnar `outputs` form. Strings are text, or `{"b64": ...}` for an output
    whose name ends in `_bytes`, as there."""
    columns = {name: _json_values(name, array) for name, array in outputs.items()}
    batch_sizes = {array.shape[0] if array.ndim else None for array in outputs.values()}
    if columnar or len(batch_sizes) != 1 or None in batch_sizes:
        return {"outputs": columns}
    [size] = batch_sizes
    return {
        "predictions": [{name: column[i] for name, column in columns.items()} for i in range(size)]
    }


def _json_values(name: str, array: np.ndarray) -> Any:
    if array.dtype != object:
        return array.tolist()
    if name.endswith("_bytes"):
        text = [{"b64": base64.b64encode(item).decode()} for item in array.ravel().tolist()]
    else:
        text = [item.decode("utf-8", "replace") for item in array.ravel().tolist()]
    return np.array(text, dtype=object).reshape(array.shape).tolist()
