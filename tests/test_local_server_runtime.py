"""How the local server loads and runs a model: warm-up replay, --saved_model_tags, TensorFlow's
thread flags.

The models are built here with TensorFlow: one counts its own calls in a tf.Variable, so the
first real request tells how many warm-up calls ran before the port opened; a TF1-style one is
saved under a tag other than "serve". Warm-up files are written with TF Serving's official
PredictionLog messages (tensorflow-serving-api, a test dependency), as a user's tool would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import prediction_log_pb2

from sidecar_testing.half_plus_two import build_half_plus_two
from sidecar_testing.servers import LocalServer, run_without_ports

WARMUP_RECORDS = 3


class Counting(tf.Module):
    """y = 2x, and how many times the signature has run (this call included)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = tf.Variable(0, dtype=tf.int64)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x):
        calls = self.calls.assign_add(1)
        return {"y": x * 2.0, "calls": tf.fill(tf.shape(x), calls)}


def write_warmup(version_dir: Path, records: list[prediction_log_pb2.PredictionLog]) -> None:
    extra = version_dir / "assets.extra"
    extra.mkdir()
    with tf.io.TFRecordWriter(str(extra / "tf_serving_warmup_requests")) as writer:
        for record in records:
            writer.write(record.SerializeToString())


def predict_record(value: float) -> prediction_log_pb2.PredictionLog:
    record = prediction_log_pb2.PredictionLog()
    record.predict_log.request.model_spec.name = "counting"
    record.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto([value], tf.float32))
    return record


def counting_model(base_path: Path, records: list[prediction_log_pb2.PredictionLog]) -> Path:
    module = Counting()
    tf.saved_model.save(module, str(base_path / "1"), signatures={"serving_default": module.serve})
    write_warmup(base_path / "1", records)
    return base_path


@pytest.fixture(scope="module")
def warmed(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("counting")
    return counting_model(base, [predict_record(float(i)) for i in range(WARMUP_RECORDS)])


def calls_of_first_request(server: LocalServer) -> int:
    response = requests.post(server.predict_url, json={"inputs": {"x": [1.5]}})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert outputs["y"] == [3.0]
    return outputs["calls"][0]


def test_warmup_records_run_before_the_port_opens(warmed, tmp_path) -> None:
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true path: '/metrics' }\n")
    with LocalServer(
        warmed,
        model_name="counting",
        extra_args=[
            "--num_request_iterations_for_warmup=2",
            f"--monitoring_config_file={monitoring}",
        ],
    ) as server:
        # Each record twice, all before the first request could reach the model.
        assert calls_of_first_request(server) == 2 * WARMUP_RECORDS + 1
        page = requests.get(server.base_url + "/metrics").text
        samples = {
            (sample.name, sample.labels.get("status")): sample.value
            for family in text_string_to_metric_families(page)
            for sample in family.samples
            if sample.labels.get("model_path") == str(warmed / "1")
        }
        assert samples[(":tensorflow:serving:model_warmup_records_read_total", "OK")] == 3
        assert samples[(":tensorflow:serving:model_warmup_latency_count", "OK")] == 1
        assert "Number of warmup records read: 3" in server.stderr()


def test_warmup_can_be_turned_off(warmed) -> None:
    with LocalServer(
        warmed, model_name="counting", extra_args=["--enable_model_warmup=false"]
    ) as server:
        assert calls_of_first_request(server) == 1


def test_a_warmup_record_it_cannot_replay_fails_the_load(tmp_path) -> None:
    multi = prediction_log_pb2.PredictionLog()
    multi.multi_inference_log.SetInParent()
    base = counting_model(tmp_path, [predict_record(1.0), multi])
    result = run_without_ports("--model_name=counting", f"--model_base_path={base}")
    assert result.returncode == 1
    assert (
        "1 model(s) did not become available: {name: counting version: 1} due to error: "
        "UNIMPLEMENTED: Unsupported log_type for warmup: 4"
    ) in result.stderr
    assert "Traceback" not in result.stderr


def task_record(kind: str, signature_name: str, x: float) -> prediction_log_pb2.PredictionLog:
    """A classify_log or regress_log record asking `signature_name` about one example {x}."""
    record = prediction_log_pb2.PredictionLog()
    request = getattr(record, kind).request
    request.model_spec.signature_name = signature_name
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(x)
    return record


def test_classify_and_regress_records_are_replayed_through_their_checks(tmp_path) -> None:
    """TF Serving warms classify and regress signatures too; a record naming a signature of the
    wrong kind fails the load, which shows the records really go through the Classify and
    Regress checks."""
    good = build_half_plus_two(tmp_path / "good")
    records = [
        task_record("classify_log", "classify_x_to_y", 20.0),
        task_record("regress_log", "regress_x_to_y", 80.0),
    ]
    write_warmup(good / "1", records)
    with LocalServer(good, model_name="half_plus_two") as server:
        assert "Number of warmup records read: 2" in server.stderr()
    bad = build_half_plus_two(tmp_path / "bad")
    write_warmup(bad / "1", [task_record("regress_log", "classify_x_to_y", 1.0)])
    result = run_without_ports("--model_name=half_plus_two", f"--model_base_path={bad}")
    assert result.returncode == 1
    assert "did not become available" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def custom_tagged(tmp_path_factory) -> Path:
    """A TF1 SavedModel (y = 3x) whose only MetaGraph is tagged "custom", not "serve"."""
    base = tmp_path_factory.mktemp("tagged")
    with tf.Graph().as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        y = tf.identity(x * 3.0, name="y")
        with tf.compat.v1.Session() as session:
            builder = tf.compat.v1.saved_model.Builder(str(base / "1"))
            signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
            builder.add_meta_graph_and_variables(
                session, ["custom"], signature_def_map={"serving_default": signature}
            )
            builder.save()
    return base


def test_saved_model_tags_choose_the_metagraph_and_threads_are_set(custom_tagged) -> None:
    with LocalServer(
        custom_tagged,
        model_name="tagged",
        extra_args=[
            "--saved_model_tags=custom",
            "--tensorflow_intra_op_parallelism=1",
            "--tensorflow_inter_op_parallelism=2",
        ],
    ) as server:
        response = requests.post(server.predict_url, json={"instances": [1.0, 2.0]})
        assert response.json() == {"predictions": [3.0, 6.0]}
        assert "TensorFlow threads: intra-op 1, inter-op 2" in server.stderr()


def test_the_default_serve_tag_is_not_found_in_it(custom_tagged) -> None:
    result = run_without_ports("--model_name=tagged", f"--model_base_path={custom_tagged}")
    assert result.returncode == 1
    assert "has no MetaGraph tagged 'serve' (found: custom)" in result.stderr
    assert "Traceback" not in result.stderr


def test_session_parallelism_with_both_others_is_refused() -> None:
    result = run_without_ports(
        "--model_base_path=/nonexistent",
        "--tensorflow_session_parallelism=2",
        "--tensorflow_intra_op_parallelism=1",
        "--tensorflow_inter_op_parallelism=1",
    )
    assert result.returncode == 2
    assert "You cannot configure both." in result.stderr
