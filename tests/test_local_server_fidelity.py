"""What TF Serving's REST layer does beyond :predict's happy path, on the real server process:
scalar outputs, float conversion, gzip bodies, CORS, deep nesting, trailing bytes, query strings,
status wording. Each test names the TF Serving source and test case it comes from
(tensorflow_serving/util/json_tensor_test.cc, util/net_http/server/internal/
evhttp_request_test.cc, model_servers/http_server.cc, get_model_status_impl.cc).

The model is sidecar_testing.half_plus_two (session fixture): its `echo` signatures answer the
input tensor as the server built it, so a conversion is seen as it is, not through arithmetic.
"""

from __future__ import annotations

import gzip
import json
import socket
import sys
import time
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
import requests

from serving import fast_tensor, json_tensor
from sidecar_testing.servers import HOST, LocalServer

NAME = "half_plus_two"
LIMIT = 4 << 20  # --rest_api_max_body_bytes of the second server
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}


@pytest.fixture(scope="module")
def cors_server(half_plus_two_model) -> Iterator[LocalServer]:
    """The same model with --rest_api_enable_cors_support and a small body limit."""
    args = ["--rest_api_enable_cors_support=true", f"--rest_api_max_body_bytes={LIMIT}"]
    with LocalServer(half_plus_two_model, model_name=NAME, extra_args=args) as server:
        yield server


def predict(server: LocalServer, body: bytes | str, **headers: str) -> requests.Response:
    data = body.encode() if isinstance(body, str) else body
    url = f"{server.base_url}/v1/models/{NAME}:predict"
    return requests.post(url, data=data, headers=headers, timeout=60)


def answer(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def error_of(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]


# ---- scalar outputs ---------------------------------------------------------------------------


# json_tensor.cc MakeColumnarFormatJsonFromTensors / AddTensorValues: a 0-d output is its bare
# value, beside the others (a float, a string).
def test_json_tensor__columnar_output_with_scalars(half_plus_two_server) -> None:
    body = '{"signature_name": "scalar", "inputs": [1.0, 2.0, 3.0]}'
    assert answer(predict(half_plus_two_server, body)) == {
        "outputs": {"count": 3.0, "name": "half plus two", "y": [2.5, 3.0, 3.5]}
    }
    body = '{"signature_name": "scalar_only", "inputs": [1.0, 2.0]}'
    assert answer(predict(half_plus_two_server, body)) == {"outputs": 5.5}


# json_tensor_test.cc, JsontensorTest.FromJsonSingleTensorErrors: a scalar has no batch
# dimension, so the row format can't hold it.
def test_json_tensor__from_json_single_tensor_errors_scalar_in_row_format(
    half_plus_two_server,
) -> None:
    body = '{"signature_name": "scalar_only", "instances": [1.0, 2.0]}'
    message = error_of(predict(half_plus_two_server, body), 400)
    assert message == "Tensor name: total has no shape information "


# ---- floats -----------------------------------------------------------------------------------


def echoed(server: LocalServer, values: str, signature: str = "echo") -> list:
    body = f'{{"signature_name": "{signature}", "instances": {values}}}'
    return answer(predict(server, body))["predictions"]


# json_tensor_test.cc, JsontensorTest.FloatTensorWithPrecisionLoss (b/181409782): an integer
# a float can't hold is accepted and rounded, like the same number with ".0".
# The answer is written as WriteDecimal writes that float: "%g" doesn't round-trip, so "%.9g".
def test_json_tensor__float_tensor_with_precision_loss(half_plus_two_server) -> None:
    rounded = np.float32(1435774380)
    assert rounded == 1435774336.0  # float32's nearest: what TF Serving's test shows
    for literal in ("1435774380", "1435774380.0"):
        body = f'{{"signature_name": "echo", "instances": [{literal}]}}'
        response = predict(half_plus_two_server, body)
        assert "1.43577434e+09" in response.text
        assert np.float32(answer(response)["predictions"][0]) == rounded


# json_tensor_test.cc, JsontensorTest.FloatTensorThatExceedsMaxReturnsInf and
# ...ExceedsMinReturnsZero: the doubles printed as absl::Substitute prints them ("%g").
def test_json_tensor__float_tensor_that_exceeds_max_returns_inf_and_min_returns_zero(
    half_plus_two_server,
) -> None:
    big, tiny = f"{sys.float_info.max:g}", f"{sys.float_info.min:g}"
    assert big == "1.79769e+308"
    response = predict(half_plus_two_server, f'{{"signature_name": "echo", "instances": [{big}]}}')
    assert '"predictions": [\n        Infinity\n    ]' in response.text
    assert echoed(half_plus_two_server, f"[-{big}]") == [-np.inf]
    zeros = echoed(half_plus_two_server, f"[{tiny}, -{tiny}]")
    assert zeros == [0.0, 0.0] and np.signbit(zeros).tolist() == [False, True]


# json_tensor_test.cc, JsontensorTest.MixedInputForFloatTensor and MixedInputForDoubleTensor.
def test_json_tensor__mixed_input_for_float_and_double_tensor(half_plus_two_server) -> None:
    floats = echoed(half_plus_two_server, "[1, 2.0, 3, 4, 5.003, 0.007, 0.0]")
    expected = np.array([1, 2, 3, 4, 5.003, 0.007, 0], np.float32)
    np.testing.assert_array_equal(np.array(floats, np.float32), expected)
    doubles = echoed(half_plus_two_server, "[1.0, 2, 3, 4, 0.662, 0, 0.0]", "echo_double")
    assert doubles == [1.0, 2.0, 3.0, 4.0, 0.662, 0.0, 0.0]
    assert echoed(half_plus_two_server, "[9007199254740993]", "echo_double") == [2.0**53]


def test_the_fast_path_rounds_integers_for_a_float_as_the_general_path() -> None:
    """serving/fast_tensor.py reads big numeric bodies; it must build json_tensor's tensor."""
    for text in ("[1435774380, 16777217, -33554435]", "[[2147483647], [-2147483648]]"):
        fast = fast_tensor.parse_numeric_array(text.encode(), "DT_FLOAT")
        general = json_tensor.value_to_tensor(json.loads(text), "DT_FLOAT")
        assert fast is not None
        np.testing.assert_array_equal(fast, general)
        assert fast.dtype == general.dtype == np.float32


# json_tensor_test.cc, JsontensorTest.SingleUnnamedTensorErrors: the message as TF Serving
# words it now ("Expecting", where old versions said "Excepting").
def test_json_tensor__single_unnamed_tensor_errors_instances_not_a_list(
    half_plus_two_server,
) -> None:
    message = error_of(predict(half_plus_two_server, '{"instances": 5}'), 400)
    assert message.endswith(" Expecting 'instances' to be an list/array")


# ---- gzip bodies ------------------------------------------------------------------------------


# evhttp_request_test.cc, EvHTTPRequestTest.ValidGzipPost: a Content-Encoding naming gzip
# (any header containing "gzip", as TF Serving matches it) is inflated before the API reads it.
@pytest.mark.parametrize("encoding", ["gzip", "x-gzip"])
def test_evhttp_request__valid_gzip_post(half_plus_two_server, encoding: str) -> None:
    body = gzip.compress(b'{"instances": [2.0, 4.0]}')
    response = predict(half_plus_two_server, body, **{"Content-Encoding": encoding})
    assert answer(response) == {"predictions": [3.0, 4.0]}


# evhttp_request_test.cc, EvHTTPRequestTest.InvalidGzipPost: data that doesn't inflate reaches
# the API as an empty body; other codings are not inflated, so the API reads their bytes.
def test_evhttp_request__invalid_gzip_post(half_plus_two_server) -> None:
    for body in (b"abcde", gzip.compress(b'{"instances": [2.0]}')[:-6]):
        response = predict(half_plus_two_server, body, **{"Content-Encoding": "gzip"})
        assert error_of(response, 400) == "JSON Parse error: The document is empty"
    deflated = zlib.compress(b'{"instances": [2.0]}')
    response = predict(half_plus_two_server, deflated, **{"Content-Encoding": "deflate"})
    assert error_of(response, 400).startswith("JSON Parse error: ")
    response = predict(half_plus_two_server, b'{"instances": [2.0]}', **{"Content-Encoding": "br"})
    assert answer(response) == {"predictions": [3.0]}


# evhttp_request_test.cc, EvHTTPRequestTest.GzipExceedingLimit. TF Serving gives its handler an
# empty body past its inflate limit (100 MB); here the limit is --rest_api_max_body_bytes and the
# answer its 413, counted on the inflated bytes: a 128 MB bomb in a 130 KB body is refused
# without the server holding more than the limit.
def test_evhttp_request__gzip_exceeding_limit_is_413_without_inflating_it(cors_server) -> None:
    bomb = gzip.compress(bytes(128 << 20), compresslevel=9)
    assert len(bomb) < LIMIT // 16
    before = cors_server.rss_mb()
    start = time.perf_counter()
    response = predict(cors_server, bomb, **{"Content-Encoding": "gzip"})
    assert time.perf_counter() - start < 10
    assert "larger than 4194304 bytes" in error_of(response, 413)
    assert cors_server.rss_mb() - before < 40
    # Exactly the limit once inflated: served.
    body = b'{"instances": [1.0]}'
    body += b" " * (LIMIT - len(body))
    response = predict(cors_server, gzip.compress(body), **{"Content-Encoding": "gzip"})
    assert answer(response) == {"predictions": [2.5]}


# ---- CORS -------------------------------------------------------------------------------------


# http_server.cc, RestApiRequestDispatcher::ProcessRequest: with the flag every API answer,
# errors too, carries AddCORSHeaders' three headers.
def test_http_server__cors_headers_with_the_flag(cors_server) -> None:
    ok = predict(cors_server, '{"instances": [1.0]}')
    bad = predict(cors_server, "{")
    status = requests.get(f"{cors_server.base_url}/v1/models/{NAME}", timeout=10)
    for response in (ok, bad, status):
        assert {k: response.headers.get(k) for k in CORS} == CORS, response.headers


def test_http_server__no_cors_headers_without_the_flag(half_plus_two_server) -> None:
    response = predict(half_plus_two_server, '{"instances": [1.0]}')
    assert not [k for k in response.headers if k.lower().startswith("access-control")]


# http_server.cc: OPTIONS is a preflight, answered whatever the flag says: 200 for an Origin
# naming http(s)://, else FAILED_PRECONDITION (400); neither has a body.
@pytest.mark.parametrize("server_name", ["half_plus_two_server", "cors_server"])
def test_http_server__cors_preflight(request, server_name: str) -> None:
    server = request.getfixturevalue(server_name)
    url = f"{server.base_url}/v1/models/{NAME}:predict"
    cases = [({"Origin": "https://example.com"}, 200), ({"Origin": "example.com"}, 400), ({}, 400)]
    for headers, status in cases:
        response = requests.options(url, headers=headers, timeout=10)
        assert response.status_code == status
        assert response.content == b""
        has_cors = {k: response.headers.get(k) for k in CORS} == CORS
        assert has_cors == (server_name == "cors_server")
    assert "Origin header is missing in CORS preflight" in server.stderr()


# ---- JSON documents and URLs ------------------------------------------------------------------


# json_tensor_test.cc, JsontensorTest.DeeplyNestedWellFormed: 500,000 levels under a key the
# request doesn't use are parsed and ignored.
def test_json_tensor__deeply_nested_well_formed(half_plus_two_server) -> None:
    body = b'{"instances": [1.0], "nested": ' + b"[" * 500_000 + b"]" * 500_000 + b"}"
    assert answer(predict(half_plus_two_server, body)) == {"predictions": [2.5]}


# json_tensor_test.cc, JsontensorTest.DeeplyNestedMalformed: under "signature_name" the same
# nesting is a signature name that isn't a string; under "instances" a tensor too deep.
def test_json_tensor__deeply_nested_malformed(half_plus_two_server) -> None:
    deep = b"[" * 500_000 + b"]" * 500_000
    message = error_of(predict(half_plus_two_server, b'{"signature_name": ' + deep + b"}"), 400)
    assert "'signature_name' key must be a string value." in message
    message = error_of(predict(half_plus_two_server, b'{"instances": ' + deep + b"}"), 400)
    assert "nested deeper than 64 levels" in message


# json_tensor.cc ParseJson, kParseStopWhenDoneFlag: reading stops at the end of the root object.
def test_json_tensor__parse_json_stops_when_done(half_plus_two_server) -> None:
    for tail in (b" trailing", b"}}", b'{"instances": [9]}'):
        response = predict(half_plus_two_server, b'{"instances": [1.0]}' + tail)
        assert answer(response) == {"predictions": [2.5]}


# evhttp_request_test.cc, EvHTTPRequestTest.RequestUri: the path TF Serving routes includes the
# query (and a fragment), so a query becomes part of the model name or breaks the route.
@pytest.mark.parametrize(
    ("method", "suffix", "status", "message"),
    [
        ("GET", "?x=1", 404, f"Could not find any versions of model {NAME}?x=1"),
        ("GET", "/metadata?x=1", 400, f"Malformed request: GET /v1/models/{NAME}/metadata?x=1"),
        ("POST", ":predict?x=1", 400, f"Malformed request: POST /v1/models/{NAME}:predict?x=1"),
    ],
)
def test_evhttp_request__request_uri_query_is_part_of_the_path(
    half_plus_two_server, method: str, suffix: str, status: int, message: str
) -> None:
    url = f"{half_plus_two_server.base_url}/v1/models/{NAME}{suffix}"
    response = requests.request(method, url, json={"instances": [1.0]}, timeout=10)
    assert error_of(response, status) == message


def test_evhttp_request__request_uri_fragment_is_part_of_the_path(half_plus_two_server) -> None:
    """A fragment (which clients don't send, but may) goes the same way; sent by hand."""
    with socket.create_connection((HOST, half_plus_two_server.port), timeout=10) as conn:
        conn.sendall(f"GET /v1/models/{NAME}#top HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = conn.recv(65536)
    assert head.startswith(b"HTTP/1.1 404"), head
    assert f"any versions of model {NAME}#top".encode() in head


# get_model_status_impl.cc GetModelStatusWithModelSpec: with a version, the lookup is by
# (name, version), so an unknown model's message names the version too.
@pytest.mark.parametrize("model", [NAME, "modelname"])
def test_get_model_status_impl__missing_version(half_plus_two_server, model: str) -> None:
    url = f"{half_plus_two_server.base_url}/v1/models/{model}/versions/99"
    message = error_of(requests.get(url, timeout=10), 404)
    assert message == f"Could not find version 99 of model {model}"
