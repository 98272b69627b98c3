"""The TF Serving REST client pieces: URLs, request bodies, metadata, status (real server)."""

import base64
import json

import numpy as np
import pytest

from sidecar_testing.data import IMAGE1
from tfserving.client import TFServingClient
from tfserving.encoding import b64_request, pixels_json, pixels_request
from tfserving.errors import UnsupportedSignature
from tfserving.metadata import parse_metadata
from tfserving.spec import ServerSpec, ServerSpecError

LOCAL = "http://localhost:8501"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"{LOCAL}/v1/models/ssd:predict", (LOCAL, "ssd", None, None)),
        (
            "http://10.0.0.7:80/v1/models/ssd/versions/3:predict",
            ("http://10.0.0.7:80", "ssd", 3, None),
        ),
        ("https://lb/v1/models/ssd/labels/stable:predict", ("https://lb", "ssd", None, "stable")),
        (f"{LOCAL}/v1/models/ssd/metadata", (LOCAL, "ssd", None, None)),
        (f"{LOCAL}/v1/models/ssd", (LOCAL, "ssd", None, None)),
        ("localhost:8501/v1/models/ssd:predict", (LOCAL, "ssd", None, None)),
        (
            "http://gw/tfs/v1/models/ssd:predict",
            ("http://gw/tfs", "ssd", None, None),
        ),  # a proxy prefix
    ],
)
def test_spec_from_url(url, expected):
    spec = ServerSpec.from_url(url)
    assert (spec.base_url, spec.model_name, spec.version, spec.label) == expected


def test_spec_urls_for_each_endpoint():
    spec = ServerSpec.from_parts("127.0.0.1", 9000, "ssd", version=2)
    assert spec.model_url == "http://127.0.0.1:9000/v1/models/ssd/versions/2"
    assert spec.predict_url == "http://127.0.0.1:9000/v1/models/ssd/versions/2:predict"
    assert spec.metadata_url == "http://127.0.0.1:9000/v1/models/ssd/versions/2/metadata"
    labelled = ServerSpec.from_url("http://h:1/v1/models/ssd:predict", label="canary")
    assert labelled.predict_url == "http://h:1/v1/models/ssd/labels/canary:predict"
    assert ServerSpec.from_parts("::1", 8501, "m").base_url == "http://[::1]:8501"
    bare = ServerSpec.from_url("http://h:8501", model_name="m")
    assert bare.predict_url == "http://h:8501/v1/models/m:predict"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "http://localhost:8501/"}, "does not name a model"),
        ({"url": "ftp://host/v1/models/m"}, "not an http"),
        ({"url": "http://h/v1/models/m", "version": 1, "label": "x"}, "not both"),
    ],
)
def test_spec_errors(kwargs, message):
    with pytest.raises(ServerSpecError, match=message):
        ServerSpec.from_url(**kwargs)


SHAPES = [(1, 1, 3), (1, 7, 3), (5, 1, 3), (3, 4, 1), (2, 3, 4), (17, 23, 3)]


@pytest.mark.parametrize("shape", SHAPES)
def test_pixels_json_is_the_same_json_as_the_slow_way(shape):
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    pixels.flat[:3] = (0, 9, 255)  # one, two and three digit values all appear
    assert pixels_json(pixels) == json.dumps(pixels.tolist(), separators=(",", ":")).encode()


def test_pixels_json_rejects_what_is_not_an_image():
    for bad in (
        np.zeros((2, 2), np.uint8),
        np.zeros((2, 2, 3), np.float32),
        np.zeros((0, 2, 3), np.uint8),
    ):
        with pytest.raises(ValueError, match="uint8"):
            pixels_json(bad)


def test_request_bodies_are_tf_serving_row_format():
    pixels = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    body = json.loads(pixels_request(pixels, "serving_default"))
    assert body == {"signature_name": "serving_default", "instances": [pixels.tolist()]}
    data = IMAGE1.read_bytes()
    body = json.loads(b64_request(data, 'odd "name"'))
    assert body["signature_name"] == 'odd "name"'
    assert base64.b64decode(body["instances"][0]["b64"]) == data


METADATA = {
    "model_spec": {"name": "m", "signature_name": "", "version": "7"},
    "metadata": {
        "signature_def": {
            "signature_def": {
                "__saved_model_init_op": {"inputs": {}, "outputs": {}, "method_name": ""},
                "two_inputs": {
                    "inputs": {
                        "a": {"dtype": "DT_FLOAT", "tensor_shape": {"unknown_rank": True}},
                        "b": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1"}]}},
                    },
                    "outputs": {},
                    "method_name": "tensorflow/serving/predict",
                },
            }
        }
    },
}


def test_metadata_parsing_and_signature_checks():
    model = parse_metadata(METADATA)
    assert (model.model_name, model.version) == ("m", "7")
    assert list(model.signatures) == ["two_inputs"]  # the init op is not a signature
    signature = model.signature("two_inputs")
    assert [t.describe() for t in signature.inputs] == [
        "a: DT_FLOAT unknown rank",
        "b: DT_FLOAT (-1)",
    ]
    with pytest.raises(UnsupportedSignature, match="2 inputs"):
        _ = signature.image_input
    # No name: serving_default, else the only signature (TF Hub's `default`)...
    assert model.signature() is signature
    # ...but a name asked for must be there.
    with pytest.raises(
        UnsupportedSignature, match=r"has no signature 'serving_default'.*two_inputs"
    ):
        model.signature("serving_default")


def test_without_serving_default_several_signatures_are_listed():
    signatures = METADATA["metadata"]["signature_def"]["signature_def"]
    two = {"first": signatures["two_inputs"], "second": signatures["two_inputs"]}
    model = parse_metadata({**METADATA, "metadata": {"signature_def": {"signature_def": two}}})
    with pytest.raises(
        UnsupportedSignature, match=r"no signature 'serving_default' and several.*first, second"
    ):
        model.signature()


def test_real_server_metadata_status_and_predict(pixel_server):
    spec = ServerSpec.from_url(pixel_server.predict_url)
    with TFServingClient(spec) as client:
        model = client.metadata()
        assert model.model_name == pixel_server.model_name and model.version == "1"
        image_input = model.signature().image_input
        assert (image_input.dtype, image_input.shape) == ("DT_UINT8", (-1, -1, -1, 3))
        assert client.metadata() is model  # read once, then cached

        [version] = client.status()
        assert (version.version, version.state, version.available) == ("1", "AVAILABLE", True)

        pixels = np.full((64, 48, 3), 127, np.uint8)
        answer = client.predict(pixels_request(pixels, "serving_default"))
        [row] = answer["predictions"]
        assert np.asarray(row["detection_boxes"]).shape == (100, 4)
        assert row["num_detections"] == 100


def test_real_server_takes_b64_bodies(encoded_server):
    spec = ServerSpec.from_url(encoded_server.predict_url)
    with TFServingClient(spec) as client:
        assert client.metadata().signature().image_input.dtype == "DT_STRING"
        [row] = client.predict(b64_request(IMAGE1.read_bytes(), "serving_default"))["predictions"]
        assert max(row["detection_scores"]) > 0.6
