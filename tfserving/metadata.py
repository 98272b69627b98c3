"""The model's signature, from TF Serving's `GET .../metadata` answer.

The client picks the payload encoding from the input's dtype, so the signature is parsed
into small typed objects once instead of digging through nested dicts at every request.
Every field read is checked on the way, since a proxy, another service or a bug can send
anything: a missing or mistyped one is a MalformedAnswer that names it, not a KeyError or a
ValueError traceback.
"""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass
from typing import Any

from tfserving.conventions import DEFAULT_SIGNATURE
from tfserving.errors import SignatureNotFound, TFServingError, UnsupportedSignature

_REQUIRED = object()
_INTEGER = re.compile(r"-?[0-9]+")
_KIND_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "true or false",
    str | int: "a string or an integer",
}


class MalformedAnswer(TFServingError):
    """An answer that is not what TF Serving sends: a field is missing or mistyped."""

    def __init__(self, what: str, problem: str) -> None:
        super().__init__(
            f"unexpected {what} from the server: {problem}; is the URL TF Serving's REST API?"
        )


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # as TF Serving spells it: DT_UINT8, DT_STRING, DT_FLOAT...
    shape: tuple[int, ...] | None  # -1 for an unknown dimension; None for unknown rank

    def describe(self) -> str:
        shape = "unknown rank" if self.shape is None else f"({', '.join(map(str, self.shape))})"
        return f"{self.name}: {self.dtype} {shape}"


@dataclass(frozen=True)
class Signature:
    name: str
    method: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def image_input(self) -> TensorSpec:
        """The one input an image goes to; detection exports have exactly one."""
        if len(self.inputs) != 1:
            names = ", ".join(spec.name for spec in self.inputs)
            raise UnsupportedSignature(
                f"signature {self.name!r} has {len(self.inputs)} inputs ({names}); "
                "this client sends one image to a single-input signature"
            )
        return self.inputs[0]


@dataclass(frozen=True)
class ModelMetadata:
    model_name: str
    version: str
    signatures: dict[str, Signature]

    def signature(self, name: str | None = None) -> Signature:
        """The signature called `name`; without one, the one TF Serving calls when a request
        names none (`serving_default`), else the model's only signature (TF Hub exports have
        just `default`). SignatureNotFound lists the signatures when neither applies."""
        known = ", ".join(sorted(self.signatures)) or "none"
        if name is None:
            if DEFAULT_SIGNATURE in self.signatures:
                return self.signatures[DEFAULT_SIGNATURE]
            if len(self.signatures) == 1:
                return next(iter(self.signatures.values()))
            raise SignatureNotFound(
                f"model {self.model_name!r} has no signature {DEFAULT_SIGNATURE!r} and "
                f"several others (it has: {known})"
            )
        if name not in self.signatures:
            raise SignatureNotFound(
                f"model {self.model_name!r} has no signature {name!r} (it has: {known})"
            )
        return self.signatures[name]


def parse_metadata(body: dict[str, Any]) -> ModelMetadata:
    """Read TF Serving's metadata JSON (model_spec + metadata.signature_def.signature_def).
    Raises MalformedAnswer, naming the field, when a field read here is missing or mistyped."""
    spec = field(body, "model_spec", dict, "")
    version = field(spec, "version", str | int, "model_spec", "")
    defs = field(body, "metadata", dict, "")
    defs = field(defs, "signature_def", dict, "metadata")
    defs = field(defs, "signature_def", dict, "metadata.signature_def")
    signatures = {
        name: _signature(name, definition, f"signature_def[{name!r}]")
        for name, definition in defs.items()
        if not name.startswith("__")  # e.g. __saved_model_init_op, not callable
    }
    return ModelMetadata(field(spec, "name", str, "model_spec"), str(version), signatures)


def field(
    container: Any,
    key: str,
    kind: Any,
    where: str,
    default: Any = _REQUIRED,
    what: str = "model metadata",
) -> Any:
    """container[key], checked to be a `kind` (bool is not taken for a number). `where` is the
    container's path in the answer, for the message ("" for the answer itself); `what` names
    the answer. A missing key is `default`, or a MalformedAnswer when there is none."""
    if not isinstance(container, dict):
        raise MalformedAnswer(
            what, f"{where or 'the answer'} is {reprlib.repr(container)}, not an object"
        )
    path = f"{where}.{key}" if where else key
    if key not in container:
        if default is _REQUIRED:
            raise MalformedAnswer(what, f"{path} is missing")
        return default
    value = container[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        expected = _KIND_NAMES.get(kind, kind)
        raise MalformedAnswer(what, f"{path} is {reprlib.repr(value)}, not {expected}")
    return value


def _signature(name: str, definition: Any, where: str) -> Signature:
    return Signature(
        name=name,
        method=field(definition, "method_name", str, where, ""),
        inputs=_tensors(field(definition, "inputs", dict, where, {}), f"{where}.inputs"),
        outputs=_tensors(field(definition, "outputs", dict, where, {}), f"{where}.outputs"),
    )


def _tensors(infos: dict[str, Any], where: str) -> tuple[TensorSpec, ...]:
    tensors = []
    for name, info in sorted(infos.items()):
        here = f"{where}[{name!r}]"
        dtype = field(info, "dtype", str, here, "DT_INVALID")
        shape = _shape(field(info, "tensor_shape", dict, here, {}), f"{here}.tensor_shape")
        tensors.append(TensorSpec(name, dtype, shape))
    return tuple(tensors)


def _shape(proto: dict[str, Any], where: str) -> tuple[int, ...] | None:
    if field(proto, "unknown_rank", bool, where, False):
        return None
    dims = field(proto, "dim", list, where, [])
    return tuple(_size(dim, f"{where}.dim[{i}]") for i, dim in enumerate(dims))


def _size(dim: Any, where: str) -> int:
    """A dimension: an int64, which proto3 JSON writes as a string ("-1"); -1 is unknown."""
    size = field(dim, "size", str | int, where, -1)
    if (isinstance(size, str) and not _INTEGER.fullmatch(size)) or int(size) < -1:
        raise MalformedAnswer(
            "model metadata", f"{where}.size is {reprlib.repr(size)}, not a dimension (-1 or more)"
        )
    return int(size)
