"""Classify and Regress over REST and gRPC, as TF Serving serves them, on the real server process.

The model is sidecar_testing.half_plus_two (y = x/2 + 2, built with TensorFlow for the session),
the counterpart of TF Serving's testdata saved_model_half_plus_two, so TF Serving's own test
cases apply as they are. Each test names the TF Serving test it comes from:
tensorflow_serving/model_servers/http_rest_api_handler_test.cc (HttpRestApiHandlerTest),
tensorflow_serving/util/json_tensor_test.cc (ClassifyRegressRequestTest, ...Result tests) and
tensorflow_serving/model_servers/tensorflow_model_server_test.py.
"""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    classification_pb2,
    input_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving import classify

NAME = "half_plus_two"


def post(server, verb: str, body, suffix: str = "") -> requests.Response:
    url = f"{server.base_url}/v1/models/{NAME}{suffix}:{verb}"
    if isinstance(body, bytes):
        return requests.post(url, data=body, timeout=30)
    return requests.post(url, json=body, timeout=30)


def error_of(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    return body["error"]


def half_plus_two(x: float) -> float:
    """What the model computes, in float32 as it does."""
    return float(np.float32(x) * np.float32(0.5) + np.float32(2.0))


# ---- REST: answers ----------------------------------------------------------------------------


# http_rest_api_handler_test.cc, HttpRestApiHandlerTest.Regress (the latest and a specific
# version; the label part needs a model config file, which this server has no flag for).
@pytest.mark.parametrize("suffix", ["", "/versions/1"])
def test_http_rest_api_handler__regress(half_plus_two_server, suffix: str) -> None:
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}
    response = post(half_plus_two_server, "regress", body, suffix)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"results": [42.0]}


# http_rest_api_handler_test.cc, HttpRestApiHandlerTest.Classify: no "classes" output, so the
# label is empty.
@pytest.mark.parametrize(("x", "score"), [(20.0, 12.0), (10.0, 7.0)])
def test_http_rest_api_handler__classify(half_plus_two_server, x: float, score: float) -> None:
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": x}]}
    response = post(half_plus_two_server, "classify", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [[["", score]]]}


# tensorflow_model_server_test.py, testClassifyREST and testRegressREST.
def test_tensorflow_model_server__classify_and_regress_rest(half_plus_two_server) -> None:
    for verb in ("classify", "regress"):
        body = {"signature_name": f"{verb}_x_to_y", "examples": [{"x": 2.0}]}
        response = post(half_plus_two_server, verb, body)
        assert response.status_code == 200, response.text
        expected = [["", 3.0]] if verb == "classify" else 3.0
        assert response.json() == {"results": [expected]}


# json_tensor_test.cc, ClassifyRegressRequestTest.RequestWithContextAndSignature, through the
# model: the context's feature reaches every example, an example's own wins, {"b64"} is bytes.
def test_json_tensor__classify_request_with_context_and_signature(half_plus_two_server) -> None:
    body = {
        "signature_name": "classify_x_to_tag",
        "context": {"tag": "pizza", "x": 4.0},
        "examples": [{}, {"x": 20.0, "tag": {"b64": "aGVsbG8="}}, {"x": [6.0]}],
    }
    response = post(half_plus_two_server, "classify", body)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "results": [
            [["pizza", 4.0], ["other", -4.0]],
            [["hello", 12.0], ["other", -12.0]],
            [["pizza", 5.0], ["other", -5.0]],
        ]
    }


# json_tensor_test.cc, ClassifyRegressnResultTest.JsonFromRegressionResultWithNonFinite, with
# the non-finite values coming out of the model (and going in as JSON's NaN and Infinity).
def test_json_tensor__json_from_regression_result_with_non_finite(half_plus_two_server) -> None:
    body = b'{"signature_name": "regress_x_to_y", "examples": [{"x": 0.4}, {"x": Infinity}, '
    body += b'{"x": -1.0}, {"x": -Infinity}, {"x": NaN}]}'
    response = post(half_plus_two_server, "regress", body)
    assert response.status_code == 200, response.text
    assert '"results": [2.2, Infinity, 1.5, -Infinity, NaN]' in response.text


# json_tensor_test.cc, ClassifyRegressRequestTest.RequestNoContext and the int/bool mix of
# RequestWithContextAndSignature: integers and booleans are an int64 feature.
def test_json_tensor__classify_regress_request_int64_and_bool_features(
    half_plus_two_server,
) -> None:
    body = {"signature_name": "regress_n_to_3n", "examples": [{"n": 20}, {"n": True}, {"n": [-7]}]}
    response = post(half_plus_two_server, "regress", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [60.0, 3.0, -21.0]}


# json_tensor_test.cc, ClassifyRegressRequestTest.RequestNoContext and
# RequestWithContextAndSignature: the JSON as the tf.Examples TF Serving builds (read back with
# TensorFlow's own tf.train.Example), without a server: the serialized bytes are the model's
# input, which no signature returns.
def test_json_tensor__classify_regress_request_examples_are_tf_servings() -> None:
    body = b"""{
      "signature_name": "custom_signture",
      "context": {"query": "pizza", "location": ["sfo"]},
      "examples": [
        {"names": ["foo", "bar"], "ratings": [8.0, 9.0, NaN, Infinity], "age": 20},
        {"names": ["baz", {"b64": "aGVsbG8="}], "ratings": 6.0, "intboolmix": [1, true, false]},
        {"names": "bar", "ratings": -Infinity}
      ]
    }"""
    signature_name, examples = classify.examples_from_json(body)
    assert signature_name == "custom_signture"
    parsed = [tf.train.Example.FromString(example) for example in examples]
    context = {"query": [b"pizza"], "location": [b"sfo"]}
    first = parsed[0].features.feature
    assert {k: list(first[k].bytes_list.value) for k in context} == context
    assert list(first["names"].bytes_list.value) == [b"foo", b"bar"]
    ratings = list(first["ratings"].float_list.value)
    assert ratings[:2] == [8.0, 9.0] and math.isnan(ratings[2]) and ratings[3] == math.inf
    assert list(first["age"].int64_list.value) == [20]
    second = parsed[1].features.feature
    assert list(second["names"].bytes_list.value) == [b"baz", b"hello"]
    assert list(second["intboolmix"].int64_list.value) == [1, 1, 0]
    third = parsed[2].features.feature
    assert list(third["names"].bytes_list.value) == [b"bar"]
    assert list(third["ratings"].float_list.value) == [-math.inf]
    assert list(third["query"].bytes_list.value) == [b"pizza"]


# ---- REST: errors -----------------------------------------------------------------------------

# json_tensor_test.cc, ClassifyRegressRequestTest.JsonErrors, plus the checks of
# FillClassifyRegressRequestFromJson it leaves out (no "examples", an empty list).
JSON_ERRORS = [
    (
        {"signature_name": ["hello"], "examples": [{"names": ["foo", "bar"]}]},
        "'signature_name' key must be a string",
    ),
    ({"context": [{"names": ["foo", "bar"]}]}, "Example must be JSON object but got JSON Array"),
    ({"examples": {"names": ["foo", "bar"]}}, "Expecting 'examples' value to be an list/array"),
    ({"examples": [[{"names": ["foo", "bar"]}]]}, "Example must be JSON object"),
    ({"examples": [{"names": [10, None]}]}, "names has element with unexpected JSON type: Null"),
    ({"examples": [{"names": [10, 10.0]}]}, "feature: names expecting type: int64"),
    (
        {"examples": [{"names": [10, {"test": 10}]}]},
        "names has element with unexpected JSON type: Object",
    ),
    ({"examples": [{"names": [[10], 20]}]}, "names has element with unexpected JSON type: Array"),
    (b'{"examples": [{"names": [20, 18446744073709551603]}]}', "Only int64_t is supported"),
    ({"signature_name": "regress_x_to_y"}, "key 'examples' is expected and was not found"),
    ({"examples": []}, "'examples' value is an empty array"),
    ({"examples": [{"x": {"b64": "!!"}}]}, "Unable to base64 decode"),
]


@pytest.mark.parametrize("verb", ["classify", "regress"])
@pytest.mark.parametrize(("body", "fragment"), JSON_ERRORS)
def test_json_tensor__classify_regress_request_json_errors(
    half_plus_two_server, verb: str, body, fragment: str
) -> None:
    assert fragment in error_of(post(half_plus_two_server, verb, body), 400)


# http_rest_api_handler_test.cc, HttpRestApiHandlerTest.UnsupportedApiCalls (the uint64 max
# version on :regress) and PredictModelNameVersionErrors, for :classify and :regress.
@pytest.mark.parametrize(
    ("url", "status", "fragment"),
    [
        (f"/v1/models/{NAME}/versions/{2**64 - 1}:regress", 400, "Failed to convert version"),
        ("/v1/models/foo/label/some_label:regress", 400, "Malformed request"),
        ("/v1/models/foo/versions/50/labels/some_label:regress", 400, "Malformed request"),
        ("/v1/models/foo:classify", 404, "Servable not found for request: Latest(foo)"),
        (f"/v1/models/{NAME}/versions/99:regress", 404, f"Specific({NAME}, 99)"),
        (f"/v1/models/{NAME}/labels/stable:classify", 400, "Unrecognized servable version label"),
    ],
)
def test_http_rest_api_handler__unsupported_api_calls_classify_regress(
    half_plus_two_server, url: str, status: int, fragment: str
) -> None:
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]}
    response = requests.post(half_plus_two_server.base_url + url, json=body, timeout=30)
    assert fragment in error_of(response, status)


def test_http_rest_api_handler__classify_body_is_parsed_before_the_model_is_looked_up(
    half_plus_two_server,
) -> None:
    # ProcessClassifyRequest fills the request from the JSON before Classify looks up the model.
    response = requests.post(f"{half_plus_two_server.base_url}/v1/models/foo:classify", data=b"{")
    assert "JSON Parse error" in error_of(response, 400)


# classifier.cc / regressor.cc (GetClassificationSignatureDef, PreProcessClassification,
# PostProcess*Result): a signature of the wrong kind is refused by its shape, as TF Serving does
# without --enable_signature_method_name_check.
@pytest.mark.parametrize(
    ("verb", "signature", "fragment"),
    [
        ("classify", "nope", "No signature was found with the name: nope"),
        ("classify", "", "No classification inputs found in SignatureDef: inputs {"),
        ("classify", "regress_x_to_y", 'at least one of "classes" or "scores". Signature was:'),
        ("classify", "scalar", "Expected one or two output Tensors, found 3"),
        ("regress", "classify_x_to_tag", "Expected one output Tensor."),
        ("regress", "classify_x_to_y", "No regression outputs found in SignatureDef:"),
        ("regress", "regress_to_double", "Expected output Tensor of DT_FLOAT.  Got: DT_DOUBLE"),
    ],
)
def test_classifier_and_regressor__signature_errors(
    half_plus_two_server, verb: str, signature: str, fragment: str
) -> None:
    body = {"signature_name": signature, "examples": [{"x": 1.0}]}
    assert fragment in error_of(post(half_plus_two_server, verb, body), 400)


def test_classify_missing_feature_is_the_graphs_invalid_argument(half_plus_two_server) -> None:
    body = {"signature_name": "classify_x_to_y", "examples": [{"y": 1.0}]}
    message = error_of(post(half_plus_two_server, "classify", body), 400)
    assert "Feature: x (data type: float) is required but could not be found" in message


# ---- gRPC -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stub(half_plus_two_server):
    with grpc.insecure_channel(half_plus_two_server.grpc_target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def example(**features: float) -> str:
    """A tf.Example in text format: float features."""
    entries = " ".join(
        f'feature {{ key: "{k}" value {{ float_list {{ value: {v} }} }} }}'
        for k, v in features.items()
    )
    return f"features {{ {entries} }}"


# tensorflow_model_server_test.py, _TestClassify (testClassify / testClassifyTf2).
def test_tensorflow_model_server__classify(stub) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = NAME
    request.model_spec.signature_name = "classify_x_to_y"
    text_format.Parse(example(x=2.0), request.input.example_list.examples.add())
    result = stub.Classify(request, 10)
    assert len(result.result.classifications) == 1
    assert len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    assert result.model_spec.name == NAME
    assert result.model_spec.version.value == 1
    assert result.model_spec.signature_name == "classify_x_to_y"


# tensorflow_model_server_test.py, _TestRegress (testRegress / testRegressTf2).
def test_tensorflow_model_server__regress(stub) -> None:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = NAME
    request.model_spec.signature_name = "regress_x_to_y"
    text_format.Parse(example(x=2.0), request.input.example_list.examples.add())
    result = stub.Regress(request, 10)
    assert [r.value for r in result.result.regressions] == [3.0]
    assert result.model_spec.version.value == 1


def test_grpc_classify_with_context_has_labels_and_scores(stub) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = NAME
    request.model_spec.signature_name = "classify_x_to_tag"
    listed = request.input.example_list_with_context
    text_format.Parse(
        'features { feature { key: "tag" value { bytes_list { value: "ctx" } } } }',
        listed.context,
    )
    for x in (20.0, 3.0):
        text_format.Parse(example(x=x), listed.examples.add())
    result = stub.Classify(request, 10).result
    assert [[(c.label, c.score) for c in row.classes] for row in result.classifications] == [
        [("ctx", half_plus_two(x)), ("other", -half_plus_two(x))] for x in (20.0, 3.0)
    ]


@pytest.mark.parametrize(
    ("method", "request_text", "code", "fragment"),
    [
        ("Classify", "", grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
        ("Regress", 'model_spec { name: "nope" }', grpc.StatusCode.NOT_FOUND, "Latest(nope)"),
        (
            "Regress",
            f'model_spec {{ name: "{NAME}" signature_name: "regress_x_to_y" }}',
            grpc.StatusCode.INVALID_ARGUMENT,
            "Input is empty.",
        ),
        (
            "Classify",
            f'model_spec {{ name: "{NAME}" signature_name: "regress_x_to_y" }} '
            "input { example_list { examples {} } }",
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expected classification signature outputs to contain at least one of",
        ),
    ],
)
def test_grpc_classify_regress_errors_are_tf_servings(
    stub, method: str, request_text: str, code, fragment: str
) -> None:
    message_class = {
        "Classify": classification_pb2.ClassificationRequest,
        "Regress": regression_pb2.RegressionRequest,
    }[method]
    request = text_format.Parse(request_text, message_class())
    with pytest.raises(grpc.RpcError) as failure:
        getattr(stub, method)(request, 10)
    assert failure.value.code() == code
    assert fragment in failure.value.details()


def test_grpc_and_rest_classify_agree(stub, half_plus_two_server) -> None:
    xs = [0.5, -3.25, 1e6]
    request = classification_pb2.ClassificationRequest(
        input=input_pb2.Input(example_list=input_pb2.ExampleList())
    )
    request.model_spec.name = NAME
    request.model_spec.signature_name = "classify_x_to_tag"
    for x in xs:
        text_format.Parse(example(x=x), request.input.example_list.examples.add())
    grpc_result = stub.Classify(request, 10).result
    body = {"signature_name": "classify_x_to_tag", "examples": [{"x": x} for x in xs]}
    rest = post(half_plus_two_server, "classify", body).json()["results"]
    assert rest == [
        [[c.label, c.score] for c in row.classes] for row in grpc_result.classifications
    ]
