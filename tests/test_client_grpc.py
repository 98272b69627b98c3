"""client.py over gRPC: every command against the local server's gRPC port, compared with the
same command over REST on the same server process (sidecar_testing.servers.LocalServer serves
both ports), and the gRPC client's failures as one-line messages.

Scores are never compared with fixed values: REST and gRPC answers are compared with each
other and with the model called in-process (sidecar_testing.reference).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from serving.grpc_api import GrpcServer
from serving.model import ServedModel
from serving.rest_api import RestApi
from sidecar_testing.cli import run, seed_args
from sidecar_testing.data import (
    COCO_DOG,
    ENCODED_MODEL,
    IMAGE1,
    IMAGE2,
    LEFT_DOG,
    PIXEL_MODEL,
    RIGHT_DOG,
    ROOT,
)
from sidecar_testing.servers import HOST, free_port

MODELS = [("pixel_server", "pixels", PIXEL_MODEL), ("encoded_server", "b64", ENCODED_MODEL)]


def grpc_args(server) -> list[str]:
    return ["--server_url", server.grpc_url, "--model_name", server.model_name]


def predict_json(*args) -> dict:
    result = run("predict", *args, "--image_path", IMAGE1)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize(("server_fixture", "encoding", "model_dir"), MODELS)
def test_the_two_dogs_come_through_grpc_as_through_rest(
    request, server_fixture, encoding, model_dir, model_reference
) -> None:
    server = request.getfixturevalue(server_fixture)
    over_grpc = predict_json(*grpc_args(server))
    over_rest = predict_json("--server_url", server.predict_url)

    left, right = sorted(over_grpc["detections"][:2], key=lambda d: d["box"][1])
    assert (left["class_id"], right["class_id"]) == (COCO_DOG, COCO_DOG)
    assert left["box"] == pytest.approx(LEFT_DOG, abs=0.02)
    assert right["box"] == pytest.approx(RIGHT_DOG, abs=0.02)
    model_reference.assert_matches(over_grpc["detections"], model_dir, IMAGE1)
    # The same model, the same pixels: the same detections, to the JSON's precision.
    assert over_grpc["detections"] == over_rest["detections"]
    assert over_grpc["model"] == over_rest["model"]
    assert over_grpc["request"]["encoding"] == over_rest["request"]["encoding"] == encoding
    # raw_response in REST's row form: the same outputs, float32 values alike.
    [grpc_row], [rest_row] = (r["raw_response"]["predictions"] for r in (over_grpc, over_rest))
    assert sorted(grpc_row) == sorted(rest_row)
    for name, values in rest_row.items():
        np.testing.assert_allclose(grpc_row[name], values, rtol=1e-6, err_msg=name)


def test_pixels_go_as_raw_bytes_a_quarter_of_rest_json(pixel_server) -> None:
    over_grpc = predict_json(*grpc_args(pixel_server), "--no-raw")
    over_rest = predict_json("--server_url", pixel_server.predict_url, "--no-raw")
    width, height = over_grpc["request"]["sent_size"]
    assert width * height * 3 < over_grpc["request"]["bytes"] < width * height * 3 + 200
    assert over_rest["request"]["bytes"] > 3 * over_grpc["request"]["bytes"]


def test_the_seed_command_line_with_a_grpc_url(pixel_server, tmp_path) -> None:
    output_json = tmp_path / "out.json"
    url = f"grpc://localhost:{pixel_server.grpc_port}/v1/models/{pixel_server.model_name}:predict"
    command = [sys.executable, "client.py", *map(str, seed_args(url, output_json))]
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    labels = [d["label"] for d in json.loads(output_json.read_text())["detections"][:2]]
    assert labels == ["dog", "dog"]
    assert (tmp_path / "out_annotated.jpg").stat().st_size > 0


@pytest.mark.parametrize("command", ["status", "metadata"])
def test_status_and_metadata_say_what_rest_says(encoded_server, command) -> None:
    named = ["--host", HOST, "--port", encoded_server.grpc_port]
    over_grpc = run(
        command, "--protocol", "grpc", *named, "--model_name", encoded_server.model_name
    )
    over_rest = run(command, "--server_url", encoded_server.predict_url)
    assert over_grpc.exit_code == over_rest.exit_code == 0, over_grpc.output
    assert over_grpc.stdout == over_rest.stdout
    assert (
        "predict sends: the image file's bytes" in over_grpc.stdout
        or "AVAILABLE" in over_grpc.stdout
    )


def test_metadata_json_is_rest_s_answer(pixel_server) -> None:
    over_grpc = run("metadata", "--json", *grpc_args(pixel_server))
    over_rest = run("metadata", "--json", "--server_url", pixel_server.predict_url)
    assert over_grpc.exit_code == over_rest.exit_code == 0, over_grpc.output
    assert json.loads(over_grpc.stdout) == json.loads(over_rest.stdout)


def test_many_images_and_bench_over_grpc(pixel_server, tmp_path) -> None:
    out = tmp_path / "out"
    result = run("predict", *grpc_args(pixel_server), IMAGE1, IMAGE2, "--output_dir", out)
    assert result.exit_code == 0, result.output
    summary = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert [record["status"] for record in summary] == ["ok", "ok"]

    result = run("bench", *grpc_args(pixel_server), "--requests", 6, "--concurrency", 2,
                 "--json", IMAGE1)  # fmt: skip
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["requests"] == 6 and figures["errors"] == {}


def assert_one_line(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_unknown_model_and_version_are_tf_serving_s_errors(pixel_server) -> None:
    target = ["--server_url", pixel_server.grpc_url]
    assert_one_line(run("predict", *target, "--model_name", "nope", IMAGE1), "NOT_FOUND")
    result = run("status", *target, "--model_name", pixel_server.model_name,
                 "--model_version", 9)  # fmt: skip
    assert_one_line(result, "NOT_FOUND", "Could not find version 9")


def test_server_down_deadline_and_huge_answer_are_one_line(pixel_server) -> None:
    down = run("status", "--server_url", f"grpc://{HOST}:{free_port()}", "--model_name", "m",
               "--retries", 1)  # fmt: skip
    assert_one_line(down, "cannot reach TF Serving at grpc://", "8500 by default")
    late = run("predict", *grpc_args(pixel_server), "--timeout", 0.005, IMAGE2)
    assert_one_line(late, "raise --timeout")
    huge = run("predict", *grpc_args(pixel_server), "--max_response_mb", 0.001, IMAGE1)
    assert_one_line(huge, "raise --max_response_mb")


def test_a_grpc_url_with_protocol_rest_is_a_usage_error(pixel_server) -> None:
    result = run("status", *grpc_args(pixel_server), "--protocol", "rest")
    assert result.exit_code == 2
    assert "grpc:// URL" in result.stderr


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, bytes]:
    """A self-signed certificate for localhost and 127.0.0.1 (openssl, as an operator makes one)."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", folder / "key.pem", "-out", folder / "cert.pem"],
        check=True, capture_output=True,
    )  # fmt: skip
    return {"key": (folder / "key.pem").read_bytes(), "cert": folder / "cert.pem"}


@pytest.fixture(scope="module")
def tls_server(tls_files) -> Iterator[GrpcServer]:
    """The gRPC API over TLS, in this process (the local server's flags have no TLS: TF Serving's
    is an --ssl_config_file, left out; TLS usually ends at a load balancer)."""
    credentials = grpc.ssl_server_credentials([(tls_files["key"], tls_files["cert"].read_bytes())])
    with ThreadPoolExecutor(2) as executor:
        api = RestApi(ServedModel.load("ssd", PIXEL_MODEL), executor)
        with GrpcServer(api, port=0, host=HOST, credentials=credentials) as server:
            yield server


def test_tls_checks_the_server_against_the_ca_file(tls_server, tls_files) -> None:
    url = f"grpcs://localhost:{tls_server.port}"
    trusted = run("status", "--server_url", url, "--model_name", "ssd",
                  "--ca_file", tls_files["cert"])  # fmt: skip
    assert trusted.exit_code == 0, trusted.output
    assert trusted.stdout == "ssd version 1: AVAILABLE\n"
    # Without the CA, the system's roots don't know this certificate: refused, one line.
    untrusted = run("status", "--server_url", url, "--model_name", "ssd", "--retries", 0)
    assert_one_line(untrusted, f"grpcs://localhost:{tls_server.port}")
