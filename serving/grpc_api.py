"""TF Serving's gRPC API (PredictionService, ModelService) over the REST API's models.

The same `RestApi` object serves both ports: its `.models` (the ModelManager) gives the model
version once per call, with the same NOT_FOUND / INVALID_ARGUMENT wording as over REST, its
run() calls the model (batched with
--enable_batching), and its metrics count Predict calls as TF Serving's do. What gRPC
does differently follows TF Serving's C++ (predict_impl.cc, predict_util.cc, saved_model/util.cc,
get_model_metadata_impl.cc, get_model_status_impl.cc): an unknown signature is
FAILED_PRECONDITION, the inputs are checked against the signature before the model runs (count,
names, dtypes), the client's deadline bounds the model call, and answers carry their values in
the typed fields (`float_val`...), as TF Serving's Tensor::AsProtoField writes them and as
clients that read `.float_val` expect. Classify and Regress share their checks and results
with REST's :classify and :regress (serving/classify.py).

The messages are the project's own (`tfserving.protos`, TF Serving's field numbers and types,
so its bytes), with the client's tensor codec (`tfserving.tensors`): the server needs neither
tensorflow-serving-api (which would pull in the `tensorflow` package beside `tensorflow-cpu`)
nor any code of its own to read or write a tensor. The services are registered under TF
Serving's names (`tensorflow.serving.PredictionService`...), so official stubs call them.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format

from serving import classify
from serving.errors import ServingError, StatusError, invalid_argument
from serving.json_tensor import dtype_string
from serving.model import ServedModel
from serving.model_config import model_list
from serving.model_manager import ModelManager
from serving.rest_api import RestApi
from tfserving.conventions import DEFAULT_SIGNATURE, GRPC_PORT
from tfserving.grpc_client import (
    CLASSIFY,
    GET_MODEL_METADATA,
    GET_MODEL_STATUS,
    PREDICT,
    REGRESS,
    SIGNATURE_DEF_MAP_URL,
)
from tfserving.protos import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
    types_pb2,
)
from tfserving.tensors import TensorError, decode_tensor, encode_tensor

log = logging.getLogger(__name__)

# A 12 MP RGB photo as uint8 pixels is 36 MiB; TF Serving itself takes up to 2 GiB.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 2**20
DEFAULT_MAX_CONNECTION_AGE_GRACE_S = 30.0
SIGNATURE_DEF = "signature_def"
HANDLE_RELOAD_CONFIG = "/tensorflow.serving.ModelService/HandleReloadConfigRequest"


def answered(method: Callable) -> Callable:
    """A servicer method whose StatusError becomes the call's status (code and message), and
    whose bug or model crash becomes INTERNAL, as TF Serving answers both."""

    @functools.wraps(method)
    def call(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except StatusError as e:
            context.abort(grpc.StatusCode[e.code], e.message)
        except Exception as e:
            log.exception("internal error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"Internal error: {type(e).__name__}: {e}")

    return call


class PredictionService:
    """Predict, Classify, Regress and GetModelMetadata; MultiInference is not registered, so
    grpc answers it UNIMPLEMENTED."""

    def __init__(self, api: RestApi) -> None:
        self.api = api

    @answered
    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        return self._counted("Predict", request, lambda: self._predict(request, context))

    def _counted(self, api: str, request: Any, call: Callable[[], Any]) -> Any:
        """The call, counted and timed by model name and status, as TF Serving's metrics count
        Predict, Classify and Regress."""
        start, code = time.perf_counter(), "INTERNAL"  # unless it ends otherwise
        try:
            response = call()
            code = "OK"
            return response
        except StatusError as e:
            code = e.code
            raise
        finally:
            self.api.metrics.record_request(request.model_spec.name, api, "GRPC", code, start)

    def _predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        model = _requested(self.api.models, request)
        signature_name, signature = predict_signature(model, request)
        inputs = input_tensors(signature, request.inputs)
        aliases = output_aliases(signature, request.output_filter)
        outputs = self.api.run(model, signature_name, inputs, context.time_remaining())
        response = predict_pb2.PredictResponse()
        _answering(response.model_spec, request, model, signature_name)
        for alias in aliases:
            encode_tensor(outputs[alias], response.outputs[alias], typed=True)
        return response

    @answered
    def Classify(
        self, request: classification_pb2.ClassificationRequest, context: grpc.ServicerContext
    ) -> classification_pb2.ClassificationResponse:
        return self._counted("Classify", request, lambda: self._classify(request, context))

    def _classify(
        self, request: classification_pb2.ClassificationRequest, context: grpc.ServicerContext
    ) -> classification_pb2.ClassificationResponse:
        model, signature_name, result = self._run_task(classify.CLASSIFY, request, context)
        response = classification_pb2.ClassificationResponse()
        _answering(response.model_spec, request, model, signature_name)
        for classes in result:
            row = response.result.classifications.add()
            for label, score in classes:
                row.classes.add(label=label.decode("utf-8", errors="replace"), score=score)
        return response

    @answered
    def Regress(
        self, request: regression_pb2.RegressionRequest, context: grpc.ServicerContext
    ) -> regression_pb2.RegressionResponse:
        return self._counted("Regress", request, lambda: self._regress(request, context))

    def _regress(
        self, request: regression_pb2.RegressionRequest, context: grpc.ServicerContext
    ) -> regression_pb2.RegressionResponse:
        model, signature_name, result = self._run_task(classify.REGRESS, request, context)
        response = regression_pb2.RegressionResponse()
        _answering(response.model_spec, request, model, signature_name)
        for value in result.tolist():
            response.result.regressions.add(value=value)
        return response

    def _run_task(
        self, task: classify.Task, request: Any, context: grpc.ServicerContext
    ) -> tuple[ServedModel, str, Any]:
        """(model, signature name, result) of a Classify or Regress request, checked in TF
        Serving's order: ModelSpec, servable, signature, examples."""
        model = _requested(self.api.models, request)
        examples = classify.examples_from_input(request.input)
        signature_name, inputs = classify.model_input(
            task, model, request.model_spec.signature_name, examples
        )
        outputs = self.api.run(model, signature_name, inputs, context.time_remaining(), task.api)
        return model, signature_name, task.result(outputs, len(examples))

    @answered
    def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: Any
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        spec = requested_spec(request)
        if not request.metadata_field:
            raise invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in request.metadata_field:
            if field != SIGNATURE_DEF:
                # TF Serving's StrCat leaves the "%s" in and appends the field: its wording.
                raise invalid_argument(f"Metadata field %s is not supported{field}")
        model = self.api.models.find(*spec)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in model.meta_graph.signature_def.items():
            # TensorFlow's SignatureDef and ours are one wire format: copied by its bytes.
            signatures.signature_def[key].ParseFromString(signature.SerializeToString())
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        # Pack() would name our package's type; clients look for TF Serving's name.
        packed = response.metadata[SIGNATURE_DEF]
        packed.type_url, packed.value = SIGNATURE_DEF_MAP_URL, signatures.SerializeToString()
        return response


class ModelService:
    """GetModelStatus, and HandleReloadConfigRequest: a new model config list, taken as a
    re-read --model_config_file is (models added, removed, policies and labels changed)."""

    def __init__(self, api: RestApi) -> None:
        self.api = api

    @answered
    def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: Any
    ) -> get_model_status_pb2.GetModelStatusResponse:
        name, version, _ = requested_spec(request)  # labels are ignored, as over REST
        # REST's answer (the same checks), as the message.
        status = self.api.models.status(name, version)
        return json_format.ParseDict(status, get_model_status_pb2.GetModelStatusResponse())

    @answered
    def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: Any
    ) -> model_management_pb2.ReloadConfigResponse:
        """ModelServiceImpl::HandleReloadConfigRequest: a config that can't be taken is the
        call's error (and changes nothing); one taken answers an OK status."""
        if request.config.WhichOneof("config") != "model_config_list":
            raise invalid_argument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                "ModelConfigList is currently supported"
            )
        try:
            self.api.models.configure(model_list(request.config.model_config_list))
        except StatusError as e:
            log.error("ReloadConfig failed: %s", e.message)
            raise
        return model_management_pb2.ReloadConfigResponse()  # status: OK, the default


def _answering(spec: Any, request: Any, model: ServedModel, signature_name: str) -> None:
    """MakeModelSpec: the ModelSpec of an answer (the requested name, the version served)."""
    spec.name = request.model_spec.name
    spec.version.value = model.version
    spec.signature_name = signature_name


def requested_spec(request: Any) -> tuple[str, int | None, str | None]:
    """(name, version or None for the latest, label or None) of a request's ModelSpec, which
    every call must carry."""
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    spec = request.model_spec
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    return spec.name, version, spec.version_label if choice == "version_label" else None


def _requested(models: ModelManager, request: Any) -> ServedModel:
    """The model version the request names (ServerCore::GetServableHandle's wording)."""
    return models.find(*requested_spec(request))  # a label as sent: no URL decoding


def predict_signature(model: ServedModel, request: Any) -> tuple[str, Any]:
    """(name, SignatureDef) of the signature a PredictRequest names (default: serving_default);
    an unknown one is FAILED_PRECONDITION, TF Serving's code for it over gRPC."""
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature = model.meta_graph.signature_def.get(signature_name)
    if signature is None:
        raise StatusError(
            "FAILED_PRECONDITION", f'Serving signature key "{signature_name}" not found.'
        )
    return signature_name, signature


def input_tensors(signature: Any, inputs: Any) -> dict[str, np.ndarray]:
    """The request's tensors for the signature, checked as TF Serving checks them before it
    runs the model: how many (VerifyRequestInputsSize), which (GetInputValues), their dtypes
    (the session's "Expects arg[i]"). Inputs are counted in sorted order, as TF Serving lists
    them in its messages."""
    expected, sent = sorted(signature.inputs), sorted(inputs)
    if len(sent) > len(expected) or (len(sent) < len(expected) and not signature.defaults):
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({_set(sent)}) != len({_set(expected)}). "
            f"Sent extra: {_set(set(sent) - set(expected))}. "
            f"Missing but required: {_set(set(expected) - set(sent))}."
        )
    tensors = {}
    for position, alias in enumerate(expected):
        info = signature.inputs[alias]
        if alias in inputs:
            proto = inputs[alias]
        elif alias in signature.defaults:
            proto = signature.defaults[alias]
        else:
            raise invalid_argument(
                f"Signature input alias: {alias}(feed name: {info.name}) not found in request "
                f"and no default value provided. Inputs expected to be in the request "
                f"{_set(sent)}, or default input alias set: {','.join(sorted(signature.defaults))}"
            )
        if proto.dtype != info.dtype:
            raise invalid_argument(
                f"Expects arg[{position}] to be {_dtype_name(info.dtype)} but "
                f"{_dtype_name(proto.dtype)} is provided"
            )
        try:
            tensors[alias] = (
                decode_tensor(alias, proto) if alias in inputs else tf.make_ndarray(proto)
            )
        except TensorError:
            raise invalid_argument(f"tensor parsing error: {alias}") from None
    unused = set(sent) - set(expected)
    if unused:
        used = ",".join(alias for alias in sent if alias not in unused)
        raise invalid_argument(
            f"Inputs contains invalid name. Used request inputs: {used}, request input: "
            f"{','.join(sent)}"
        )
    return tensors


def output_aliases(signature: Any, output_filter: Iterable[str]) -> list[str]:
    """The outputs to answer with: those filtered (each known, none twice), else all."""
    aliases: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {_set(signature.outputs)}."
            )
        if alias in aliases:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        aliases.append(alias)
    return aliases or sorted(signature.outputs)


def _handlers(service: object, requests: dict[str, Any]) -> grpc.GenericRpcHandler:
    """grpc's handler of `service`'s methods: one per method path (/PACKAGE.SERVICE/METHOD, the
    method a method of `service` of that name) with the request message it reads."""
    service_name = next(iter(requests)).split("/")[1]
    methods = {}
    for path, request_class in requests.items():
        method_name = path.rpartition("/")[2]
        methods[method_name] = grpc.unary_unary_rpc_method_handler(
            getattr(service, method_name),
            request_deserializer=request_class.FromString,
            response_serializer=_serialize,
        )
    return grpc.method_handlers_generic_handler(service_name, methods)


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


def _set(names: Iterable[str]) -> str:
    """A set of names as TF Serving's messages print one: {a,b}, sorted."""
    return "{" + ",".join(sorted(names)) + "}"


def _dtype_name(dtype: int) -> str:
    """TensorFlow's DataTypeString ("uint8", "float", "string") of a DataType number."""
    known = dtype in types_pb2.DataType.values()
    return dtype_string(types_pb2.DataType.Name(dtype) if known else "DT_INVALID")


def parse_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """TF Serving's --grpc_channel_arguments ("grpc.max_connection_age_ms=30000,...") as
    grpc server options; a value that is a number is passed as one."""
    options: list[tuple[str, int | str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ServingError(f"a gRPC channel argument is KEY=VALUE, not {item!r}")
        value = value.strip()
        options.append((key.strip(), int(value) if value.lstrip("-").isdigit() else value))
    return options


class GrpcServer:
    """The gRPC port of the local server: PredictionService and ModelService over `api`.

    `max_connection_age_s` makes the server close each connection (GOAWAY) after that long,
    with `max_connection_age_grace_s` for its calls to finish: clients then connect again and
    a Kubernetes Service spreads them over new replicas, where long-lived HTTP/2 connections
    would otherwise stay on the old ones. `max_message_bytes` bounds a request (pixels).
    With `credentials` (grpc's ssl_server_credentials) the port speaks TLS.
    """

    def __init__(
        self,
        api: RestApi,
        port: int = GRPC_PORT,
        host: str = "0.0.0.0",
        max_connection_age_s: float | None = None,
        max_workers: int = 16,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_connection_age_grace_s: float = DEFAULT_MAX_CONNECTION_AGE_GRACE_S,
        channel_arguments: Iterable[tuple[str, int | str]] = (),
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.api = api
        self.credentials = credentials
        self.host = host
        self.port = port
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a second listener
        ]
        if max_connection_age_s is not None:
            options.append(("grpc.max_connection_age_ms", round(max_connection_age_s * 1000)))
            options.append(
                ("grpc.max_connection_age_grace_ms", round(max_connection_age_grace_s * 1000))
            )
        options.extend(channel_arguments)  # given last: they override the above
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers, thread_name_prefix="grpc"), options=options
        )
        self._server.add_generic_rpc_handlers(
            [
                _handlers(
                    PredictionService(api),
                    {
                        PREDICT: predict_pb2.PredictRequest,
                        CLASSIFY: classification_pb2.ClassificationRequest,
                        REGRESS: regression_pb2.RegressionRequest,
                        GET_MODEL_METADATA: get_model_metadata_pb2.GetModelMetadataRequest,
                    },
                ),
                _handlers(
                    ModelService(api),
                    {
                        GET_MODEL_STATUS: get_model_status_pb2.GetModelStatusRequest,
                        HANDLE_RELOAD_CONFIG: model_management_pb2.ReloadConfigRequest,
                    },
                ),
            ]
        )

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> GrpcServer:
        """Listen (port 0: a free port, then in `.port`) and serve from worker threads."""
        wanted = self.address
        try:
            if self.credentials is None:
                self.port = self._server.add_insecure_port(wanted)
            else:
                self.port = self._server.add_secure_port(wanted, self.credentials)
        except RuntimeError as e:  # grpc's "Failed to bind"
            raise ServingError(f"cannot listen for gRPC on {wanted}: {e}") from None
        if self.port == 0:  # older grpc reports a failed bind this way
            raise ServingError(f"cannot listen for gRPC on {wanted}: is the port in use?")
        self._server.start()
        log.info("Running gRPC ModelServer at %s ...", self.address)
        return self

    def stop(self, grace_s: float | None = None) -> threading.Event:
        """Stop taking calls and send GOAWAY; calls in flight get `grace_s` seconds to finish
        (None: as long as they take), then are cancelled. Returns at once (a signal handler
        may call it) with an event set once all calls have ended."""
        return self._server.stop(grace_s)

    def __enter__(self) -> GrpcServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop(grace_s=0).wait()
