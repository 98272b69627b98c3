"""--model_config_file: several models, version policies, labels, reloads, and the metrics page.

One real server per module serves two models from a config file (the pixel detector as versions
1 and 2 under an `all` policy with labels, the encoded detector under the default policy), with
--monitoring_config_file; REST and gRPC are asked the same things. Reloading the config file
runs on a server of its own, since it changes what is served. Base paths are tmp dirs of symlinks
to the shared version directories.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from google.protobuf import text_format
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.model_config import VersionPolicy
from sidecar_testing.data import ENCODED_MODEL, IMAGE1, PIXEL_MODEL
from sidecar_testing.servers import LocalServer, run_without_ports

METRICS_PATH = "/monitoring/prometheus/metrics"
PIXELS = {"instances": np.zeros((1, 8, 8, 3), np.uint8).tolist()}


def config_text(*models: str) -> str:
    return "model_config_list {\n" + "\n".join(models) + "\n}\n"


def model_text(name: str, base_path: Path, extra: str = "") -> str:
    return (
        f'  config {{ name: "{name}" base_path: "{base_path}" model_platform: "tensorflow" '
        f"{extra} }}"
    )


def base_path(root: Path, name: str, versions: dict[int, Path]) -> Path:
    """A model base path whose version directories link to the shared SavedModels."""
    path = root / name
    path.mkdir()
    for version, target in versions.items():
        (path / str(version)).symlink_to(target)
    return path


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "root": root,
        "pixels": base_path(root, "pixels", {1: PIXEL_MODEL / "1", 2: PIXEL_MODEL / "1"}),
        "encoded": base_path(root, "encoded", {1: ENCODED_MODEL / "1"}),
    }


@pytest.fixture(scope="module")
def server(paths):
    config = paths["root"] / "models.config"
    config.write_text(
        config_text(
            model_text(
                "pixels",
                paths["pixels"],
                "model_version_policy { all {} } "
                'version_labels { key: "stable" value: 1 } '
                'version_labels { key: "canary" value: 2 } '
                'version_labels { key: "future" value: 9 }',
            ),
            model_text("encoded", paths["encoded"]),
        )
    )
    monitoring = paths["root"] / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }\n")
    # TF Serving checks labels before it loads anything: at start-up they need this flag.
    with LocalServer(
        None,
        extra_args=[
            f"--model_config_file={config}",
            f"--monitoring_config_file={monitoring}",
            "--allow_version_labels_for_unavailable_models",
        ],
    ) as server:
        yield server


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield channel


def url(server: LocalServer, path: str) -> str:
    return f"{server.base_url}/v1/models/{path}"


def grpc_predict(channel, name: str, version: int | None = None, label: str | None = None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    if name == "encoded":
        request.inputs["inputs"].CopyFrom(tf.make_tensor_proto([IMAGE1.read_bytes()]))
    else:
        request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 8, 8, 3), np.uint8)))
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)


def states(document: dict) -> list[tuple[str, str]]:
    return [(entry["version"], entry["state"]) for entry in document["model_version_status"]]


# ---- several models, policies, labels ----------------------------------------------------------


def test_each_model_of_the_file_is_served_over_rest(server) -> None:
    pixels = requests.post(url(server, "pixels:predict"), json=PIXELS)
    assert pixels.status_code == 200
    assert len(pixels.json()["predictions"][0]["detection_boxes"]) == 100
    b64 = base64.b64encode(IMAGE1.read_bytes()).decode()
    encoded = requests.post(url(server, "encoded:predict"), json={"instances": [{"b64": b64}]})
    assert encoded.status_code == 200
    assert encoded.json()["predictions"][0]["detection_classes"][:2] == [18.0, 18.0]  # dogs
    nope = requests.post(url(server, "nope:predict"), json=PIXELS)
    assert nope.status_code == 404
    assert nope.json() == {"error": "Servable not found for request: Latest(nope)"}


def test_the_all_policy_serves_every_version_and_latest_is_the_highest(server, channel) -> None:
    for version in (1, 2):
        response = requests.post(url(server, f"pixels/versions/{version}:predict"), json=PIXELS)
        assert response.status_code == 200
    assert requests.get(url(server, "pixels/metadata")).json()["model_spec"]["version"] == "2"
    assert grpc_predict(channel, "pixels").model_spec.version.value == 2
    assert grpc_predict(channel, "pixels", version=1).model_spec.version.value == 1
    missing = requests.post(url(server, "pixels/versions/3:predict"), json=PIXELS)
    assert missing.json() == {"error": "Servable not found for request: Specific(pixels, 3)"}


def test_status_lists_every_version_highest_first(server, channel) -> None:
    assert states(requests.get(url(server, "pixels")).json()) == [
        ("2", "AVAILABLE"),
        ("1", "AVAILABLE"),
    ]
    assert states(requests.get(url(server, "encoded")).json()) == [("1", "AVAILABLE")]
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "pixels"
    answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request)
    assert [(s.version, s.state) for s in answer.model_version_status] == [(2, 30), (1, 30)]
    missing = requests.get(url(server, "encoded/versions/2"))
    assert missing.status_code == 404
    assert missing.json() == {"error": "Could not find version 2 of model encoded"}


def test_labels_name_their_versions_over_rest_and_grpc(server, channel) -> None:
    stable = requests.get(url(server, "pixels/labels/stable/metadata")).json()
    assert stable["model_spec"]["version"] == "1"
    canary = requests.post(url(server, "pixels/labels/canary:predict"), json=PIXELS)
    assert canary.status_code == 200
    assert grpc_predict(channel, "pixels", label="stable").model_spec.version.value == 1
    assert grpc_predict(channel, "pixels", label="canary").model_spec.version.value == 2

    # Allowed by --allow_version_labels_for_unavailable_models: a label ahead of its version.
    future = requests.post(url(server, "pixels/labels/future:predict"), json=PIXELS)
    assert future.status_code == 404
    assert future.json() == {"error": "Servable not found for request: Specific(pixels, 9)"}

    unknown = requests.post(url(server, "pixels/labels/beta:predict"), json=PIXELS)
    assert unknown.status_code == 400
    assert unknown.json() == {"error": "Unrecognized servable version label: beta"}
    with pytest.raises(grpc.RpcError) as error:
        grpc_predict(channel, "encoded", label="stable")  # labels are per model
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "Unrecognized servable version label: stable"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (VersionPolicy(), {7}),
        (VersionPolicy("latest", num_versions=2), {5, 7}),
        (VersionPolicy("all"), {1, 5, 7}),
        (VersionPolicy("specific", versions=frozenset({1, 3})), {1}),
    ],
)
def test_version_policies_choose_as_tf_serving_does(policy, expected) -> None:
    assert policy.choose({1, 5, 7}) == expected


# ---- metrics -------------------------------------------------------------------------------


def metric_samples(server: LocalServer) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} from the server's Prometheus page."""
    response = requests.get(server.base_url + METRICS_PATH)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def count(samples: dict, model: str, status: str) -> float:
    labels = (("model_name", model), ("status", status))
    return samples.get((":tensorflow:serving:request_count_total", labels), 0)


def latency_count(samples: dict, model: str, api: str, entrypoint: str) -> float:
    labels = (("API", api), ("entrypoint", entrypoint), ("model_name", model))
    return samples.get((":tensorflow:serving:request_latency_count", labels), 0)


def test_metrics_count_requests_by_model_and_status(server, channel) -> None:
    before = metric_samples(server)
    for _ in range(2):
        assert requests.post(url(server, "pixels:predict"), json=PIXELS).status_code == 200
    assert requests.post(url(server, "pixels/versions/9:predict"), json=PIXELS).status_code == 404
    assert requests.post(url(server, "pixels:predict"), json={}).status_code == 400
    grpc_predict(channel, "encoded")
    with pytest.raises(grpc.RpcError):
        grpc_predict(channel, "nope")
    after = metric_samples(server)

    def delta(model: str, status: str) -> float:
        return count(after, model, status) - count(before, model, status)

    assert delta("pixels", "OK") == 2
    assert delta("pixels", "NOT_FOUND") == 1
    assert delta("pixels", "INVALID_ARGUMENT") == 1
    assert delta("encoded", "OK") == 1
    assert delta("nope", "NOT_FOUND") == 1
    # Latency only for requests that succeeded, by API and entrypoint, as TF Serving's.
    rest = latency_count(after, "pixels", "predict", "REST")
    assert rest - latency_count(before, "pixels", "predict", "REST") == 2
    grpc_count = latency_count(after, "encoded", "Predict", "GRPC")
    assert grpc_count - latency_count(before, "encoded", "Predict", "GRPC") == 1


def test_metrics_count_each_version_load(server, paths) -> None:
    samples = metric_samples(server)
    for name, version in (("pixels", 1), ("pixels", 2), ("encoded", 1)):
        labels = (("model_path", str(paths[name] / str(version))), ("status", "success"))
        assert samples[(":tensorflow:cc:saved_model:load_attempt_count_total", labels)] == 1
        latency = (("model_path", str(paths[name] / str(version))),)
        assert samples[(":tensorflow:cc:saved_model:load_latency_total", latency)] > 0


def test_the_page_uses_tf_servings_names(server) -> None:
    """PrometheusExporter's form: ':' names, counters without the _total suffix, no HELP."""
    page = requests.get(server.base_url + METRICS_PATH).text
    assert "# TYPE :tensorflow:serving:request_count counter" in page
    assert ':tensorflow:serving:request_count{model_name="pixels",status="OK"} ' in page
    assert "_total" not in page and "_created" not in page
    assert "# HELP" not in page


# ---- reloading the file --------------------------------------------------------------------


def replace_file(path: Path, text: str) -> None:
    """Write `text` as `path` at once: the server polling it never reads half of it."""
    staged = path.with_suffix(".new")
    staged.write_text(text)
    staged.replace(path)


def wait_until(check, what: str, server: LocalServer, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"{what} not seen after {timeout} s:\n{server.stderr()}")


def test_a_changed_config_file_adds_and_removes_models(tmp_path) -> None:
    encoded = base_path(tmp_path, "encoded", {1: ENCODED_MODEL / "1"})
    pixels = base_path(tmp_path, "pixels", {1: PIXEL_MODEL / "1", 2: PIXEL_MODEL / "1"})
    config = tmp_path / "models.config"
    config.write_text(config_text(model_text("first", encoded)))
    with LocalServer(
        None,
        extra_args=[f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1"],
    ) as server:
        assert requests.get(url(server, "first")).status_code == 200
        second = model_text("second", pixels, "model_version_policy { specific { versions: 1 } }")
        replace_file(config, config_text(second))

        def second_state():
            response = requests.get(url(server, "second"))
            return response.status_code == 200 and states(response.json())

        # Reported while it loads (LOADING, as TF Serving does), served once AVAILABLE.
        wait_until(lambda: second_state() == [("1", "AVAILABLE")], "the added model", server)

        def first_gone():
            return requests.post(url(server, "first:predict"), json=PIXELS).status_code == 404

        wait_until(first_gone, "the removed model unloaded", server)
        # TF Serving's state monitor remembers it: its version is reported END.
        assert states(requests.get(url(server, "first")).json()) == [("1", "END")]

        # A label may name a version once it is available: now it is.
        labelled = second[:-1] + 'version_labels { key: "stable" value: 1 } }'
        replace_file(config, config_text(labelled))

        def label_served():
            response = requests.get(url(server, "second/labels/stable/metadata"))
            return response.status_code == 200 and response.json()["model_spec"]["version"] == "1"

        wait_until(label_served, "the label", server)
        # One naming a version that isn't loaded: the whole file is refused, and logged.
        replace_file(config, config_text(second[:-1] + 'version_labels { key: "next" value: 2 } }'))
        wait_until(
            lambda: "which is not currently available for inference" in server.stderr(),
            "the refused label logged",
            server,
        )
        assert requests.get(url(server, "second/labels/stable/metadata")).status_code == 200

        replace_file(config, "model_config_list { config { name: ")  # not protobuf text
        wait_until(
            lambda: "Failed to read ModelServerConfig file: " in server.stderr(),
            "the refused file logged",
            server,
        )
        assert requests.post(url(server, "second:predict"), json=PIXELS).status_code == 200


def reload_request(text: str) -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    return request


def test_handle_reload_config_request_swaps_the_models(tmp_path) -> None:
    """The gRPC way to send a new config (official stubs), with TF Serving's refusals."""
    encoded = base_path(tmp_path, "encoded", {1: ENCODED_MODEL / "1"})
    pixels = base_path(tmp_path, "pixels", {1: PIXEL_MODEL / "1"})
    config = tmp_path / "models.config"
    config.write_text(config_text(model_text("first", encoded)))
    with (
        LocalServer(None, extra_args=[f"--model_config_file={config}"]) as server,
        grpc.insecure_channel(server.grpc_target) as channel,
    ):
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        duplicate = config_text(model_text("a", pixels), model_text("a", pixels))
        with pytest.raises(grpc.RpcError) as error:
            stub.HandleReloadConfigRequest(reload_request(duplicate), timeout=60)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details() == "Illegal to list model a multiple times in config list"
        custom = model_management_pb2.ReloadConfigRequest()
        custom.config.custom_model_config.type_url = "type.googleapis.com/x"
        with pytest.raises(grpc.RpcError) as error:
            stub.HandleReloadConfigRequest(custom, timeout=60)
        assert "Only ModelConfigList is currently supported" in error.value.details()
        assert requests.get(url(server, "first")).status_code == 200  # nothing changed

        answer = stub.HandleReloadConfigRequest(
            reload_request(config_text(model_text("second", pixels))), timeout=120
        )
        assert answer.status.error_code == 0
        # The call returns once the new models are loaded, as TF Serving's does.
        assert requests.post(url(server, "second:predict"), json=PIXELS).status_code == 200
        assert requests.post(url(server, "first:predict"), json=PIXELS).status_code == 404


# ---- start-up errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("model_config_list { config { name: ", "Invalid protobuf file: '"),
        (
            config_text(model_text("a", Path("/m")), model_text("a", Path("/n"))),
            "Illegal to list model a multiple times in config list",
        ),
        (
            config_text(
                '  config { name: "r" base_path: "relative" model_platform: "tensorflow" }'
            ),
            "Expected model r to have an absolute path or URI; got base_path()=relative",
        ),
        (
            config_text('  config { name: "p" base_path: "/p" }'),
            "nor ModelServerConfig::model_platform, model name is p",
        ),
    ],
    ids=["syntax", "duplicate", "relative", "platform"],
)
def test_a_bad_config_file_is_one_line_before_anything_loads(tmp_path, config, message) -> None:
    path = tmp_path / "models.config"
    path.write_text(config)
    result = run_without_ports(f"--model_config_file={path}")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_labels_of_versions_not_loaded_need_the_flag_at_start_up(tmp_path) -> None:
    encoded = base_path(tmp_path, "encoded", {1: ENCODED_MODEL / "1"})
    config = tmp_path / "models.config"
    config.write_text(config_text(model_text("m", encoded, 'version_labels { key: "a" value: 1 }')))
    result = run_without_ports(f"--model_config_file={config}")
    assert result.returncode == 1
    assert (
        "FAILED_PRECONDITION: Request to assign label to version 1 of model m, which is not "
        "currently available for inference"
    ) in result.stderr
    assert "Traceback" not in result.stderr


def test_no_model_at_all_is_tf_servings_error() -> None:
    result = run_without_ports()
    assert result.returncode == 2
    assert (
        "Both server_options.model_base_path and server_options.model_config_file are empty!"
        in result.stderr
    )


def test_a_bad_monitoring_config_file_is_one_line(tmp_path) -> None:
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: yes please }\n")
    result = run_without_ports(
        f"--model_base_path={ENCODED_MODEL}", f"--monitoring_config_file={monitoring}"
    )
    assert result.returncode == 2
    assert f"Invalid protobuf file: '{monitoring}'" in result.stderr
    assert "Traceback" not in result.stderr
