"""Classify and Regress: tf.Example requests on classification and regression signatures.

TF Serving serves these over REST (`:classify`, `:regress`) and gRPC (PredictionService.Classify,
.Regress); both ports share this module, which follows TF Serving's C++:

- the REST body (json_tensor.cc FillClassifyRegressRequestFromJson): `examples`, a list of
  objects of features (numbers, strings, `{"b64"}` bytes, or lists of them), an optional
  `context` whose features every example gets, an optional `signature_name`;
- the examples as the model's input (util.cc InputToSerializedExampleTensor): one DT_STRING
  tensor of serialized tf.Example, the context's bytes before each example's (so an example's
  feature wins over the context's of the same name when the model parses them);
- the signature's checks and the outputs' (classifier.cc, regressor.cc), with their wording;
- the answer: `{"results": ...}` (MakeJsonFromClassificationResult / RegressionResult).

TF Serving checks a signature's method_name only with --enable_signature_method_name_check (off by
default); without it, as here, a signature of the wrong kind is refused by the checks of its
inputs and outputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2

from serving import json_tensor
from serving.errors import invalid_argument
from serving.model import ServedModel
from tfserving.conventions import DEFAULT_SIGNATURE

INPUTS = "inputs"  # the one input of both kinds of signature
CLASSES, SCORES = "classes", "scores"
OUTPUTS = "outputs"  # a regression signature's one output
_REQUEST_KEYS = frozenset({"signature_name", "context", "examples"})
_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}

Classification = list[tuple[bytes, float]]  # (label, score) per class of one example


# ---- the REST request -------------------------------------------------------------------------


def examples_from_json(body: bytes | bytearray) -> tuple[str, list[bytes]]:
    """(signature name, serialized examples) of a :classify or :regress body."""
    doc = json_tensor.parse_json_document(body, _REQUEST_KEYS)
    signature_name = json_tensor.signature_name_of(doc)
    context = example_from_json(doc["context"]) if "context" in doc else b""
    examples = doc.get("examples")
    quoted = json_tensor.json_value_to_string
    # TF Serving's wording, "classify" in it for :regress too.
    if "examples" not in doc:
        raise invalid_argument(
            f"JSON Value: {quoted(doc)} When method is classify, key 'examples' is expected "
            "and was not found"
        )
    if not isinstance(examples, list):
        raise invalid_argument(
            f"JSON Value: {quoted(doc)} Expecting 'examples' value to be an list/array"
        )
    if not examples:
        raise invalid_argument(f"JSON Value: {quoted(doc)} 'examples' value is an empty array")
    return signature_name, [context + example_from_json(value) for value in examples]


def example_from_json(value: Any) -> bytes:
    """MakeExampleFromJsonObject: a JSON object of features as a serialized tf.Example."""
    if not isinstance(value, dict):
        raise invalid_argument(
            f"Example must be JSON object but got JSON {json_tensor.json_type_string(value)}"
        )
    example = tf.train.Example()
    for name, content in value.items():
        # A repeated name: json keeps the last, which is the one TF Serving's loop keeps too.
        values = content if isinstance(content, list) else [content]
        _fill_feature(name, values, example.features.feature[name])
    return example.SerializeToString()


def _fill_feature(name: str, values: list, feature: tf.train.Feature) -> None:
    """AddValueToFeature for each value: one kind per feature, the first value's."""
    kind = None
    items = []
    for value in values:
        value_kind = _feature_kind(name, value)
        if kind is not None and value_kind != kind:
            raise invalid_argument(
                f"Unexpected element type in feature: {name} expecting type: {_KIND_NAMES[kind]}"
            )
        kind = value_kind
        items.append(_feature_item(name, value))
    if kind is not None:
        getattr(feature, kind).value.extend(items)


def _feature_kind(name: str, value: Any) -> str:
    """The list a JSON value goes to (rapidjson's view: a number with a point or exponent, or
    an integer past uint64, is a double)."""
    if isinstance(value, bool):
        return "int64_list"
    if isinstance(value, str) or json_tensor.is_b64_object(value):
        return "bytes_list"
    if isinstance(value, int) and -(2**63) <= value < 2**64:
        return "int64_list"
    if isinstance(value, (int, float)):
        return "float_list"
    raise invalid_argument(
        f"Feature: {name} has element with unexpected JSON type: "
        f"{json_tensor.json_type_string(value)}"
    )


def _feature_item(name: str, value: Any) -> bytes | int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict):
        return json_tensor.decode_b64(value)
    if isinstance(value, int) and -(2**63) <= value < 2**64:
        if value >= 2**63:
            raise invalid_argument(
                f"Feature: {name} has uint64_t element. Only int64_t is supported."
            )
        return value
    return json_tensor.as_double(value)  # FloatList rounds it to float, past its range to inf


# ---- the gRPC request -------------------------------------------------------------------------


def examples_from_input(message: Any) -> list[bytes]:
    """The serialized examples of a request's `Input` (ExampleList or ExampleListWithContext)."""
    kind = message.WhichOneof("kind")
    if kind == "example_list":
        return [example.SerializeToString() for example in message.example_list.examples]
    if kind == "example_list_with_context":
        listed = message.example_list_with_context
        context = listed.context.SerializeToString()
        return [context + example.SerializeToString() for example in listed.examples]
    return []


# ---- the signature, the model's input and its outputs -------------------------------------------


def _debug_string(signature: Any) -> str:
    """SignatureDef::DebugString(), which TF Serving puts in some messages: the text format."""
    return text_format.MessageToString(signature)


def _check_classification(signature: Any) -> None:
    """PreProcessClassification."""
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(
            f"Expected one or two output Tensors, found {len(signature.outputs)}"
        )
    if INPUTS not in signature.inputs:
        raise invalid_argument(
            f"No classification inputs found in SignatureDef: {_debug_string(signature)}"
        )
    if CLASSES not in signature.outputs and SCORES not in signature.outputs:
        raise invalid_argument(
            "Expected classification signature outputs to contain at least one of "
            f'"{CLASSES}" or "{SCORES}". Signature was: {_debug_string(signature)}'
        )


def _check_regression(signature: Any) -> None:
    """PreProcessRegression."""
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if INPUTS not in signature.inputs:
        raise invalid_argument(
            f"No regression inputs found in SignatureDef: {_debug_string(signature)}"
        )
    if OUTPUTS not in signature.outputs:
        raise invalid_argument(
            f"No regression outputs found in SignatureDef: {_debug_string(signature)}"
        )


def _shape_string(array: np.ndarray) -> str:
    """TensorShape::DebugString: [2,3]."""
    return "[" + ",".join(str(size) for size in array.shape) + "]"


def _dtype_name(array: np.ndarray) -> str:
    return types_pb2.DataType.Name(tf.as_dtype(array.dtype).as_datatype_enum)


def _checked_matrix(name: str, array: np.ndarray, dtype: str, examples: int) -> np.ndarray:
    """A classes or scores output, checked as PostProcessClassificationResult does."""
    if array.ndim != 2:
        raise invalid_argument(
            f"Expected Tensor shape: [batch_size num_classes] but got {_shape_string(array)}"
        )
    if _dtype_name(array) != dtype:
        raise invalid_argument(f"Expected {name} Tensor of {dtype}. Got: {_dtype_name(array)}")
    if array.shape[0] != examples:
        raise invalid_argument(
            f"Expected {name} output batch size of {examples}. Got: {array.shape[0]}"
        )
    return array


def classification_result(outputs: Mapping[str, np.ndarray], examples: int) -> list[Classification]:
    """PostProcessClassificationResult: per example, (label, score) per class; a missing
    output leaves its field empty ("" or 0), as the proto's default."""
    classes = scores = None
    if CLASSES in outputs:
        classes = _checked_matrix(CLASSES, outputs[CLASSES], "DT_STRING", examples)
    if SCORES in outputs:
        scores = _checked_matrix(SCORES, outputs[SCORES], "DT_FLOAT", examples)
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument(
            "Tensors class and score should match in dim_size(1). Got "
            f"{classes.shape[1]} vs. {scores.shape[1]}"
        )
    present = classes if classes is not None else scores
    labels = classes if classes is not None else np.full(present.shape, b"", dtype=object)
    values = scores if scores is not None else np.zeros(present.shape, dtype=np.float32)
    return [
        list(zip(label_row, value_row.tolist(), strict=True))
        for label_row, value_row in zip(labels.tolist(), values, strict=True)
    ]


def regression_result(outputs: Mapping[str, np.ndarray], examples: int) -> np.ndarray:
    """PostProcessRegressionResult: one float per example."""
    output = outputs[OUTPUTS]
    if not (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
        raise invalid_argument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{_shape_string(output)}"
        )
    if output.shape[0] != examples:
        raise invalid_argument(
            f"Input batch size did not match output batch size: {examples} vs. {output.shape[0]}"
        )
    if _dtype_name(output) != "DT_FLOAT":
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_name(output)}")
    return output.reshape(-1)


# ---- the REST answer --------------------------------------------------------------------------


def classification_json(result: list[Classification]) -> bytes:
    """MakeJsonFromClassificationResult: {"results": [[[label, score], ...], ...]}."""
    rows = []
    for classes in result:
        scores = json_tensor.format_floats(np.array([score for _, score in classes], np.float32))
        pairs = [
            f"[{json.dumps(label.decode('utf-8', errors='replace'))}, {score}]"
            for (label, _), score in zip(classes, scores, strict=True)
        ]
        rows.append("        [" + ", ".join(pairs) + "]")
    return ('{\n    "results": [\n' + ",\n".join(rows) + "\n    ]\n}").encode()


def regression_json(result: np.ndarray) -> bytes:
    """MakeJsonFromRegressionResult: {"results": [value, ...]}."""
    return ('{\n    "results": [' + ", ".join(json_tensor.format_floats(result)) + "]\n}").encode()


# ---- both kinds -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """What differs between Classify and Regress."""

    api: str  # the API's name, as the metrics label it
    check: Callable[[Any], None]
    result: Callable[[Mapping[str, np.ndarray], int], Any]
    to_json: Callable[[Any], bytes]


CLASSIFY = Task("Classify", _check_classification, classification_result, classification_json)
REGRESS = Task("Regress", _check_regression, regression_result, regression_json)
TASKS = {"classify": CLASSIFY, "regress": REGRESS}


def model_input(
    task: Task, model: ServedModel, signature_name: str, examples: list[bytes]
) -> tuple[str, dict[str, np.ndarray]]:
    """(signature name, the model's input) once the signature and the examples pass TF
    Serving's checks (GetClassificationSignatureDef / GetRegressionSignatureDef, then
    InputToSerializedExampleTensor)."""
    name = signature_name or DEFAULT_SIGNATURE
    signature = model.meta_graph.signature_def.get(name)
    if signature is None:
        raise invalid_argument(f"No signature was found with the name: {name}")
    task.check(signature)
    if not examples:
        raise invalid_argument("Input is empty.")
    tensor = np.empty(len(examples), dtype=object)
    tensor[:] = examples
    return name, {INPUTS: tensor}
