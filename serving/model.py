"""A SavedModel served the way tensorflow_model_server serves one: latest numeric version, its
signatures, its status and metadata documents.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf import json_format, text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving.errors import HTTP_STATUS, StatusError, invalid_argument
from tfserving.conventions import (
    DEFAULT_SIGNATURE,
    SAVED_MODEL_FILES,
    SERVE_TAGS,
    ModelDirError,
    latest_version,
    saved_model_file,
)


def _serving_meta_graph(
    saved_model_dir: Path, tags: Sequence[str] = SERVE_TAGS
) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef with exactly `tags` (as TensorFlow's loader matches them), whose
    SignatureDefs TF Serving reports as metadata."""
    pb_path = saved_model_file(saved_model_dir)
    if pb_path is None:
        raise ModelDirError(f"{saved_model_dir} has no {' or '.join(SAVED_MODEL_FILES)}")
    saved_model = saved_model_pb2.SavedModel()
    if pb_path.suffix == ".pbtxt":  # the text form, which TF Serving loads as well
        text_format.Parse(pb_path.read_text(), saved_model)
    else:
        saved_model.ParseFromString(pb_path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(tags):
            return meta_graph
    found = [",".join(graph.meta_info_def.tags) for graph in saved_model.meta_graphs]
    raise ModelDirError(
        f"{pb_path} has no MetaGraph tagged {','.join(tags)!r} (found: {'; '.join(found)})"
    )


def _proto_json(message) -> dict:
    """A proto as TF Serving prints it: proto field names, defaults printed, int64 as strings."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


@dataclass
class ServedModel:
    """One loaded version of a SavedModel and what the REST API needs from it."""

    name: str
    version: int
    path: Path
    meta_graph: meta_graph_pb2.MetaGraphDef
    functions: Mapping  # signature name -> concrete function
    loaded: object  # the loaded SavedModel: its variables must outlive the functions

    @classmethod
    def load(cls, name: str, base_path: Path) -> ServedModel:
        """The latest version under a model base path."""
        return cls.load_version(name, *latest_version(base_path))

    @classmethod
    def load_version(
        cls, name: str, version: int, path: Path, tags: Sequence[str] = SERVE_TAGS
    ) -> ServedModel:
        meta_graph = _serving_meta_graph(path, tags)
        loaded = tf.saved_model.load(os.fspath(path), tags=list(tags))
        return cls(name, version, path, meta_graph, dict(loaded.signatures), loaded)

    def input_dtypes(self, signature_name: str) -> dict[str, str]:
        """Input name -> DataType name ("DT_UINT8") of a signature (GetInfoMap)."""
        name = signature_name or DEFAULT_SIGNATURE
        signature = self.meta_graph.signature_def.get(name)
        if signature is None:
            raise invalid_argument(f'Serving signature name: "{name}" not found in signature def')
        return {
            key: types_pb2.DataType.Name(info.dtype)
            for key, info in sorted(signature.inputs.items())
        }

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call the signature; a tensor the graph can't take (wrong shape/rank) is a 400."""
        name = signature_name or DEFAULT_SIGNATURE
        function = self.functions.get(name)
        if function is None:
            raise invalid_argument(f'Serving signature name: "{name}" is not callable')
        try:
            tensors = {key: tf.constant(value) for key, value in inputs.items()}
            outputs = function(**tensors)
        except tf.errors.OpError as e:
            # The graph's own error, with its canonical code, as TF Serving passes it on
            # (a bad image is INVALID_ARGUMENT: 400; a corrupt stream DATA_LOSS: 500).
            raise StatusError(error_code_of(e), _op_message(e)) from None
        except (TypeError, ValueError) as e:  # the signature refused the tensor (rank, dtype)
            raise invalid_argument(first_line(str(e))) from None
        return {key: _to_array(value) for key, value in sorted(outputs.items())}

    def metadata_json(self) -> dict:
        """GetModelMetadataResponse: model_spec + a SignatureDefMap (hence signature_def twice)."""
        return {
            "model_spec": {"name": self.name, "signature_name": "", "version": str(self.version)},
            "metadata": {
                "signature_def": {
                    "signature_def": {
                        key: _proto_json(signature)
                        for key, signature in self.meta_graph.signature_def.items()
                    }
                }
            },
        }


_ERROR_CODES = {getattr(tf.errors, name): name for name in HTTP_STATUS}


def _to_array(tensor: tf.Tensor) -> np.ndarray:
    """An output as an array, scalars too: .numpy() gives a 0-d string as bare bytes (and a
    bytes array via np.asarray would drop trailing NULs), which the JSON writer can't shape."""
    value = tensor.numpy()
    if isinstance(value, bytes):
        array = np.empty((), dtype=object)
        array[()] = value
        return array
    return np.asarray(value)


def _op_message(error: tf.errors.OpError) -> str:
    """The kernel's message without the Python-side framing TensorFlow adds around it."""
    message = error.message.split("<stack traces unavailable>\n", 1)[-1]
    return re.sub(r"\s*\[Op:[^\]]*\]$", "", message.removeprefix("Graph execution error:")).strip()


def error_code_of(error: Exception) -> str:
    """The canonical code TF Serving would give an error of loading or running a model."""
    if isinstance(error, StatusError):
        return error.code
    if isinstance(error, tf.errors.OpError):
        return _ERROR_CODES.get(error.error_code, "UNKNOWN")
    if isinstance(error, ModelDirError):
        return "NOT_FOUND"
    return "UNKNOWN"


def first_line(message: str) -> str:
    """TensorFlow's Python errors run to many lines of call-site detail; the first says what."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[0] if lines else message
