"""The local TF Serving stand-in over real HTTP: contract shapes, predictions and every error.

Both servers are real `python -m serving.local_server` processes on loopback ports (session
fixtures in conftest.py), serving the shared SSD MobileNet models.
"""

from __future__ import annotations

import base64
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from sidecar_testing.data import COCO_DOG, ENCODED_MODEL, IMAGE1, IMAGE2, PIXEL_MODEL

OUTPUTS = {"detection_boxes", "detection_classes", "detection_scores", "num_detections"}


@pytest.fixture(scope="module")
def image1_b64() -> str:
    return base64.b64encode(IMAGE1.read_bytes()).decode()


@pytest.fixture(scope="module")
def image1_pixels() -> list:
    return np.asarray(Image.open(IMAGE1).convert("RGB")).tolist()


def assert_two_dogs(detections: dict, expected: dict) -> None:
    """image1.jpg: the two beagles come first, and every output is exactly what the same model
    says in-process on this machine (`expected`, from conftest's model_reference)."""
    assert set(detections) == OUTPUTS
    assert len(detections["detection_boxes"]) == 100
    assert len(detections["detection_boxes"][0]) == 4
    assert detections["detection_classes"][:2] == [COCO_DOG, COCO_DOG]
    assert detections["detection_boxes"][0] == pytest.approx([0.017, 0.001, 0.868, 0.335], abs=0.02)
    assert detections["num_detections"] == 100
    for name in OUTPUTS:  # floats written in their shortest form read back to the same float32
        np.testing.assert_array_equal(np.float32(detections[name]), expected[name], err_msg=name)


@pytest.fixture(scope="module")
def encoded_expected(model_reference) -> dict:
    return model_reference.outputs(ENCODED_MODEL, IMAGE1)


@pytest.fixture(scope="module")
def pixel_expected(model_reference) -> dict:
    return model_reference.outputs(PIXEL_MODEL, IMAGE1)


def assert_error(response: requests.Response, status: int, fragment: str) -> None:
    """TF Serving's error form: the status code and {"error": message}."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert fragment in body["error"]


# ---- status and metadata ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/versions/1", "/labels/stable"])
def test_status_is_tf_servings_document(pixel_server, suffix: str) -> None:
    response = requests.get(pixel_server.model_url + suffix)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    ok = {"error_code": "OK", "error_message": ""}
    assert response.json() == {
        "model_version_status": [{"version": "1", "state": "AVAILABLE", "status": ok}]
    }


def test_metadata_has_the_doubled_signature_def_and_string_sizes(pixel_server) -> None:
    response = requests.get(pixel_server.model_url + "/metadata")
    assert response.status_code == 200
    body = response.json()
    assert body["model_spec"] == {
        "name": "ssd_mobilenet_v1_coco",
        "signature_name": "",
        "version": "1",
    }
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"] == {
        "inputs": {
            "dtype": "DT_UINT8",
            "tensor_shape": {
                "dim": [{"size": size, "name": ""} for size in ("-1", "-1", "-1", "3")],
                "unknown_rank": False,
            },
            "name": "serving_default_inputs:0",
        }
    }
    assert set(signature["outputs"]) == OUTPUTS
    scores = signature["outputs"]["detection_scores"]
    assert scores["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in scores["tensor_shape"]["dim"]] == ["-1", "100"]


def test_encoded_metadata_says_dt_string_batch(encoded_server) -> None:
    response = requests.get(encoded_server.model_url + "/versions/1/metadata")
    signature = response.json()["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["inputs"]["dtype"] == "DT_STRING"
    assert signature["inputs"]["inputs"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]


# ---- predict ---------------------------------------------------------------------------------


def test_predict_row_format_b64(encoded_server, image1_b64, encoded_expected) -> None:
    response = requests.post(encoded_server.predict_url, json={"instances": [{"b64": image1_b64}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"predictions"}
    assert len(body["predictions"]) == 1
    assert_two_dogs(body["predictions"][0], encoded_expected)


def test_predict_columnar_b64_with_version_and_signature(
    encoded_server, image1_b64, encoded_expected
) -> None:
    response = requests.post(
        encoded_server.model_url + "/versions/1:predict",
        json={"signature_name": "serving_default", "inputs": [{"b64": image1_b64}]},
    )
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    # Columnar keeps the batch dimension on every output.
    assert_two_dogs({name: value[0] for name, value in outputs.items()}, encoded_expected)


def test_predict_row_format_pixels(pixel_server, image1_pixels, pixel_expected) -> None:
    response = requests.post(pixel_server.predict_url, json={"instances": [image1_pixels]})
    assert response.status_code == 200, response.text
    assert_two_dogs(response.json()["predictions"][0], pixel_expected)


def test_predict_columnar_pixels_compact_json(pixel_server, image1_pixels, pixel_expected) -> None:
    body = json.dumps({"inputs": [image1_pixels]}, separators=(",", ":"))
    response = requests.post(pixel_server.predict_url, data=body)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert_two_dogs({name: value[0] for name, value in outputs.items()}, pixel_expected)


def test_pixel_and_encoded_models_agree_on_image2(pixel_server, encoded_server) -> None:
    pixels = np.asarray(Image.open(IMAGE2).convert("RGB")).tolist()
    by_pixels = requests.post(pixel_server.predict_url, json={"instances": [pixels]})
    b64 = base64.b64encode(IMAGE2.read_bytes()).decode()
    by_bytes = requests.post(encoded_server.predict_url, json={"instances": [{"b64": b64}]})
    top_pixels = by_pixels.json()["predictions"][0]["detection_scores"][:3]
    top_bytes = by_bytes.json()["predictions"][0]["detection_scores"][:3]
    assert top_pixels == pytest.approx(top_bytes, abs=0.05)  # two JPEG decoders, any CPU


def test_floats_are_written_like_tf_serving(encoded_server, image1_b64) -> None:
    """Whole numbers keep a ".0" and values print in the shortest round-tripping form."""
    text = requests.post(encoded_server.predict_url, json={"instances": [{"b64": image1_b64}]}).text
    assert '"num_detections": 100.0' in text
    assert "18.0, 18.0" in text


# ---- errors ----------------------------------------------------------------------------------

ERRORS = [
    # (method, path suffix after /v1/models/NAME, body, status, message fragment)
    (
        "POST",
        ":predict",
        {"instances": [[[[1, 2, 3]]]], "inputs": [[[[1, 2, 3]]]]},
        400,
        "expecting only one of 'inputs' or 'instances' keys to exist",
    ),
    (
        "POST",
        ":predict",
        {"signature_name": "serving_default"},
        400,
        "Missing 'inputs' or 'instances' key",
    ),
    ("POST", ":predict", {"instances": []}, 400, "No values in 'instances' array"),
    ("POST", ":predict", {"instances": [[[[1.5, 2, 3]]]]}, 400, "is not of expected type: uint8"),
    (
        "POST",
        ":predict",
        {"instances": [[[{"b64": "AAAA"}]]]},
        400,
        "Type: Object is not of expected type: uint8",
    ),
    (
        "POST",
        ":predict",
        {"instances": [[[1, 2, 3], [4, 5]]]},
        400,
        "Encountered list at unexpected size: 2 at level: 1 expected size: 3",
    ),
    (
        "POST",
        ":predict",
        {"instances": [[[1, 2, 3]], [[1, 2, 3], [4, 5, 6]]]},
        400,
        "Expecting tensor size: 3 but got: 6",
    ),
    ("POST", ":predict", {"instances": [[1, 2, 3]]}, 400, "input must be 4-dimensional"),
    ("POST", ":predict", b'{"instances": [[1, 2, 3]', 400, "JSON Parse error"),
    ("POST", ":predict", b"", 400, "JSON Parse error: The document is empty"),
    ("POST", ":predict", b"[1, 2]", 400, "Is not object"),
    (
        "POST",
        ":predict",
        {"signature_name": 7, "instances": [1]},
        400,
        "'signature_name' key must be a string value.",
    ),
    (
        "POST",
        ":predict",
        {"signature_name": "nope", "instances": [1]},
        400,
        'Serving signature name: "nope" not found in signature def',
    ),
    ("POST", "/versions/1/labels/stable:predict", {"instances": [1]}, 400, "Malformed request"),
    (
        "POST",
        "/labels/stable:predict",
        {"instances": [1]},
        400,
        "Unrecognized servable version label: stable",
    ),
    ("GET", "/labels/stable/metadata", None, 400, "Unrecognized servable version label: stable"),
    # TF Serving parses the body before it resolves a label.
    ("POST", "/labels/stable:predict", b"{", 400, "JSON Parse error"),
    ("POST", ":explode", {"instances": [1]}, 400, "Malformed request: POST /v1/models/"),
    ("GET", ":predict", None, 400, "Malformed request: GET /v1/models/"),
    ("PUT", "", {"instances": [1]}, 400, "Malformed request: PUT /v1/models/"),
    ("DELETE", "/versions/1", None, 400, "Malformed request: DELETE"),
    (
        "POST",
        "/versions/7:predict",
        {"instances": [1]},
        404,
        "Servable not found for request: Specific(ssd_mobilenet_v1_coco, 7)",
    ),
    ("GET", "/versions/7", None, 404, "Could not find version 7 of model ssd_mobilenet_v1_coco"),
    ("GET", "/versions/7/metadata", None, 404, "Servable not found for request: Specific("),
]


@pytest.mark.parametrize(("method", "suffix", "body", "status", "fragment"), ERRORS)
def test_errors_have_tf_servings_status_and_body(
    pixel_server, method, suffix, body, status, fragment
) -> None:
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    response = requests.request(method, pixel_server.model_url + suffix, **kwargs)
    assert_error(response, status, fragment)


@pytest.mark.parametrize(
    ("method", "url_path", "status", "fragment"),
    [
        ("POST", "/v1/models/nope:predict", 404, "Servable not found for request: Latest(nope)"),
        ("GET", "/v1/models/nope", 404, "Could not find any versions of model nope"),
        ("GET", "/v1/models/nope/metadata", 404, "Servable not found for request: Latest(nope)"),
        ("GET", "/v1/models", 400, "Missing model name in request."),
        ("GET", "/v2/models/ssd_mobilenet_v1_coco", 404, "Not found: /v2/models/"),
        ("GET", "/", 404, "the REST API is under /v1/models/"),
        (
            "GET",
            "/v1/models/ssd_mobilenet_v1_coco/versions/99999999999999999999",
            400,
            "Failed to convert version: 99999999999999999999 to numeric.",
        ),
    ],
)
def test_unknown_models_and_bad_urls(pixel_server, method, url_path, status, fragment) -> None:
    body = {"instances": [[[[1, 2, 3]]]]} if method == "POST" else None
    response = requests.request(method, pixel_server.base_url + url_path, json=body)
    assert_error(response, status, fragment)


def test_malformed_json_is_checked_before_the_model_is_looked_up(pixel_server) -> None:
    """TF Serving parses the body first: bad JSON to an unknown model is a 400, not a 404."""
    response = requests.post(pixel_server.base_url + "/v1/models/nope:predict", data=b"{")
    assert_error(response, 400, "JSON Parse error")


def test_b64_needs_standard_base64(encoded_server) -> None:
    response = requests.post(encoded_server.predict_url, json={"instances": [{"b64": "%%%"}]})
    assert_error(response, 400, "Unable to base64 decode")


def test_an_undecodable_image_is_the_graphs_invalid_argument(encoded_server) -> None:
    junk = base64.b64encode(b"not a picture").decode()
    response = requests.post(encoded_server.predict_url, json={"instances": [{"b64": junk}]})
    assert_error(response, 400, "Unknown image file format")


# ---- robustness ------------------------------------------------------------------------------


def test_survives_bad_requests_then_serves(encoded_server, image1_b64, encoded_expected) -> None:
    with requests.Session() as session:  # one keep-alive connection through all of them
        for body in (b"{", b"", b"[]", b'{"instances": 5}', b'{"inputs": {"b64": 1}}'):
            response = session.post(encoded_server.predict_url, data=body)
            assert response.status_code == 400
            assert "error" in response.json()
        good = {"instances": [{"b64": image1_b64}]}
        response = session.post(encoded_server.predict_url, json=good)
        assert response.status_code == 200
        assert_two_dogs(response.json()["predictions"][0], encoded_expected)


def test_eight_concurrent_clients(encoded_server, image1_b64) -> None:
    def client(_: int) -> list:
        with requests.Session() as session:
            results = []
            for _ in range(3):
                response = session.post(
                    encoded_server.predict_url, json={"instances": [{"b64": image1_b64}]}
                )
                assert response.status_code == 200, response.text
                results.append(response.json()["predictions"][0]["detection_scores"][:2])
            return results

    with ThreadPoolExecutor(8) as pool:
        all_results = [r for rs in pool.map(client, range(8)) for r in rs]
    assert len(all_results) == 24
    assert all(r == all_results[0] for r in all_results)  # same model, same answer


def test_each_request_is_logged_with_status_and_duration(encoded_server) -> None:
    requests.get(encoded_server.model_url + "/versions/424242")
    assert "GET /v1/models/ssd_mobilenet_v1_coco_encoded/versions/424242 404" in (
        encoded_server.stderr()
    )


def test_head_is_a_malformed_request_answered_without_a_body(pixel_server) -> None:
    response = requests.head(pixel_server.model_url)
    assert response.status_code == 400  # TF Serving serves GET and POST only
    assert response.content == b""
    assert int(response.headers["Content-Length"]) > 0


def test_a_garbled_body_length_is_a_400(pixel_server) -> None:
    with socket.create_connection(("127.0.0.1", pixel_server.port)) as conn:
        conn.sendall(
            b"POST /v1/models/ssd_mobilenet_v1_coco:predict HTTP/1.1\r\n"
            b"Host: x\r\nContent-Length: lots\r\n\r\n{}"
        )
        response = conn.makefile("rb").read()
    assert response.startswith(b"HTTP/1.1 400")
    assert b'"error"' in response
