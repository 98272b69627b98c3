"""Server-side batching (--enable_batching) through real server processes, over REST and gRPC.

A tiny SavedModel built here shows what the model saw: for each row its sum (`total`) and the
number of rows in the model call that computed it (`rows`), so a test can tell a merged call
from single ones and check each caller got exactly its own rows. The shared detection models
show the same on real photos: every answer is the model's own answer for that image, called
in-process without batching.
"""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving import local_server
from serving.batching import BatchingOptions, BatchScheduler, merge_inputs
from serving.model import ServedModel
from serving.protos.session_bundle_config_pb2 import BatchingParameters
from sidecar_testing.data import ENCODED_MODEL, IMAGE1, IMAGE2, PIXEL_MODEL, ROOT
from sidecar_testing.servers import LocalServer

TINY = "tiny"
SIZE = (320, 240)  # the pixel model batches pictures of one size
FULL_QUEUE = (
    "The batch scheduling queue to which this task was submitted is full; currently 2 batches "
    "enqueued and max_enqueued_batches is 2"
)
# TF Serving's numbers of BatchingParameters (session_bundle_config.proto); its generated module
# is not in the tensorflow-serving-api wheel, so the facts are written out here.
TF_SERVING_FIELDS = {
    "max_batch_size": (1, "Int64Value"),
    "batch_timeout_micros": (2, "Int64Value"),
    "max_enqueued_batches": (3, "Int64Value"),
    "num_batch_threads": (4, "Int64Value"),
    "thread_pool_name": (5, "StringValue"),
    "allowed_batch_sizes": (6, "int64"),
    "pad_variable_length_inputs": (7, "bool"),
    "enable_large_batch_splitting": (8, "BoolValue"),
    "max_execution_batch_size": (9, "Int64Value"),
}


# ---- the tiny model and its server -------------------------------------------------------------


class RowSums(tf.Module):
    """x: float [rows, n] -> total: each row's sum, rows: the call's row count, on every row."""

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        rows = tf.shape(x)[0]
        return {"total": tf.reduce_sum(x, axis=1), "rows": tf.fill([rows], rows)}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    base_path = tmp_path_factory.mktemp("tiny")
    module = RowSums()
    tf.saved_model.save(module, str(base_path / "1"), signatures=module.serve)
    return base_path


def batching_server(base_path: Path, parameters: str, *flags: str, name: str = TINY):
    """A real server with --enable_batching and `parameters` as its parameters file."""
    parameters_file = base_path.parent / f"{base_path.name}-batching.txt"
    parameters_file.write_text(parameters)
    extra = ["--enable_batching", f"--batching_parameters_file={parameters_file}", *flags]
    return LocalServer(base_path, model_name=name, extra_args=extra)


@pytest.fixture(scope="module")
def tiny_server(tiny_model: Path) -> Iterator[LocalServer]:
    """Batches of up to 4 rows, padded to 2 or 4; an unfilled batch waits 1.5 s; REST calls
    time out after 1 s (so a REST call left waiting for its batch gets 504)."""
    parameters = """
        max_batch_size { value: 4 }
        batch_timeout_micros { value: 1500000 }
        max_enqueued_batches { value: 2 }
        num_batch_threads { value: 1 }
        allowed_batch_sizes: 2
        allowed_batch_sizes: 4
    """
    with batching_server(tiny_model, parameters, "--rest_api_timeout_in_ms=1000") as server:
        grpc_rows(server, np.ones((4, 2), np.float32))  # a full batch: runs now, traces the model
        yield server
        assert server.stop() == 0  # SIGTERM: the batch threads end with the server


def rest_predict(server: LocalServer, x: np.ndarray) -> requests.Response:
    return requests.post(server.predict_url, json={"inputs": {"x": x.tolist()}}, timeout=60)


def rest_rows(server: LocalServer, x: np.ndarray) -> dict[str, np.ndarray]:
    response = rest_predict(server, x)
    assert response.status_code == 200, response.text
    return {name: np.array(value) for name, value in response.json()["outputs"].items()}


def grpc_predict(
    server: LocalServer, inputs: dict[str, np.ndarray], timeout: float = 60
) -> dict[str, np.ndarray]:
    """PredictionService.Predict with TF Serving's own stubs; a failure raises grpc.RpcError."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = server.model_name
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=timeout)
    return {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}


def grpc_rows(server: LocalServer, x: np.ndarray, timeout: float = 60) -> dict[str, np.ndarray]:
    return grpc_predict(server, {"x": x}, timeout)


def at_once(calls: list[Callable[[], object]]) -> list[object]:
    """Run the calls in threads released together; their results in order."""
    start = threading.Barrier(len(calls))

    def released(call: Callable[[], object]) -> object:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(released, calls))


def assert_own_rows(answer: dict[str, np.ndarray], x: np.ndarray, rows: int) -> None:
    """The caller's rows only (the sums of its own x), computed in a call of `rows` rows."""
    np.testing.assert_allclose(answer["total"], x.sum(axis=1), rtol=1e-6)
    assert answer["rows"].tolist() == [rows] * len(x)


# ---- the tiny model: merging, padding, refusals --------------------------------------------------


def test_concurrent_rest_and_grpc_calls_are_one_model_call(tiny_server) -> None:
    xs = [np.array([[i, 10.0 * i]], np.float32) for i in range(1, 5)]
    calls = [lambda x=x: rest_rows(tiny_server, x) for x in xs[:2]]
    calls += [lambda x=x: grpc_rows(tiny_server, x) for x in xs[2:]]
    started = time.monotonic()
    answers = at_once(calls)
    for answer, x in zip(answers, xs, strict=True):
        assert_own_rows(answer, x, rows=4)  # all four in one call of 4 rows
    assert time.monotonic() - started < 1.5  # a full batch runs at once, not at the timeout


def test_a_batch_runs_at_its_timeout_padded_to_an_allowed_size(tiny_server) -> None:
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    started = time.monotonic()
    answer = grpc_rows(tiny_server, x)
    assert time.monotonic() - started >= 1.4  # batch_timeout_micros: 1.5 s
    assert_own_rows(answer, x, rows=2)  # padded from 1 row to 2, the padding row dropped


def test_calls_with_other_shapes_go_in_other_batches(tiny_server) -> None:
    xs = [np.full((1, width), value, np.float32) for width, value in [(2, 1), (3, 2), (2, 3)]]
    xs.append(np.full((2, 3), 4, np.float32))
    answers = at_once([lambda x=x: grpc_rows(tiny_server, x) for x in xs])
    for answer, x in zip(answers, xs, strict=True):
        assert_own_rows(answer, x, rows=2 if x.shape[1] == 2 else 4)  # width 3: 1 + 2 -> 4


def test_a_call_larger_than_max_batch_size_is_refused(tiny_server) -> None:
    x = np.ones((5, 2), np.float32)
    message = "Task size 5 is larger than maximum input batch size 4"
    response = rest_predict(tiny_server, x)
    assert (response.status_code, response.json()) == (400, {"error": message})
    with pytest.raises(grpc.RpcError) as error:
        grpc_rows(tiny_server, x)
    assert (error.value.code(), error.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
    )


def test_a_full_queue_is_unavailable_as_in_tf_serving(tiny_server) -> None:
    # Two batches wait for their timeout (one per shape): max_enqueued_batches is 2.
    waiting = [np.ones((1, 2), np.float32), np.ones((1, 3), np.float32)]
    with ThreadPoolExecutor(2) as pool:
        answers = [pool.submit(grpc_rows, tiny_server, x) for x in waiting]
        time.sleep(0.5)
        third = np.ones((1, 4), np.float32)
        response = rest_predict(tiny_server, third)
        assert (response.status_code, response.json()) == (503, {"error": FULL_QUEUE})
        with pytest.raises(grpc.RpcError) as error:
            grpc_rows(tiny_server, third)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error.value.details() == FULL_QUEUE
        for answer, x in zip(answers, waiting, strict=True):
            assert_own_rows(answer.result(), x, rows=2)  # then served at their timeout


def test_the_deadline_still_bounds_a_call_waiting_for_its_batch(tiny_server) -> None:
    x = np.ones((1, 2), np.float32)
    started = time.monotonic()
    response = rest_predict(tiny_server, x)  # --rest_api_timeout_in_ms=1000, the batch 1.5 s
    assert (response.status_code, response.json()) == (
        504,
        {"error": "Timed out waiting for notification"},
    )
    assert time.monotonic() - started < 1.4
    with pytest.raises(grpc.RpcError) as error:
        grpc_rows(tiny_server, x, timeout=0.3)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# ---- the batching itself, in-process (variable-length padding) --------------------------------


def test_variable_length_inputs_are_padded_with_their_first_element(tiny_model) -> None:
    """pad_variable_length_inputs: a shorter row is padded at its end with its tensor's first
    value (TF Serving's AddPadding), so the model sees the padding: [1, 2] -> [1, 2, 1]."""
    model = ServedModel.load(TINY, tiny_model)
    options = BatchingOptions(max_batch_size=2, batch_timeout_s=5, pad_variable_length_inputs=True)
    scheduler = BatchScheduler(options)
    try:
        short = scheduler.submit(model, "", {"x": np.array([[1.0, 2.0]], np.float32)})
        long = scheduler.submit(model, "", {"x": np.array([[5.0, 6.0, 7.0]], np.float32)})
        assert_own_rows(short.result(10), np.array([[1.0, 2.0, 1.0]]), rows=2)
        assert_own_rows(long.result(10), np.array([[5.0, 6.0, 7.0]]), rows=2)
    finally:
        scheduler.stop()


def test_merging_pads_up_with_the_last_tasks_first_row() -> None:
    first = {"x": np.array([[1, 2]]), "s": np.array([b"a"], object)}
    last = {"x": np.array([[3, 4], [5, 6]]), "s": np.array([b"b", b"c"], object)}
    merged = merge_inputs([first, last], padding_rows=2, pad_lengths=False)
    assert merged["x"].tolist() == [[1, 2], [3, 4], [5, 6], [3, 4], [3, 4]]
    assert merged["s"].tolist() == [b"a", b"b", b"c", b"b", b"b"]


# ---- the shared detection models: each photo's own detections --------------------------------


def variants(image: Path, size: tuple[int, int] | None) -> list[np.ndarray]:
    """Eight different pictures from one photo: flips, crops, a roll, a darker copy."""
    picture = Image.open(image).convert("RGB")
    width, height = picture.size
    crops = [
        picture,
        picture.crop((0, 0, width * 3 // 4, height * 3 // 4)),
        picture.crop((width // 4, height // 4, width, height)),
        picture.crop((width // 8, 0, width * 7 // 8, height)),
    ]
    pixels = [np.asarray(crop.resize(size) if size else crop) for crop in crops]
    pixels += [pixels[0][:, ::-1], pixels[1][::-1], np.roll(pixels[2], 50, axis=1)]
    pixels.append((pixels[3] * 0.7).astype(np.uint8))
    return [np.ascontiguousarray(p) for p in pixels]


def jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


DETECTION_BATCHING = """
    max_batch_size { value: 16 }
    batch_timeout_micros { value: 300000 }
"""


def assert_same_detections(answer: dict, expected: dict) -> None:
    """The server's answer for one image is the in-process model's for that image alone."""
    assert set(answer) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(np.float32(answer[name]), value, atol=1e-5, err_msg=name)


def sixteen_calls(server: LocalServer, tensors: list, rest_body: Callable) -> list:
    """Half over REST (one row each), half over gRPC, all at once: the answers' rows."""
    calls = []
    for n, tensor in enumerate(tensors):
        if n % 2:
            calls.append(lambda t=tensor: grpc_predict(server, {"inputs": t[None]}))
        else:
            calls.append(lambda t=tensor: rest_call(server, rest_body(t)))
    answers = at_once(calls)
    return [{k: v[0] if n % 2 else v for k, v in a.items()} for n, a in enumerate(answers)]


def rest_call(server: LocalServer, body: dict) -> dict:
    response = requests.post(server.predict_url, json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def test_sixteen_pictures_at_once_each_get_their_own_detections(model_reference) -> None:
    pictures = variants(IMAGE1, SIZE) + variants(IMAGE2, SIZE)
    signature = model_reference.signature(PIXEL_MODEL)
    with batching_server(PIXEL_MODEL, DETECTION_BATCHING, name="ssd") as server:
        answers = sixteen_calls(server, pictures, lambda p: {"instances": [p.tolist()]})
    for answer, picture in zip(answers, pictures, strict=True):
        alone = signature(inputs=tf.constant(picture[None]))
        assert_same_detections(answer, {k: v.numpy()[0] for k, v in alone.items()})


def test_sixteen_encoded_images_of_any_size_batch_and_a_bad_one_fails_alone(
    model_reference,
) -> None:
    images = [jpeg(p) for p in variants(IMAGE1, None) + variants(IMAGE2, None)]
    signature = model_reference.signature(ENCODED_MODEL)

    def b64(image: np.ndarray) -> dict:
        return {"instances": [{"b64": base64.b64encode(image.item()).decode()}]}

    with batching_server(ENCODED_MODEL, DETECTION_BATCHING, name="ssd_encoded") as server:
        tensors = [np.array(image, dtype=object) for image in images]
        answers = sixteen_calls(server, tensors, b64)
        # A broken image among good ones: only its caller gets the error.
        broken = {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}
        good = b64(tensors[0])
        responses = at_once(
            [
                lambda body=body: requests.post(server.predict_url, json=body)
                for body in [good, broken]
            ]
        )
    for answer, image in zip(answers, images, strict=True):
        alone = signature(inputs=tf.constant([image]))
        assert_same_detections(answer, {k: v.numpy()[0] for k, v in alone.items()})
    assert responses[0].status_code == 200
    assert responses[1].status_code == 400
    assert_same_detections(responses[0].json()["predictions"][0], answers[0])


# ---- the parameters file ----------------------------------------------------------------------


def test_the_parameters_proto_has_tf_servings_field_numbers() -> None:
    fields = BatchingParameters.DESCRIPTOR.fields_by_name
    ours = {
        name: (f.number, f.message_type.name if f.message_type else f.type)
        for name, f in fields.items()
    }
    scalar = {"int64": 3, "bool": 8}  # FieldDescriptor.TYPE_INT64, TYPE_BOOL
    assert ours == {
        name: (number, scalar.get(kind, kind)) for name, (number, kind) in TF_SERVING_FIELDS.items()
    }
    # The example of TF Serving's serving_config.md parses as it is.
    example = (
        "max_batch_size { value: 128 } batch_timeout_micros { value: 0 } "
        "max_enqueued_batches { value: 1000000 } num_batch_threads { value: 8 }"
    )
    parsed = text_format.Parse(example, BatchingParameters())
    assert (parsed.max_batch_size.value, parsed.num_batch_threads.value) == (128, 8)
    assert parsed.HasField("batch_timeout_micros")


BAD_FILES = {
    "not text format": ("max_batch_size: 4", "not a BatchingParameters text proto: 1:17"),
    "unknown field": ("batch_size { value: 4 }", 'has no field named "batch_size"'),
    "last allowed size": (
        "max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 4",
        "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; expected 8",
    ),
    "default max_batch_size": (
        "allowed_batch_sizes: 64",
        "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 64; "
        "expected 1000",
    ),
    "zero threads": ("num_batch_threads { value: 0 }", "num_batch_threads must be positive; was 0"),
    "negative timeout": (
        "batch_timeout_micros { value: -1 }",
        "batch_timeout_micros must be non-negative; was -1",
    ),
    "no queue": ("max_enqueued_batches { value: 0 }", "max_enqueued_batches must be positive"),
}


@pytest.mark.parametrize(("text", "message"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_parameters_file_is_one_line_before_anything_loads(
    tmp_path, capsys, text, message
) -> None:
    """local_server.main() itself (the process is tested below): it returns before it looks
    at the model base path, which does not exist."""
    parameters = tmp_path / "batching.txt"
    parameters.write_text(text)
    flags = ["--enable_batching", f"--batching_parameters_file={parameters}"]
    assert local_server.main(["--model_base_path=/nonexistent", *flags]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"local_server: error: {parameters}: ")
    assert message in stderr


def test_the_server_process_refuses_a_parameters_file_without_enable_batching(tmp_path) -> None:
    parameters = tmp_path / "batching.txt"
    parameters.write_text("max_batch_size { value: 4 }")
    result = start_and_fail([f"--batching_parameters_file={parameters}"])
    assert result.returncode == 2
    assert result.stderr == (
        "local_server: error: server_options.batching_parameters_file is set without setting "
        "server_options.enable_batching to true.\n"
    )
    result = start_and_fail(["--enable_batching", f"--batching_parameters_file={tmp_path}/none"])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "cannot read the batching parameters file" in result.stderr


def start_and_fail(flags: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "serving.local_server", "--model_base_path=/nonexistent"]
    return subprocess.run(
        command + flags, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
