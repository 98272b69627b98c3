"""The model's signature, from TF Serving's `GET .../metadata` answer.

The client picks the payload encoding from the input's dtype, so the signature is parsed
into small typed objects once instead of digging through nested dicts at every request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tfserving.errors import TFServingError, UnsupportedSignature

DEFAULT_SIGNATURE = "serving_default"


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

    def signature(self, name: str = DEFAULT_SIGNATURE) -> Signature:
        if name not in self.signatures:
            known = ", ".join(sorted(self.signatures)) or "none"
            raise UnsupportedSignature(
                f"model {self.model_name!r} has no signature {name!r} (it has: {known}); "
                "pick one with --signature_name"
            )
        return self.signatures[name]


def parse_metadata(body: dict[str, Any]) -> ModelMetadata:
    """Read TF Serving's metadata JSON (model_spec + metadata.signature_def.signature_def)."""
    try:
        spec = body["model_spec"]
        defs = body["metadata"]["signature_def"]["signature_def"]
        signatures = {
            name: Signature(
                name=name,
                method=definition.get("method_name", ""),
                inputs=_tensors(definition.get("inputs", {})),
                outputs=_tensors(definition.get("outputs", {})),
            )
            for name, definition in defs.items()
            if not name.startswith("__")  # e.g. __saved_model_init_op, not callable
        }
        return ModelMetadata(spec["name"], str(spec.get("version", "")), signatures)
    except (KeyError, TypeError, AttributeError) as exc:
        raise TFServingError(f"unexpected model metadata from the server (missing {exc})") from exc


def _tensors(infos: dict[str, Any]) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(name, info.get("dtype", "DT_INVALID"), _shape(info.get("tensor_shape", {})))
        for name, info in sorted(infos.items())
    )


def _shape(proto: dict[str, Any]) -> tuple[int, ...] | None:
    if proto.get("unknown_rank"):
        return None
    return tuple(int(dim.get("size", -1)) for dim in proto.get("dim", []))
