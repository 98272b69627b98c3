"""gRPC end to end on loopback: serving.grpc_api's server, tfserving.grpc_client's client.

The servers run in this process over the shared models (loaded once per module), on free ports;
the answers are compared with the same model called in-process (sidecar_testing.reference),
never with hard-coded scores. Errors are TF Serving's canonical codes and wording.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from object_detection.images import load_image
from serving.errors import ServingError
from serving.grpc_api import GrpcServer, parse_channel_arguments
from serving.model import ServedModel
from serving.rest_api import RestApi
from sidecar_testing.data import COCO_DOG, ENCODED_MODEL, IMAGE1, IMAGE2, PIXEL_MODEL
from sidecar_testing.servers import HOST, free_port
from tfserving.errors import ResponseTooLarge, ServerTimeout, ServerUnreachable
from tfserving.grpc_client import GrpcClient, GrpcStatusError
from tfserving.metadata import parse_metadata
from tfserving.spec import ServerSpec

PIXEL_NAME = "ssd_mobilenet_v1_coco"
ENCODED_NAME = "ssd_mobilenet_v1_coco_encoded"


class SlowExecutor(ThreadPoolExecutor):
    """Runs each model call a second late: a call that is surely in flight, or past a deadline."""

    def submit(self, fn, /, *args, **kwargs):
        def late():
            time.sleep(1.0)
            return fn(*args, **kwargs)

        return super().submit(late)


@pytest.fixture(scope="module")
def pixel_api() -> Iterator[RestApi]:
    with ThreadPoolExecutor(2) as executor:
        yield RestApi(ServedModel.load(PIXEL_NAME, PIXEL_MODEL), executor)


@pytest.fixture(scope="module")
def pixel_grpc(pixel_api: RestApi) -> Iterator[GrpcServer]:
    with GrpcServer(pixel_api, port=0, host=HOST) as server:
        yield server


@pytest.fixture(scope="module")
def encoded_grpc() -> Iterator[GrpcServer]:
    with ThreadPoolExecutor(2) as executor:
        api = RestApi(ServedModel.load(ENCODED_NAME, ENCODED_MODEL), executor)
        with GrpcServer(api, port=0, host=HOST) as server:
            yield server


def client(server: GrpcServer, model_name: str = PIXEL_NAME, **options) -> GrpcClient:
    return GrpcClient(f"{HOST}:{server.port}", model_name, **options)


def pixels(image=IMAGE1) -> np.ndarray:
    return load_image(image).pixels()[None]


@pytest.mark.parametrize("image", [IMAGE1, IMAGE2], ids=["image1", "image2"])
def test_pixels_predict_is_the_model_called_in_process(pixel_grpc, model_reference, image) -> None:
    with client(pixel_grpc) as grpc_client:
        outputs = grpc_client.predict_arrays({"inputs": pixels(image)})
    expected = model_reference.outputs(PIXEL_MODEL, image)
    assert sorted(outputs) == sorted(expected)
    for name, value in expected.items():
        assert outputs[name].dtype == value.dtype
        np.testing.assert_array_equal(outputs[name][0], value)


def test_encoded_predict_is_the_model_called_in_process(encoded_grpc, model_reference) -> None:
    with client(encoded_grpc, ENCODED_NAME) as grpc_client:
        outputs = grpc_client.predict_arrays({"inputs": [load_image(IMAGE1).encoded()]})
    expected = model_reference.outputs(ENCODED_MODEL, IMAGE1)
    for name, value in expected.items():
        np.testing.assert_array_equal(outputs[name][0], value)
    assert outputs["detection_classes"][0][:2].tolist() == [COCO_DOG, COCO_DOG]


def test_output_filter_and_version_and_signature_name(pixel_grpc) -> None:
    with client(pixel_grpc, version=1) as grpc_client:
        outputs = grpc_client.predict_arrays(
            {"inputs": pixels()}, "serving_default", output_filter=["num_detections"]
        )
    assert list(outputs) == ["num_detections"]
    assert outputs["num_detections"].tolist() == [100.0]


def test_status_and_metadata(pixel_grpc, pixel_api) -> None:
    with client(pixel_grpc) as grpc_client:
        [status] = grpc_client.status()
        metadata = grpc_client.metadata()
        assert grpc_client.metadata() is metadata  # cached
    assert (status.version, status.state, status.error_code) == ("1", "AVAILABLE", "OK")
    assert status.available and status.error_message == ""
    assert metadata == parse_metadata(
        pixel_api.models.find(PIXEL_NAME).metadata_json()
    )  # what REST answers
    image_input = metadata.signature().image_input
    assert (image_input.name, image_input.dtype, image_input.shape) == (
        "inputs",
        "DT_UINT8",
        (-1, -1, -1, 3),
    )


def test_official_stub_gets_typed_values_as_from_tf_serving(pixel_grpc) -> None:
    """A client written for TF Serving (reading .float_val) works against this server."""
    with grpc.insecure_channel(f"{HOST}:{pixel_grpc.port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = PIXEL_NAME
        request.inputs["inputs"].dtype = 4  # DT_UINT8
        for size in (1, 2, 2, 3):
            request.inputs["inputs"].tensor_shape.dim.add(size=size)
        request.inputs["inputs"].tensor_content = bytes(12)
        response = stub.Predict(request, timeout=30)
        assert len(response.outputs["detection_scores"].float_val) == 100
        assert not response.outputs["detection_scores"].tensor_content
        assert response.model_spec.version.value == 1
        assert response.model_spec.signature_name == "serving_default"

        metadata_request = get_model_metadata_pb2.GetModelMetadataRequest()
        metadata_request.model_spec.name = PIXEL_NAME
        with pytest.raises(grpc.RpcError) as error:
            stub.GetModelMetadata(metadata_request, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details() == (
            "GetModelMetadataRequest must specify at least one metadata_field"
        )
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(predict_pb2.PredictRequest(), timeout=30)
        assert (error.value.code(), error.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "Missing ModelSpec",
        )


GOOD = {"inputs": np.zeros((1, 8, 8, 3), np.uint8)}
PREDICT_ERRORS = {
    "unknown model": (
        {"model_name": "nope"},
        GOOD,
        "NOT_FOUND",
        "Servable not found for request: Latest(nope)",
    ),
    "unknown version": (
        {"version": 7},
        GOOD,
        "NOT_FOUND",
        f"Servable not found for request: Specific({PIXEL_NAME}, 7)",
    ),
    "unknown label": (
        {"label": "canary"},
        GOOD,
        "INVALID_ARGUMENT",
        "Unrecognized servable version label: canary",
    ),
    "missing input": (
        {},
        {},
        "INVALID_ARGUMENT",
        "input size does not match signature: 0!=1 len({}) != len({inputs}). "
        "Sent extra: {}. Missing but required: {inputs}.",
    ),
    "misnamed input": (
        {},
        {"images": GOOD["inputs"]},
        "INVALID_ARGUMENT",
        "Signature input alias: inputs(feed name: serving_default_inputs:0) not found in "
        "request and no default value provided. Inputs expected to be in the request "
        "{images}, or default input alias set: ",
    ),
    "wrong dtype": (
        {},
        {"inputs": np.zeros((1, 8, 8, 3), np.float32)},
        "INVALID_ARGUMENT",
        "Expects arg[0] to be uint8 but float is provided",
    ),
}


@pytest.mark.parametrize(
    ("options", "inputs", "code", "message"), PREDICT_ERRORS.values(), ids=PREDICT_ERRORS.keys()
)
def test_predict_errors_are_tf_servings(pixel_grpc, options, inputs, code, message) -> None:
    with (
        client(pixel_grpc, options.pop("model_name", PIXEL_NAME), **options) as grpc_client,
        pytest.raises(GrpcStatusError) as error,
    ):
        grpc_client.predict_arrays(inputs)
    assert (error.value.code, error.value.message) == (code, message)
    assert "\n" not in str(error.value)


def test_unknown_signature_is_failed_precondition(pixel_grpc) -> None:
    with client(pixel_grpc) as grpc_client, pytest.raises(GrpcStatusError) as error:
        grpc_client.predict_arrays(GOOD, signature_name="detect")
    assert error.value.code == "FAILED_PRECONDITION"
    assert error.value.message == 'Serving signature key "detect" not found.'


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model_name": "nope"}, "Could not find any versions of model nope"),
        ({"version": 3}, f"Could not find version 3 of model {PIXEL_NAME}"),
    ],
    ids=["unknown model", "unknown version"],
)
def test_status_errors_are_tf_servings(pixel_grpc, options, message) -> None:
    with (
        client(pixel_grpc, options.pop("model_name", PIXEL_NAME), **options) as grpc_client,
        pytest.raises(GrpcStatusError) as error,
    ):
        grpc_client.status()
    assert (error.value.code, error.value.message) == ("NOT_FOUND", message)


def test_metadata_of_an_unknown_model_is_not_found(pixel_grpc) -> None:
    with client(pixel_grpc, "nope") as grpc_client, pytest.raises(GrpcStatusError) as error:
        grpc_client.metadata()
    assert error.value.code == "NOT_FOUND"


def test_server_down_is_one_line_after_the_retries() -> None:
    start = time.monotonic()
    with (
        GrpcClient(f"{HOST}:{free_port()}", "m", timeout=5, retries=2, backoff=0.1) as grpc_client,
        pytest.raises(ServerUnreachable) as error,
    ):
        grpc_client.status()
    assert 0.2 <= time.monotonic() - start < 5  # retried (0 s, then 0.2 s), not timed out
    assert "\n" not in str(error.value) and "Connection refused" in str(error.value)


def test_too_big_an_answer_is_refused(pixel_grpc) -> None:
    with (
        client(pixel_grpc, max_response_bytes=1000) as grpc_client,
        pytest.raises(ResponseTooLarge) as error,
    ):
        grpc_client.predict_arrays(GOOD)
    assert error.value.limit == 1000


@pytest.fixture
def slow_api(pixel_api) -> Iterator[RestApi]:
    with SlowExecutor(2) as executor:
        yield RestApi(pixel_api.models, executor)


def test_deadline_exceeded_is_a_timeout(slow_api) -> None:
    with (
        GrpcServer(slow_api, port=0, host=HOST) as server,
        client(server, timeout=0.3) as grpc_client,
        pytest.raises(ServerTimeout) as error,
    ):
        grpc_client.predict_arrays(GOOD)
    assert error.value.timeout == 0.3


def test_stop_lets_the_call_in_flight_finish_then_refuses(slow_api) -> None:
    server = GrpcServer(slow_api, port=0, host=HOST).start()
    results = []
    with client(server) as grpc_client:
        call = threading.Thread(target=lambda: results.append(grpc_client.predict_arrays(GOOD)))
        call.start()
        time.sleep(0.3)  # the call is in the model (the executor holds it for a second)
        server.stop(grace_s=10)
        call.join()
    assert results and results[0]["num_detections"].tolist() == [100.0]
    with client(server, timeout=2, retries=0) as late, pytest.raises(ServerUnreachable):
        late.status()


def test_connections_are_closed_at_their_max_age_and_clients_carry_on(pixel_api) -> None:
    with (
        GrpcServer(pixel_api, port=0, host=HOST, max_connection_age_s=0.2) as server,
        client(server) as grpc_client,
    ):
        for _ in range(4):
            assert grpc_client.status()[0].available
            time.sleep(0.3)


def test_a_taken_port_is_an_error(pixel_grpc, pixel_api) -> None:
    with pytest.raises(ServingError, match="cannot listen for gRPC"):
        GrpcServer(pixel_api, port=pixel_grpc.port, host=HOST).start()


def test_the_authorization_header_is_sent() -> None:
    """The server sees the value as the `authorization` metadata of the call."""
    seen = []

    def status(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(dict(context.invocation_metadata()).get("authorization"))
        return b""  # an empty GetModelStatusResponse

    handler = grpc.unary_unary_rpc_method_handler(status)
    server = grpc.server(ThreadPoolExecutor(1))
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "tensorflow.serving.ModelService", {"GetModelStatus": handler}
            )
        ]
    )
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    try:
        with GrpcClient(f"{HOST}:{port}", "m", authorization="Bearer s3cret") as grpc_client:
            assert grpc_client.status() == []
        # A URL's user:password go as basic auth, unless an authorization value is given.
        spec = ServerSpec.from_url(f"http://user:pa55@{HOST}:1/v1/models/m")
        with GrpcClient.from_spec(spec, port, authorization=None) as grpc_client:
            assert grpc_client.status() == []
    finally:
        server.stop(0).wait()
    assert seen == ["Bearer s3cret", "Basic dXNlcjpwYTU1"]


def test_channel_arguments_read_as_tf_serving_writes_them() -> None:
    assert parse_channel_arguments("grpc.max_connection_age_ms=30000, grpc.lb_policy_name=x") == [
        ("grpc.max_connection_age_ms", 30000),
        ("grpc.lb_policy_name", "x"),
    ]
    with pytest.raises(ServingError, match="KEY=VALUE"):
        parse_channel_arguments("grpc.max_connection_age_ms")


def test_a_rest_server_spec_names_the_same_model_on_the_grpc_port(pixel_grpc) -> None:
    spec = ServerSpec.from_url(f"http://{HOST}:8501/v1/models/{PIXEL_NAME}/versions/1:predict")
    with GrpcClient.from_spec(spec, port=pixel_grpc.port) as grpc_client:
        assert grpc_client.target == f"{HOST}:{pixel_grpc.port}"
        assert grpc_client.version == 1
        assert grpc_client.status()[0].version == "1"
