"""numpy arrays as TensorFlow's TensorProto (tensorflow/core/framework/tensor.proto) and back.

Without TensorFlow: the client has none, and the local server's gRPC port uses the same codec on
the same messages (`tfserving.protos`), so what one writes the other reads by construction, and
tests hold both against `tf.make_tensor_proto` / `tf.make_ndarray`.

A TensorProto carries its values either as `tensor_content` (the raw little-endian bytes: what
this project sends, no per-value encoding) or in the repeated field of its dtype (`float_val`,
`int_val`...: what TF Serving answers with, Tensor::AsProtoField, and what clients written for
it read). Strings have no raw form: they always go one by one in `string_val`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tfserving.errors import TFServingError

# The dtypes a numpy array has, as DataType names; tensor_content is these bytes, little-endian.
NUMPY_DATATYPES = {
    np.dtype(np.float32): "DT_FLOAT",
    np.dtype(np.float64): "DT_DOUBLE",
    np.dtype(np.int32): "DT_INT32",
    np.dtype(np.uint8): "DT_UINT8",
    np.dtype(np.int16): "DT_INT16",
    np.dtype(np.int8): "DT_INT8",
    np.dtype(np.int64): "DT_INT64",
    np.dtype(np.bool_): "DT_BOOL",
    np.dtype(np.uint16): "DT_UINT16",
    np.dtype(np.float16): "DT_HALF",
    np.dtype(np.uint32): "DT_UINT32",
    np.dtype(np.uint64): "DT_UINT64",
    np.dtype(np.complex64): "DT_COMPLEX64",
    np.dtype(np.complex128): "DT_COMPLEX128",
}
DATATYPE_NUMPY = {name: dtype for dtype, name in NUMPY_DATATYPES.items()}
# The repeated field each dtype's values go in (Tensor::AsProtoField).
TYPED_FIELDS = {
    "DT_FLOAT": "float_val",
    "DT_DOUBLE": "double_val",
    "DT_INT32": "int_val",
    "DT_UINT8": "int_val",
    "DT_INT16": "int_val",
    "DT_INT8": "int_val",
    "DT_UINT16": "int_val",
    "DT_INT64": "int64_val",
    "DT_BOOL": "bool_val",
    "DT_HALF": "half_val",  # the float16's 16 bits
    "DT_UINT32": "uint32_val",
    "DT_UINT64": "uint64_val",
    "DT_COMPLEX64": "scomplex_val",  # real, imaginary pairs
    "DT_COMPLEX128": "dcomplex_val",
}


class TensorError(TFServingError):
    """A TensorProto whose values don't fit its shape or dtype, or an array that has no
    TensorProto form."""


def encode_tensor(
    value: np.ndarray | Sequence[bytes | str], proto: Any, typed: bool = False
) -> None:
    """Fill `proto` (a TensorProto) with `value`: numbers as tensor_content, or with `typed` in
    the dtype's repeated field as TF Serving answers; a list of bytes is a DT_STRING vector."""
    from tfserving.protos.types_pb2 import DataType

    if not isinstance(value, np.ndarray):
        array = np.empty(len(value), dtype=object)
        array[:] = list(value)  # kept as bytes: np.asarray would make fixed-width strings
        value = array
    for size in value.shape:
        proto.tensor_shape.dim.add(size=size)
    if value.dtype.kind in "OSU":
        proto.dtype = DataType.Value("DT_STRING")
        proto.string_val.extend(_as_bytes(item) for item in value.ravel().tolist())
        return
    dtype = NUMPY_DATATYPES.get(value.dtype.newbyteorder("="))
    if dtype is None:
        raise TensorError(f"a {value.dtype} array has no TensorProto dtype")
    proto.dtype = DataType.Value(dtype)
    if not typed:
        proto.tensor_content = np.ascontiguousarray(value, value.dtype.newbyteorder("<")).tobytes()
        return
    native = value.astype(value.dtype.newbyteorder("="), copy=False).ravel()
    if dtype == "DT_HALF":
        native = native.view(np.uint16)  # half_val holds the float16's 16 bits
    elif native.dtype.kind == "c":
        native = native.view(native.real.dtype)  # (real, imaginary) pairs
    getattr(proto, TYPED_FIELDS[dtype]).extend(native.tolist())


def decode_tensor(name: str, proto: Any) -> np.ndarray:
    """A TensorProto as a numpy array, from tensor_content or from its dtype's typed field.

    As TensorFlow reads a tensor: fewer typed values than the shape holds are padded with the
    last one (a single value fills the tensor), none at all with zeros; more is an error.
    """
    from tfserving.protos.types_pb2 import DataType

    known = proto.dtype in DataType.values()
    dtype_name = DataType.Name(proto.dtype) if known else str(proto.dtype)
    if proto.tensor_shape.unknown_rank:
        raise TensorError(f"tensor {name!r} has no shape")
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise TensorError(f"tensor {name!r} has a negative dimension: {list(shape)}")
    size = math.prod(shape)
    if dtype_name == "DT_STRING":
        values = np.empty(len(proto.string_val), dtype=object)
        values[:] = list(proto.string_val)
    elif dtype_name not in DATATYPE_NUMPY:
        raise TensorError(f"tensor {name!r} is {dtype_name}, which has no numpy dtype")
    elif proto.tensor_content:
        numpy_dtype = DATATYPE_NUMPY[dtype_name]
        if len(proto.tensor_content) != size * numpy_dtype.itemsize:
            raise TensorError(
                f"tensor {name!r} has {len(proto.tensor_content)} bytes of content for "
                f"{size} {dtype_name} values (shape {list(shape)})"
            )
        values = np.frombuffer(proto.tensor_content, numpy_dtype.newbyteorder("<"))
        return values.astype(numpy_dtype).reshape(shape)
    else:
        values = _typed_values(dtype_name, proto)
    return _fill(name, values, shape, size)


def _typed_values(dtype_name: str, proto: Any) -> np.ndarray:
    values = getattr(proto, TYPED_FIELDS[dtype_name])
    numpy_dtype = DATATYPE_NUMPY[dtype_name]
    if dtype_name == "DT_HALF":
        return np.array(values, np.uint16).view(np.float16)
    if numpy_dtype.kind == "c":
        pairs = np.array(values, np.float32 if dtype_name == "DT_COMPLEX64" else np.float64)
        return pairs.view(numpy_dtype)
    # int_val carries narrow ints as int32: wrap them into their type as TensorFlow does.
    wide = np.uint64 if dtype_name == "DT_UINT64" else np.int64
    return np.array(values, wide if numpy_dtype.kind in "iu" else numpy_dtype).astype(numpy_dtype)


def _fill(name: str, values: np.ndarray, shape: tuple[int, ...], size: int) -> np.ndarray:
    if values.size > size:
        raise TensorError(f"tensor {name!r} has {values.size} values for shape {list(shape)}")
    if values.size < size:
        pad = values[-1] if values.size else (b"" if values.dtype == object else 0)
        values = np.concatenate([values, np.full(size - values.size, pad, values.dtype)])
    return values.reshape(shape)


def _as_bytes(item: Any) -> bytes:
    return item.encode("utf-8") if isinstance(item, str) else bytes(item)
