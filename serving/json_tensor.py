"""JSON <-> tensors as TF Serving's REST API does it (tensorflow_serving/util/json_tensor.cc).

This is the general path: it accepts everything TF Serving accepts and rejects the rest with TF
Serving's error wording (typos included, since clients may match on them). It works on the parsed
JSON document, so it is slow for big numeric bodies; serving/fast_tensor.py handles that case.

Dtypes are named by their TensorFlow DataType enum names ("DT_UINT8"), which is what the model
metadata reports, so this module needs no TensorFlow.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pybase64

from serving.errors import StatusError, invalid_argument

# Numpy dtypes of the DataTypes a JSON value can be converted to (json_tensor.cc AddValueToTensor).
NUMPY_DTYPES = {
    "DT_FLOAT": np.float32,
    "DT_DOUBLE": np.float64,
    "DT_INT32": np.int32,
    "DT_INT16": np.int16,
    "DT_INT8": np.int8,
    "DT_UINT8": np.uint8,
    "DT_INT64": np.int64,
    "DT_UINT32": np.uint32,
    "DT_UINT64": np.uint64,
    "DT_BOOL": np.bool_,
    "DT_STRING": np.object_,
}

# rapidjson's IsInt / IsInt64 / IsUint / IsUint64 ranges, by the dtype that requires them.
_INT_RANGES = {
    "DT_INT32": (-(2**31), 2**31 - 1),
    "DT_INT16": (-(2**31), 2**31 - 1),
    "DT_INT8": (-(2**31), 2**31 - 1),
    "DT_UINT8": (-(2**31), 2**31 - 1),
    "DT_INT64": (-(2**63), 2**63 - 1),
    "DT_UINT32": (0, 2**32 - 1),
    "DT_UINT64": (0, 2**64 - 1),
}

# Any JSON number goes into a float tensor as rapidjson's GetDouble() (GetFloat() is that double
# cast to float): rounded, out of float's range to +-inf. TF Serving >= 2.5 accepts
# 1435774380 for a float (b/181409782) where it used to refuse it as a loss of precision.
_FLOAT_DTYPES = frozenset({"DT_FLOAT", "DT_DOUBLE"})
_NUMBER_TOO_BIG = "JSON Parse error: Number too big to be stored in double."

# Error messages quote the offending JSON; TF Serving quotes it whole, which for a big body makes a
# megabyte-long error. We cut it here (TF Serving has a TODO to do the same).
_MAX_QUOTED_JSON = 1000

# TensorFlow's TensorShape::MaxDimensions(): a tensor value nested deeper is a client mistake.
MAX_TENSOR_RANK = 64
_TOO_DEEP = (
    f"JSON Value nested deeper than {MAX_TENSOR_RANK} levels: a tensor has at most "
    f"{MAX_TENSOR_RANK} dimensions"
)
# The keys of a predict request body that are read; the values of any others are checked as
# JSON and skipped, however deep they nest (TF Serving ignores them too).
PREDICT_KEYS = frozenset({"signature_name", "instances", "inputs"})


class RequestFormat(enum.Enum):
    ROW = "instances"  # answered with "predictions"
    COLUMNAR = "inputs"  # answered with "outputs"


def dtype_string(dtype: str) -> str:
    """TensorFlow's DataTypeString: "DT_UINT8" -> "uint8", as used in error messages."""
    return dtype.removeprefix("DT_").lower()


def json_value_to_string(value: Any) -> str:
    """Quote a JSON value in an error message, pretty-printed like rapidjson's PrettyWriter.

    Only the quoted start is written: a 17 MB body costs no more to quote than a small one.
    """
    pieces, size = [], 0
    try:
        for piece in json.JSONEncoder(indent=4, ensure_ascii=False).iterencode(value):
            pieces.append(piece)
            size += len(piece)
            if size > _MAX_QUOTED_JSON:
                break
    except RecursionError:  # nested deeper than the encoder goes: quote what it wrote
        size = _MAX_QUOTED_JSON + 1
    text = "".join(pieces)
    if size > _MAX_QUOTED_JSON:
        return text[:_MAX_QUOTED_JSON] + "...(truncated)"
    return text


def json_type_string(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


# Python's json error wording -> rapidjson's (GetParseError_En), for the common mistakes.
_PARSE_ERRORS = {
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid \\escape": "Invalid escape character in string.",
}


def parse_json_document(
    body: bytes | bytearray, request_keys: frozenset[str] = PREDICT_KEYS
) -> dict:
    """ParseJson: the request body must be a JSON object (UTF-8, as rapidjson reads it).

    Linear in the body whatever it holds: json.loads stops at ~1000 levels of nesting, and such
    a body is read again key by key, skipping the values of keys a request doesn't use. Like
    rapidjson with kParseStopWhenDoneFlag, reading stops at the end of the root value: bytes
    after it are ignored.
    """
    if not body.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid_argument(
            f"JSON Parse error: Invalid encoding in string. at offset: {e.start}"
        ) from None
    try:
        start = _SPACE.match(text).end()
        try:
            doc = json.JSONDecoder().raw_decode(text, start)[0]
        except RecursionError:
            doc = _parse_skipping_unused(text, start, request_keys)
    except json.JSONDecodeError as e:
        message = _PARSE_ERRORS.get(e.msg, e.msg + ".")
        raise invalid_argument(f"JSON Parse error: {message} at offset: {e.pos}") from None
    except ValueError:  # an integer of more than 4300 digits (sys.get_int_max_str_digits)
        raise invalid_argument(_NUMBER_TOO_BIG) from None
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {json_value_to_string(doc)} Is not object")
    return doc


_SPACE = re.compile(r"[ \t\n\r]*")
# One JSON token after optional whitespace: open, close, comma, colon, string start, scalar.
_TOKEN = re.compile(
    r'[ \t\n\r]*(?:([\[{])|([\]}])|(,)|(:)|(")|'
    r"(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|true|false|null))"
)
_OPEN, _CLOSE, _COMMA, _COLON, _STRING, _SCALAR = range(1, 7)


def _syntax_error(message: str, pos: int) -> json.JSONDecodeError:
    return json.JSONDecodeError(message, "", pos)


def _parse_skipping_unused(
    text: str, pos: int = 0, request_keys: frozenset[str] = PREDICT_KEYS
) -> dict:
    """A body nested too deep for json.loads: its top-level object, with the values of the
    request's keys decoded (a RecursionError there is a tensor nested too deep, or a
    signature_name that is no string) and the other values checked and skipped."""
    decoder = json.JSONDecoder()
    if not text.startswith("{", pos):
        raise invalid_argument(_TOO_DEEP)  # a top-level array or value nested this deep
    doc: dict = {}
    pos = _SPACE.match(text, pos + 1).end()
    if text.startswith("}", pos):
        pos += 1
    else:
        while True:
            if not text.startswith('"', pos):
                raise _syntax_error("Expecting property name enclosed in double quotes", pos)
            key, pos = json.decoder.scanstring(text, pos + 1)
            pos = _SPACE.match(text, pos).end()
            if not text.startswith(":", pos):
                raise _syntax_error("Expecting ':' delimiter", pos)
            pos = _SPACE.match(text, pos + 1).end()
            if key in request_keys:
                try:
                    doc[key], pos = decoder.raw_decode(text, pos)
                except RecursionError:
                    if key == "signature_name":
                        raise _signature_error(doc) from None
                    raise invalid_argument(_TOO_DEEP) from None
            else:
                pos = _skip_value(text, pos)
            pos = _SPACE.match(text, pos).end()
            if text.startswith(",", pos):
                pos = _SPACE.match(text, pos + 1).end()
            elif text.startswith("}", pos):
                pos += 1
                break
            else:
                raise _syntax_error("Expecting ',' delimiter", pos)
    return doc


def _skip_value(text: str, pos: int) -> int:
    """The end of the JSON value at `pos`, checked as JSON, without recursion or building it."""
    closers = []  # the closing bracket of every open container
    expect_value, expect_key, after_value = 0, 1, 2
    state = expect_value
    first_in_container = False
    while True:
        match = _TOKEN.match(text, pos)
        if match is None:
            raise _syntax_error("Expecting value", pos)
        kind, pos = match.lastindex, match.end()
        if kind == _STRING:
            _, pos = json.decoder.scanstring(text, pos)
        if state == expect_key:
            if kind == _STRING:
                colon = _TOKEN.match(text, pos)
                if colon is None or colon.lastindex != _COLON:
                    raise _syntax_error("Expecting ':' delimiter", pos)
                pos, state, first_in_container = colon.end(), expect_value, False
                continue
            if not (first_in_container and kind == _CLOSE and match.group(2) == closers[-1]):
                raise _syntax_error("Expecting property name enclosed in double quotes", pos)
            closers.pop()
        elif state == expect_value:
            if kind == _OPEN:
                closers.append("]" if match.group(1) == "[" else "}")
                state = expect_key if match.group(1) == "{" else expect_value
                first_in_container = True
                continue
            if kind == _CLOSE and first_in_container and match.group(2) == closers[-1] == "]":
                closers.pop()
            elif kind not in (_STRING, _SCALAR):
                raise _syntax_error("Expecting value", pos)
        elif kind == _COMMA and closers:  # after a value
            state = expect_key if closers[-1] == "}" else expect_value
            first_in_container = False
            continue
        elif kind == _CLOSE and closers and match.group(2) == closers[-1]:
            closers.pop()
        else:
            raise _syntax_error("Expecting ',' delimiter", pos)
        # A value is complete.
        if not closers:
            return pos
        state, first_in_container = after_value, False


def signature_name_of(doc: dict) -> str:
    """The optional "signature_name" (empty means serving_default)."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise _signature_error(doc)
    return name


def _signature_error(doc: dict) -> StatusError:
    return invalid_argument(
        f"JSON Value: {json_value_to_string(doc)} not formatted correctly. "
        "'signature_name' key must be a string value."
    )


def _type_error(value: Any, dtype: str) -> StatusError:
    return invalid_argument(
        f"JSON Value: {json_value_to_string(value)} Type: {json_type_string(value)} "
        f"is not of expected type: {dtype_string(dtype)}"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def as_double(value: int | float) -> float:
    """A JSON number as rapidjson holds it: a double (an integer past a double's range is a
    number rapidjson refuses to parse)."""
    try:
        return float(value)
    except OverflowError:
        raise invalid_argument(_NUMBER_TOO_BIG) from None


def is_b64_object(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def decode_b64(value: Any) -> bytes:
    if not is_b64_object(value):
        raise invalid_argument(
            f"JSON Value: {json_value_to_string(value)} not formatted correctly for base64 data"
        )
    text = value["b64"]
    try:
        # absl::Base64Unescape accepts standard base64 with or without the "=" padding.
        # pybase64 (SIMD) takes 0.1 ms for a 2 MB photo where binascii takes 4 ms, a tenth of
        # the model call; with validate=True it accepts and refuses exactly what binascii's
        # strict mode does (tested).
        return pybase64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):  # ValueError: a non-ASCII character
        raise invalid_argument("Unable to base64 decode") from None


def _scalar(value: Any, dtype: str) -> Any:
    """AddValueToTensor: check one JSON leaf against the tensor's dtype."""
    if isinstance(value, dict):
        if dtype == "DT_STRING":
            return decode_b64(value)
        raise _type_error(value, dtype)
    if dtype in _FLOAT_DTYPES:
        if not _is_number(value):
            raise _type_error(value, dtype)
        return as_double(value)
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
            raise _type_error(value, dtype)
        return value
    if dtype == "DT_STRING":
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8")
    if dtype == "DT_BOOL":
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    raise StatusError(
        "UNIMPLEMENTED",
        f"Conversion of JSON Value: {json_value_to_string(value)} to type: {dtype_string(dtype)}",
    )


def dense_shape(value: Any, max_rank: int = MAX_TENSOR_RANK) -> list[int]:
    """GetDenseTensorShape: the shape read off the first element at every level."""
    shape = []
    while isinstance(value, list):
        if len(shape) == max_rank:
            raise invalid_argument(_TOO_DEEP)
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], dtype: str, out: list) -> None:
    """FillTensorProto: append the leaves of `value`, checking it is dense with `shape`."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(
                f"JSON Value: {json_value_to_string(value)} found at incorrect level: "
                f"{level + 1} in the JSON DOM. Expected at level: {rank}"
            )
        out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _to_array(values: list, shape: list[int], dtype: str) -> np.ndarray:
    """The tensor TF Serving builds from the checked leaves (ints wrap into narrow types)."""
    if dtype == "DT_STRING":
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    if dtype in _INT_RANGES:
        wide = np.uint64 if dtype == "DT_UINT64" else np.int64
        return np.array(values, dtype=wide).astype(NUMPY_DTYPES[dtype]).reshape(shape)
    if dtype in _FLOAT_DTYPES:
        with np.errstate(over="ignore"):  # a double past float's range is +-inf, as in C++
            return np.array(values, dtype=np.float64).astype(NUMPY_DTYPES[dtype]).reshape(shape)
    return np.array(values, dtype=NUMPY_DTYPES[dtype]).reshape(shape)


def value_to_tensor(value: Any, dtype: str) -> np.ndarray:
    """One JSON value (scalar, nested list or {"b64"}) as a dense tensor of `dtype`."""
    shape = dense_shape(value)
    leaves: list = []
    _fill(value, 0, shape, dtype, leaves)
    return _to_array(leaves, shape, dtype)


def _shape_string(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


class _Batch:
    """Rows of one named input collected from an "instances" list (AddInstanceItem)."""

    def __init__(self) -> None:
        self.leaves: list = []
        self.shape: list[int] | None = None
        self.size = 0

    def add(self, value: Any, dtype: str) -> None:
        shape = dense_shape(value, MAX_TENSOR_RANK - 1)  # the batch is the first dimension
        leaves: list = []
        _fill(value, 0, shape, dtype, leaves)
        if self.shape is None:
            self.shape, self.size = shape, len(leaves)
        elif self.size != len(leaves):
            raise invalid_argument(f"Expecting tensor size: {self.size} but got: {len(leaves)}")
        elif self.shape != shape:
            raise invalid_argument(
                f"Expecting shape {_shape_string(self.shape)} but got: {_shape_string(shape)}"
            )
        self.leaves.extend(leaves)


def _instances_to_tensors(instances: list, inputs: Mapping[str, str]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList: a batch from a list of rows (or of {name: row} objects)."""
    if not isinstance(instances[0], dict) and len(inputs) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )

    def is_named_row(value: Any) -> bool:
        return isinstance(value, dict) and not is_b64_object(value)

    named_rows = is_named_row(instances[0])
    batches: dict[str, _Batch] = {}
    for index, row in enumerate(instances):
        if named_rows:
            if not is_named_row(row):
                raise invalid_argument(
                    f"Expecting object but got list at item {index} of input list"
                )
            for name, value in row.items():
                try:
                    if name not in inputs:
                        raise invalid_argument(f"JSON object: does not have named input: {name}")
                    batches.setdefault(name, _Batch()).add(value, inputs[name])
                except StatusError as e:
                    raise invalid_argument(
                        f"Failed to process element: {index} key: {name} of 'instances' list. "
                        f"Error: {e}"
                    ) from None
            if set(row) != set(inputs):
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{json_value_to_string(row)} keys must be equal to: {','.join(sorted(inputs))}"
                )
        else:
            if is_named_row(row):
                raise invalid_argument(
                    f"Expecting value/list but got object at item {index} of input list"
                )
            name = next(iter(inputs))
            try:
                batches.setdefault(name, _Batch()).add(row, inputs[name])
            except StatusError as e:
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. Error: {e}"
                ) from None
    return {
        name: _to_array(batch.leaves, [len(instances), *batch.shape], inputs[name])
        for name, batch in batches.items()
    }


def _inputs_to_tensors(value: Any, inputs: Mapping[str, str]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap: one value per named input (or a bare value for a single one)."""
    if not isinstance(value, dict) or is_b64_object(value):
        if len(inputs) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        name, dtype = next(iter(inputs.items()))
        return {name: value_to_tensor(value, dtype)}
    tensors = {}
    for name, dtype in inputs.items():
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = value_to_tensor(value[name], dtype)
    return tensors


def request_tensors(
    doc: dict, inputs: Mapping[str, str]
) -> tuple[RequestFormat, dict[str, np.ndarray]]:
    """The input tensors of a predict request, from "instances" or "inputs".

    `inputs` maps each input name of the signature to its dtype.
    """
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid_argument(
            f"JSON Value: {json_value_to_string(doc)} Not formatted correctly expecting only "
            "one of 'inputs' or 'instances' keys to exist "
        )
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(
                f"JSON Value: {json_value_to_string(doc)} Expecting 'instances' to be an list/array"
            )
        if not instances:
            raise invalid_argument(
                f"JSON Value: {json_value_to_string(doc)} No values in 'instances' array"
            )
        return RequestFormat.ROW, _instances_to_tensors(instances, inputs)
    if has_inputs:
        return RequestFormat.COLUMNAR, _inputs_to_tensors(doc["inputs"], inputs)
    raise invalid_argument("Missing 'inputs' or 'instances' key")


# ---- responses -------------------------------------------------------------------------------


def format_floats(values: np.ndarray) -> list[str]:
    """WriteDecimal: shortest "%g" that round-trips (else max_digits10), whole numbers get ".0"."""
    flat = values.ravel()
    digits = 9 if flat.dtype != np.float64 else 17
    texts = [format(v, ".6g") for v in flat.tolist()]
    finite = np.isfinite(flat)
    if texts:
        back = np.array(
            [t if ok else "0" for t, ok in zip(texts, finite.tolist(), strict=True)],
            dtype=np.float64,
        ).astype(flat.dtype)
        for i in np.flatnonzero(finite & (back != flat)).tolist():
            texts[i] = format(float(flat[i]), f".{digits}g")
    for i, text in enumerate(texts):
        if not finite[i]:
            value = flat[i]
            texts[i] = "NaN" if math.isnan(value) else ("-Infinity" if value < 0 else "Infinity")
        elif "." not in text and "e" not in text:
            texts[i] = text + ".0"
    return texts


def _format_values(name: str, tensor: np.ndarray) -> list[str]:
    """Every element of an output tensor as JSON text (AddSingleValueAndAdvance)."""
    kind = tensor.dtype.kind
    if kind == "f":
        return format_floats(tensor)
    if kind in "iu":
        return [str(v) for v in tensor.ravel().tolist()]
    if kind == "b":
        return ["true" if v else "false" for v in tensor.ravel().tolist()]
    if kind in "OS":
        # Outputs named *_bytes are binary and come back base64-encoded, like TF Serving.
        if name.endswith("_bytes"):
            return [
                '{"b64": "' + base64.b64encode(v).decode("ascii") + '"}'
                for v in tensor.ravel().tolist()
            ]
        return [json.dumps(v.decode("utf-8", errors="replace")) for v in tensor.ravel().tolist()]
    raise invalid_argument(f"Failed to write JSON value for tensor type: {tensor.dtype}")


def _nested(texts: np.ndarray | str) -> str:
    """Join element texts into nested single-line JSON arrays of the tensor's shape (a scalar
    is its bare value, as AddTensorValues writes it)."""
    if isinstance(texts, str):
        return texts
    if texts.ndim == 0:
        return texts.item()
    if texts.ndim == 1:
        return "[" + ", ".join(texts.tolist()) + "]"
    return "[" + ", ".join(_nested(sub) for sub in texts) + "]"


def _element_texts(name: str, tensor: np.ndarray) -> np.ndarray:
    texts = np.empty(tensor.size, dtype=object)
    texts[:] = _format_values(name, tensor)
    return texts.reshape(tensor.shape)


def tensors_to_json(outputs: Mapping[str, np.ndarray], fmt: RequestFormat) -> bytes:
    """MakeJsonFromTensors: "predictions" (row format) or "outputs" (columnar)."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    texts = {name: _element_texts(name, tensor) for name, tensor in outputs.items()}
    several = len(outputs) > 1
    if fmt is RequestFormat.COLUMNAR:
        if not several:
            return ('{\n    "outputs": ' + _nested(next(iter(texts.values()))) + "\n}").encode()
        fields = ",\n".join(f"        {json.dumps(n)}: {_nested(t)}" for n, t in texts.items())
        return ('{\n    "outputs": {\n' + fields + "\n    }\n}").encode()

    batch_size = -1
    for name, tensor in outputs.items():
        if tensor.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch_size >= 0 and tensor.shape[0] != batch_size:
            raise invalid_argument(
                f"Tensor name: {name} has inconsistent batch size: {tensor.shape[0]} "
                f"expecting: {batch_size}"
            )
        batch_size = tensor.shape[0]
    rows = []
    for i in range(batch_size):
        if several:
            fields = ",\n".join(
                f"            {json.dumps(n)}: {_nested(t[i])}" for n, t in texts.items()
            )
            rows.append("        {\n" + fields + "\n        }")
        else:
            rows.append("        " + _nested(next(iter(texts.values()))[i]))
    return ('{\n    "predictions": [\n' + ",\n".join(rows) + "\n    ]\n}").encode()


def error_json(message: str) -> bytes:
    """MakeJsonFromStatus: every error body is {"error": message}."""
    return json.dumps({"error": message}, indent=4).encode()
