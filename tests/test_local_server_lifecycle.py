"""The local server's process life: loading, versions, deadlines, failures, signals, CLI errors.

Each test starts its own real server process, since each needs a different model dir, flag or
ending.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import time
import zlib

import pytest
import requests

from sidecar_testing.data import ENCODED_MODEL, IMAGE1, IMAGE2
from sidecar_testing.servers import HOST, LocalServer, port_accepts, run_local_server


def b64_request(image) -> dict:
    return {"instances": [{"b64": base64.b64encode(image.read_bytes()).decode()}]}


def test_port_opens_after_load_and_sigterm_finishes_the_request_in_flight() -> None:
    server = LocalServer(ENCODED_MODEL, model_name="enc")
    try:
        process = server.launch()
        refused_while_loading = False
        while not port_accepts(server.port):
            assert process.poll() is None, server.stderr()
            refused_while_loading = True
            time.sleep(0.05)
        assert refused_while_loading
        assert "Successfully loaded servable version {name: enc version: 1}" in server.stderr()

        idle = requests.Session()  # an idle keep-alive connection must not hold up the exit
        assert idle.get(server.model_url).status_code == 200

        # A request whose body is still arriving when SIGTERM comes: it must still be answered.
        body = json.dumps(b64_request(IMAGE1)).encode()
        with socket.create_connection((HOST, server.port)) as conn:
            conn.sendall(
                f"POST /v1/models/enc:predict HTTP/1.1\r\nHost: {HOST}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body[:-10]
            )
            time.sleep(1.0)  # the server has read the request line: this request is in flight
            process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            conn.sendall(body[-10:])
            response = conn.makefile("rb").read()  # the server closes after answering
        head, _, payload = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"Connection: close" in head
        assert json.loads(payload)["predictions"][0]["detection_classes"][:2] == [18.0, 18.0]

        assert process.wait(timeout=60) == 0
        assert not port_accepts(server.port)
        assert "SIGTERM" in server.stderr()
        idle.close()
    finally:
        server.stop()


def test_latest_numeric_version_is_served(tmp_path) -> None:
    shared_version = ENCODED_MODEL / "1"
    (tmp_path / "1").symlink_to(shared_version)
    (tmp_path / "00002").symlink_to(shared_version)  # version 2: names are parsed as integers
    (tmp_path / "10.bak").mkdir()  # not a number: ignored
    (tmp_path / "tmp").mkdir()
    with LocalServer(tmp_path, model_name="versions") as server:
        status = requests.get(server.model_url).json()
        assert [v["version"] for v in status["model_version_status"]] == ["2"]
        response = requests.post(server.model_url + "/versions/2:predict", json=b64_request(IMAGE1))
        assert response.status_code == 200
        response = requests.post(server.model_url + "/versions/1:predict", json=b64_request(IMAGE1))
        assert response.status_code == 404
        assert response.json() == {"error": "Servable not found for request: Specific(versions, 1)"}
        assert requests.get(server.model_url + "/metadata").json()["model_spec"]["version"] == "2"
        assert server.stop(signal.SIGINT) == 0  # Ctrl-C is a clean stop too


def wait_for_version(server: LocalServer, version: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(server.model_url).json()
        if {"version": version, "state": "AVAILABLE"}.items() <= status["model_version_status"][
            0
        ].items():
            return
        time.sleep(0.2)
    raise AssertionError(f"version {version} not served after {timeout} s:\n{server.stderr()}")


def wait_for_log(server: LocalServer, line: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while line not in server.stderr():
        assert time.monotonic() < deadline, f"no {line!r} in the log:\n{server.stderr()}"
        time.sleep(0.2)


def test_a_new_version_dir_is_picked_up_while_serving(tmp_path) -> None:
    (tmp_path / "1").symlink_to(ENCODED_MODEL / "1")
    with LocalServer(
        tmp_path, model_name="polled", extra_args=["--file_system_poll_wait_seconds=1"]
    ) as server:
        wait_for_version(server, "1")
        broken = tmp_path / "3"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        # A broken new version is reported and the old one kept.
        wait_for_log(server, "Loading servable version {name: polled version: 3} failed: ")
        assert "still serving versions [1]" in server.stderr()
        [failed] = requests.get(server.model_url + "/versions/3").json()["model_version_status"]
        assert failed["state"] == "END"  # with the load's error, as TF Serving reports it
        assert failed["status"]["error_code"] != "OK" and failed["status"]["error_message"]
        assert requests.post(server.predict_url, json=b64_request(IMAGE1)).status_code == 200

        (tmp_path / "4").symlink_to(ENCODED_MODEL / "1")
        wait_for_version(server, "4")
        assert requests.post(server.predict_url, json=b64_request(IMAGE1)).status_code == 200
        old = requests.post(server.model_url + "/versions/1:predict", json=b64_request(IMAGE1))
        assert old.status_code == 404
        assert "Unloaded servable version {name: polled version: 1}" in server.stderr()


def test_request_past_the_rest_timeout_is_a_504() -> None:
    with LocalServer(
        ENCODED_MODEL, model_name="slow", extra_args=["--rest_api_timeout_in_ms=1"]
    ) as server:
        # A real model call on a 1352x900 JPEG takes tens of ms: far past 1 ms.
        response = requests.post(server.predict_url, json=b64_request(IMAGE2))
        assert response.status_code == 504
        assert response.json() == {"error": "Timed out waiting for notification"}
        assert requests.get(server.model_url).status_code == 200  # and it keeps serving


@pytest.fixture(scope="module")
def zlib_model(tmp_path_factory):
    """A real SavedModel whose graph fails with DATA_LOSS on bytes that aren't zlib data."""
    import tensorflow as tf

    class Inflate(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="data")])
        def inflate(self, data):
            return {"inflated": tf.io.decode_compressed(data, compression_type="ZLIB")}

    base_path = tmp_path_factory.mktemp("zlib_model")
    module = Inflate()
    tf.saved_model.save(module, str(base_path / "1"), signatures=module.inflate)
    return base_path


def test_a_failing_graph_is_a_500_with_its_message(zlib_model) -> None:
    with LocalServer(zlib_model, model_name="zlib") as server:
        junk = base64.b64encode(b"not zlib").decode()
        response = requests.post(server.predict_url, json={"instances": [{"b64": junk}]})
        assert response.status_code == 500
        assert set(response.json()) == {"error"}
        assert "incorrect header check" in response.json()["error"]
        # One output: row format answers bare values, not {name: value} objects.
        good = base64.b64encode(zlib.compress(b"hello")).decode()
        response = requests.post(server.predict_url, json={"instances": [{"b64": good}]})
        assert response.json() == {"predictions": ["hello"]}


run_cli = run_local_server


def test_help_shows_tf_serving_flags_and_examples() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--model_name", "--model_base_path", "--rest_api_port", "--port"):
        assert flag in result.stdout
    assert "examples:" in result.stdout


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "is not a directory"),
        ("no_versions", "no numeric version directory under"),
        ("version_dir", "is a SavedModel, not a model base path: pass its parent"),
    ],
)
def test_unservable_base_path_is_a_clear_error(tmp_path, layout: str, message: str) -> None:
    base_path = tmp_path / "model"
    if layout == "no_versions":
        (base_path / "saved_model").mkdir(parents=True)
    if layout == "version_dir":
        base_path.symlink_to(ENCODED_MODEL / "1")
    result = run_cli("--model_name=m", f"--model_base_path={base_path}", "--rest_api_port=0")
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
