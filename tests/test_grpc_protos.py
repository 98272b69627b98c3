"""The project's own TF Serving protos (tfserving/protos) against the official ones.

Both sets load in one process (their proto packages differ), and each message's bytes written by
one parse with the other, both ways: the client's messages are TF Serving's on the wire. The
declared fields are checked too, number by number, so that a field a test message leaves unset
can't differ unseen. The tensor codec of tfserving.grpc_client is checked against TensorFlow's
own (tf.make_tensor_proto / tf.make_ndarray).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import any_pb2, text_format
from tensorflow.core.example import example_pb2 as tf_example_pb2
from tensorflow.core.framework import tensor_pb2 as tf_tensor_pb2
from tensorflow.core.framework import types_pb2 as tf_types_pb2
from tensorflow.core.protobuf import meta_graph_pb2 as tf_meta_graph_pb2
from tensorflow_serving.apis import classification_pb2 as tfs_classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2 as tfs_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2 as tfs_status_pb2
from tensorflow_serving.apis import input_pb2 as tfs_input_pb2
from tensorflow_serving.apis import model_management_pb2 as tfs_management_pb2
from tensorflow_serving.apis import predict_pb2 as tfs_predict_pb2
from tensorflow_serving.apis import prediction_log_pb2 as tfs_log_pb2
from tensorflow_serving.apis import regression_pb2 as tfs_regression_pb2
from tensorflow_serving.config import model_server_config_pb2 as tfs_config_pb2

from sidecar_testing.data import PIXEL_MODEL, ROOT
from tfserving.grpc_client import SIGNATURE_DEF_MAP_URL
from tfserving.protos import (
    classification_pb2,
    example_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    meta_graph_pb2,
    model_management_pb2,
    model_server_config_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
    status_pb2,
    tensor_pb2,
    types_pb2,
)
from tfserving.tensors import decode_tensor, encode_tensor

PAIRS = [
    (predict_pb2.PredictRequest, tfs_predict_pb2.PredictRequest),
    (predict_pb2.PredictResponse, tfs_predict_pb2.PredictResponse),
    (get_model_metadata_pb2.GetModelMetadataRequest, tfs_metadata_pb2.GetModelMetadataRequest),
    (get_model_metadata_pb2.GetModelMetadataResponse, tfs_metadata_pb2.GetModelMetadataResponse),
    (get_model_metadata_pb2.SignatureDefMap, tfs_metadata_pb2.SignatureDefMap),
    (get_model_status_pb2.GetModelStatusRequest, tfs_status_pb2.GetModelStatusRequest),
    (get_model_status_pb2.GetModelStatusResponse, tfs_status_pb2.GetModelStatusResponse),
    (tensor_pb2.TensorProto, tf_tensor_pb2.TensorProto),
    (meta_graph_pb2.SignatureDef, tf_meta_graph_pb2.SignatureDef),
    (classification_pb2.ClassificationRequest, tfs_classification_pb2.ClassificationRequest),
    (classification_pb2.ClassificationResponse, tfs_classification_pb2.ClassificationResponse),
    (regression_pb2.RegressionRequest, tfs_regression_pb2.RegressionRequest),
    (regression_pb2.RegressionResponse, tfs_regression_pb2.RegressionResponse),
    (input_pb2.Input, tfs_input_pb2.Input),
    (example_pb2.Example, tf_example_pb2.Example),
    (model_server_config_pb2.ModelServerConfig, tfs_config_pb2.ModelServerConfig),
    (prediction_log_pb2.PredictionLog, tfs_log_pb2.PredictionLog),
    (model_management_pb2.ReloadConfigRequest, tfs_management_pb2.ReloadConfigRequest),
    (model_management_pb2.ReloadConfigResponse, tfs_management_pb2.ReloadConfigResponse),
]


def both_ways(ours_class, message):
    """`message` (official) through our class and back: the same message, the same bytes."""
    ours = ours_class.FromString(message.SerializeToString())
    back = type(message).FromString(ours.SerializeToString())
    assert back == message
    return ours


def field_layout(descriptor, seen=None) -> dict:
    """{message short name: {number: (name, type, repeated, nested short name)}}, recursively."""
    seen = {} if seen is None else seen
    if descriptor.name in seen:
        return seen
    seen[descriptor.name] = {}
    for field in descriptor.fields:
        nested = field.message_type or field.enum_type
        seen[descriptor.name][field.number] = (
            field.name,
            field.type,
            field.is_repeated,
            nested.name if nested else None,
        )
        if field.message_type and field.message_type.file.package.endswith(".protobuf"):
            continue  # google.protobuf's own (Any, Int64Value): the very same messages
        if field.message_type:
            field_layout(field.message_type, seen)
    return seen


@pytest.mark.parametrize(("ours", "official"), PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_every_declared_field_is_the_official_one(ours, official) -> None:
    mine = field_layout(ours.DESCRIPTOR)
    theirs = field_layout(official.DESCRIPTOR)
    for message, fields in mine.items():
        assert fields.items() <= theirs[message].items(), message


def test_enums_have_the_official_numbers() -> None:
    assert {v.name: v.number for v in types_pb2.DataType.DESCRIPTOR.values}.items() <= {
        v.name: v.number for v in tf_types_pb2.DataType.DESCRIPTOR.values
    }.items()
    official = tfs_status_pb2.ModelVersionStatus.State
    assert dict(get_model_status_pb2.ModelVersionStatus.State.items()) == dict(official.items())
    status = tfs_status_pb2.ModelVersionStatus.DESCRIPTOR.fields_by_name["status"].message_type
    codes = status.fields_by_name["error_code"].enum_type.values
    assert dict(status_pb2.Code.items()) == {
        code.name: code.number for code in codes if not code.name.startswith("DO_NOT_USE")
    }


def test_predict_request_and_response_round_trip() -> None:
    request = tfs_predict_pb2.PredictRequest(output_filter=["detection_boxes"])
    request.model_spec.name = "ssd"
    request.model_spec.version.value = 3
    request.model_spec.signature_name = "serving_default"
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(np.arange(24, dtype=np.uint8)))
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([b"\xff\xd8jpeg\x00", b"png\x00"]))
    ours = both_ways(predict_pb2.PredictRequest, request)
    assert ours.model_spec.WhichOneof("version_choice") == "version"
    assert decode_tensor("images", ours.inputs["images"]).tolist() == [
        b"\xff\xd8jpeg\x00",
        b"png\x00",
    ]

    labelled = tfs_predict_pb2.PredictRequest()
    labelled.model_spec.version_label = "stable"
    assert both_ways(predict_pb2.PredictRequest, labelled).model_spec.version_label == "stable"

    response = tfs_predict_pb2.PredictResponse()
    response.model_spec.name = "ssd"
    response.model_spec.version.value = 1
    response.outputs["detection_scores"].CopyFrom(tf.make_tensor_proto([[0.5, 0.25]]))
    ours = both_ways(predict_pb2.PredictResponse, response)
    assert decode_tensor("s", ours.outputs["detection_scores"]).tolist() == [[0.5, 0.25]]


def test_our_request_is_read_by_tf_serving_messages() -> None:
    """The way the client builds a request (tensor_content, string_val), read as TF Serving."""
    pixels = np.random.default_rng(0).integers(0, 256, (1, 5, 7, 3), dtype=np.uint8)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ssd"
    encode_tensor(pixels, request.inputs["inputs"])
    encode_tensor([b"\x89PNG\x00", b"\xff\xd8"], request.inputs["images"])
    official = tfs_predict_pb2.PredictRequest.FromString(request.SerializeToString())
    assert official.inputs["inputs"].dtype == tf_types_pb2.DT_UINT8
    np.testing.assert_array_equal(tf.make_ndarray(official.inputs["inputs"]), pixels)
    assert tf.make_ndarray(official.inputs["images"]).tolist() == [b"\x89PNG\x00", b"\xff\xd8"]
    assert predict_pb2.PredictRequest.FromString(official.SerializeToString()) == request


def signature_def_map() -> tfs_metadata_pb2.SignatureDefMap:
    """The pixel model's own signatures, as TF Serving's GetModelMetadata packs them."""
    from serving.model import _serving_meta_graph

    signatures = tfs_metadata_pb2.SignatureDefMap()
    for key, signature in _serving_meta_graph(PIXEL_MODEL / "1").signature_def.items():
        signatures.signature_def[key].CopyFrom(signature)
    return signatures


def test_model_metadata_response_round_trips_with_its_any() -> None:
    response = tfs_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = "ssd"
    response.model_spec.version.value = 1
    response.metadata["signature_def"].Pack(signature_def_map())
    assert response.metadata["signature_def"].type_url == SIGNATURE_DEF_MAP_URL
    ours = both_ways(get_model_metadata_pb2.GetModelMetadataResponse, response)
    unpacked = get_model_metadata_pb2.SignatureDefMap.FromString(
        ours.metadata["signature_def"].value
    )
    inputs = unpacked.signature_def["serving_default"].inputs["inputs"]
    assert types_pb2.DataType.Name(inputs.dtype) == "DT_UINT8"
    assert [dim.size for dim in inputs.tensor_shape.dim] == [-1, -1, -1, 3]

    request = tfs_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "ssd"
    both_ways(get_model_metadata_pb2.GetModelMetadataRequest, request)
    assert isinstance(ours.metadata["signature_def"], any_pb2.Any)


MODEL_CONFIG_TEXT = """
model_config_list {
  config {
    name: "ssd"
    base_path: "/models/ssd"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config {
    name: "other"
    base_path: "/models/other"
    model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 2 } }
  }
  config { name: "all" base_path: "/models/all" model_version_policy { all {} } }
}
"""


def test_a_model_config_file_reads_as_tf_serving_reads_it() -> None:
    """The same text parsed by both sets of messages gives the same bytes, both ways."""
    official = text_format.Parse(MODEL_CONFIG_TEXT, tfs_config_pb2.ModelServerConfig())
    ours = text_format.Parse(MODEL_CONFIG_TEXT, model_server_config_pb2.ModelServerConfig())
    assert ours.SerializeToString(deterministic=True) == official.SerializeToString(
        deterministic=True
    )
    both_ways(model_server_config_pb2.ModelServerConfig, official)
    first = ours.model_config_list.config[0]
    assert first.model_version_policy.WhichOneof("policy_choice") == "specific"
    assert dict(first.version_labels) == {"stable": 1, "canary": 2}


def test_a_warmup_record_round_trips() -> None:
    record = tfs_log_pb2.PredictionLog()
    request = record.predict_log.request
    request.model_spec.name = "ssd"
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 2, 2, 3), np.uint8)))
    ours = both_ways(prediction_log_pb2.PredictionLog, record)
    assert ours.WhichOneof("log_type") == "predict_log"
    classify = tfs_log_pb2.PredictionLog()
    classify.classify_log.request.model_spec.name = "ssd"
    assert both_ways(prediction_log_pb2.PredictionLog, classify).WhichOneof("log_type") == (
        "classify_log"
    )


def test_model_status_response_round_trips() -> None:
    response = tfs_status_pb2.GetModelStatusResponse()
    for version, state in ((1, "AVAILABLE"), (2, "LOADING")):
        entry = response.model_version_status.add(version=version)
        entry.state = tfs_status_pb2.ModelVersionStatus.State.Value(state)
        entry.status.error_code = 5
        entry.status.error_message = "not yet"
    ours = both_ways(get_model_status_pb2.GetModelStatusResponse, response)
    assert [s.state for s in ours.model_version_status] == [30, 20]
    assert ours.model_version_status[0].status.error_message == "not yet"
    request = tfs_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "ssd"
    both_ways(get_model_status_pb2.GetModelStatusRequest, request)


EXAMPLE = """
  features {
    feature { key: "names" value { bytes_list { value: "foo" value: "\\377\\000" } } }
    feature { key: "ratings" value { float_list { value: 8.0 value: -0.5 value: inf } } }
    feature { key: "age" value { int64_list { value: 20 value: -9223372036854775808 } } }
    feature { key: "empty" value {} }
  }
"""


@pytest.mark.parametrize(
    ("ours_class", "official_class"),
    [
        (classification_pb2.ClassificationRequest, tfs_classification_pb2.ClassificationRequest),
        (regression_pb2.RegressionRequest, tfs_regression_pb2.RegressionRequest),
    ],
    ids=["classify", "regress"],
)
def test_classify_and_regress_requests_round_trip_with_their_examples(
    ours_class, official_class
) -> None:
    request = official_class()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "classify_x_to_y"
    listed = request.input.example_list_with_context
    text_format.Parse(EXAMPLE, listed.context)
    text_format.Parse(EXAMPLE, listed.examples.add())
    listed.examples.add()
    ours = both_ways(ours_class, request)
    context = ours.input.example_list_with_context.context.features.feature
    assert list(context["names"].bytes_list.value) == [b"foo", b"\xff\x00"]
    assert list(context["age"].int64_list.value) == [20, -(2**63)]
    assert context["empty"].WhichOneof("kind") is None
    # An example serialized by our messages is TensorFlow's tf.Example, byte for byte.
    example = tf_example_pb2.Example.FromString(
        ours.input.example_list_with_context.examples[0].SerializeToString()
    )
    assert example == listed.examples[0]
    plain = official_class()
    plain.input.example_list.examples.add().CopyFrom(listed.examples[0])
    assert both_ways(ours_class, plain).input.WhichOneof("kind") == "example_list"


def test_classify_and_regress_responses_round_trip() -> None:
    response = tfs_classification_pb2.ClassificationResponse()
    response.model_spec.name = "m"
    response.model_spec.version.value = 3
    row = response.result.classifications.add()
    row.classes.add(label="cat", score=0.25)
    row.classes.add(label="", score=-1.5)
    ours = both_ways(classification_pb2.ClassificationResponse, response)
    assert [(c.label, c.score) for c in ours.result.classifications[0].classes] == [
        ("cat", 0.25),
        ("", -1.5),
    ]
    regression = tfs_regression_pb2.RegressionResponse()
    regression.result.regressions.add(value=42.0)
    regression.result.regressions.add(value=float("inf"))
    ours = both_ways(regression_pb2.RegressionResponse, regression)
    assert [r.value for r in ours.result.regressions] == [42.0, float("inf")]


ARRAYS = {
    "float32": np.array([[0.5, -1.25], [3.0, 1e-30]], np.float32),
    "float64": np.array([1.0 / 3.0, -2.0], np.float64),
    "int32": np.array([[-(2**31), 2**31 - 1]], np.int32),
    "uint8": np.array([0, 7, 255], np.uint8),
    "int8": np.array([-128, 127], np.int8),
    "int16": np.array([-32768, 5], np.int16),
    "uint16": np.array([0, 65535], np.uint16),
    "int64": np.array([-(2**63), 2**63 - 1], np.int64),
    "uint32": np.array([2**32 - 1], np.uint32),
    "uint64": np.array([2**64 - 1], np.uint64),
    "bool": np.array([[True, False, True]]),
    "float16": np.array([0.5, -2.0, 65504.0], np.float16),
    "complex64": np.array([1 + 2j, -3.5j], np.complex64),
    "complex128": np.array([1 - 2j], np.complex128),
    "scalar": np.array(4.5, np.float32),
    "empty": np.zeros((0, 3), np.float32),
}


def typed_fields(array: np.ndarray) -> tensor_pb2.TensorProto:
    """The array as TF Serving answers (Tensor::AsProtoField): values in the dtype's field, as
    the local server's gRPC port writes them (checked against TensorFlow below)."""
    proto = tensor_pb2.TensorProto()
    encode_tensor(array, proto, typed=True)
    return proto


@pytest.mark.parametrize("array", ARRAYS.values(), ids=ARRAYS.keys())
@pytest.mark.parametrize("form", [tf.make_tensor_proto, typed_fields], ids=["content", "typed"])
def test_tensors_decode_as_tensorflow_reads_them(array, form) -> None:
    proto = tensor_pb2.TensorProto.FromString(form(array).SerializeToString())
    decoded = decode_tensor("x", proto)
    expected = tf.make_ndarray(tf_tensor_pb2.TensorProto.FromString(proto.SerializeToString()))
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, expected)
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("array", ARRAYS.values(), ids=ARRAYS.keys())
@pytest.mark.parametrize("typed", [False, True], ids=["content", "typed"])
def test_tensors_encode_as_tensorflow_reads_them(array, typed) -> None:
    proto = tensor_pb2.TensorProto()
    encode_tensor(array, proto, typed=typed)
    assert bool(proto.tensor_content) == (not typed and array.size > 0)
    official = tf_tensor_pb2.TensorProto.FromString(proto.SerializeToString())
    np.testing.assert_array_equal(tf.make_ndarray(official), array)


def test_fewer_typed_values_than_the_shape_are_filled_as_tensorflow_does() -> None:
    single = tf_tensor_pb2.TensorProto(dtype=tf_types_pb2.DT_FLOAT, float_val=[2.5])
    single.tensor_shape.dim.add(size=2)
    single.tensor_shape.dim.add(size=2)
    decoded = decode_tensor("x", tensor_pb2.TensorProto.FromString(single.SerializeToString()))
    np.testing.assert_array_equal(decoded, tf.make_ndarray(single))
    assert decoded.tolist() == [[2.5, 2.5], [2.5, 2.5]]


def test_the_client_imports_without_tensorflow_or_grpc() -> None:
    """The client's gRPC module and the protos load without TensorFlow (the client's users
    don't have it), and grpc itself loads only once a client is made (CLI start-up)."""
    code = (
        "import sys, tfserving.grpc_client, tfserving.protos.predict_pb2, "
        "tfserving.protos.get_model_metadata_pb2, tfserving.protos.get_model_status_pb2; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'grpc'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
