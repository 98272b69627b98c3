"""A small SavedModel in the spirit of TF Serving's testdata saved_model_half_plus_two: y = x/2 + 2,
with predict, classify and regress signatures, written with TensorFlow for the tests.

TF Serving's own REST and gRPC tests run against that model (regress_x_to_y: 80 -> 42,
classify_x_to_y: 20 -> score 12), so ours can take its test cases over as they are. Its
signatures:

| signature | method | input | outputs |
|---|---|---|---|
| serving_default | predict | x: float [-1] | y |
| scalar | predict | x: float [-1] | y, count (0-d float), name (0-d string) |
| scalar_only | predict | x: float [-1] | total (0-d float) |
| echo | predict | x: float [-1] | x (the input as the server built it) |
| echo_double | predict | x: double [-1] | x |
| classify_x_to_y | classify | inputs: serialized tf.Example (x: float) | scores [-1, 1] |
| classify_x_to_tag | classify | inputs (x, tag="none") | classes [tag, other], scores [y, -y] |
| regress_x_to_y | regress | inputs (x: float) | outputs [-1, 1] |
| regress_n_to_3n | regress | inputs (n: int64) | outputs [-1]: 3n |
| regress_to_double | regress | inputs (x: float) | outputs: double (a dtype TF Serving refuses) |

TensorFlow 2 saves every signature with the predict method name; the classify and regress ones
get theirs written into saved_model.pb afterwards (TF Serving reads SignatureDefs from there).
"""

from __future__ import annotations

import os
from pathlib import Path

METHODS = {
    "classify_x_to_y": "tensorflow/serving/classify",
    "classify_x_to_tag": "tensorflow/serving/classify",
    "regress_x_to_y": "tensorflow/serving/regress",
    "regress_n_to_3n": "tensorflow/serving/regress",
    "regress_to_double": "tensorflow/serving/regress",
}


def build_half_plus_two(base_path: Path, version: int = 1) -> Path:
    """Write the model as `base_path/version/`; returns the base path (--model_base_path)."""
    import tensorflow as tf

    floats = tf.TensorSpec([None], tf.float32, name="x")
    examples = tf.TensorSpec([None], tf.string, name="inputs")
    x_feature = {"x": tf.io.FixedLenFeature([1], tf.float32)}

    def half_plus_two(x):
        return 0.5 * x + 2.0

    def parsed_x(serialized):
        return half_plus_two(tf.io.parse_example(serialized, x_feature)["x"])

    class HalfPlusTwo(tf.Module):
        @tf.function(input_signature=[floats])
        def predict(self, x):
            return {"y": half_plus_two(x)}

        @tf.function(input_signature=[floats])
        def scalar(self, x):
            return {
                "y": half_plus_two(x),
                "count": tf.cast(tf.size(x), tf.float32),
                "name": tf.constant("half plus two"),
            }

        @tf.function(input_signature=[floats])
        def scalar_only(self, x):
            return {"total": tf.reduce_sum(half_plus_two(x))}

        @tf.function(input_signature=[floats])
        def echo(self, x):
            return {"x": tf.identity(x)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float64, name="x")])
        def echo_double(self, x):
            return {"x": tf.identity(x)}

        @tf.function(input_signature=[examples])
        def classify_x_to_y(self, inputs):
            return {"scores": parsed_x(inputs)}

        @tf.function(input_signature=[examples])
        def classify_x_to_tag(self, inputs):
            features = tf.io.parse_example(
                inputs,
                {**x_feature, "tag": tf.io.FixedLenFeature([1], tf.string, default_value="none")},
            )
            y = half_plus_two(features["x"])
            other = tf.fill(tf.shape(features["tag"]), "other")
            return {
                "classes": tf.concat([features["tag"], other], axis=1),
                "scores": tf.concat([y, -y], axis=1),
            }

        @tf.function(input_signature=[examples])
        def regress_x_to_y(self, inputs):
            return {"outputs": parsed_x(inputs)}

        @tf.function(input_signature=[examples])
        def regress_n_to_3n(self, inputs):
            n = tf.io.parse_example(inputs, {"n": tf.io.FixedLenFeature([], tf.int64)})["n"]
            return {"outputs": tf.cast(n * 3, tf.float32)}

        @tf.function(input_signature=[examples])
        def regress_to_double(self, inputs):
            return {"outputs": tf.cast(parsed_x(inputs), tf.float64)}

    module = HalfPlusTwo()
    signatures = {name: getattr(module, name) for name in METHODS}
    for name in ("scalar", "scalar_only", "echo", "echo_double"):
        signatures[name] = getattr(module, name)
    signatures["serving_default"] = module.predict
    path = base_path / str(version)
    tf.saved_model.save(module, os.fspath(path), signatures=signatures)
    _set_method_names(path / "saved_model.pb")
    return base_path


def _set_method_names(pb_path: Path) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel.FromString(pb_path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        for name, method in METHODS.items():
            meta_graph.signature_def[name].method_name = method
    pb_path.write_bytes(saved_model.SerializeToString())
