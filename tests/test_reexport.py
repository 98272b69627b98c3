"""The re-export command: the real SSD model, wrapped to take JPEG/PNG bytes, must detect what the
original detects on the same photos, and TF Serving's signature metadata must say DT_STRING.

The re-export runs once per module (about 2 s); the comparisons call both models in-process, and
one test serves the result with the local server and sends {"b64"} instances over real HTTP.
"""

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorflow as tf
from click.testing import CliRunner, Result
from PIL import Image
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2

from model_tools.reexport import main
from sidecar_testing.data import COCO_DOG, COCO_KITE, ENCODED_MODEL, IMAGE1, IMAGE2, PIXEL_MODEL
from sidecar_testing.servers import LocalServer

SOURCE = PIXEL_MODEL / "1"
SCORE_TOLERANCE = 0.03
BOX_TOLERANCE = 0.02


def run_cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def reexported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared pixel model re-exported with the command, in TF Serving's base-path layout."""
    base = tmp_path_factory.mktemp("reexport") / "ssd_jpeg"
    result = run_cli(SOURCE, base, "--version", 1)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(base / "1")
    assert "tracing and saving" in result.stderr
    return base / "1"


@pytest.fixture(scope="module")
def original():
    return tf.saved_model.load(str(SOURCE)).signatures["serving_default"]


@pytest.fixture(scope="module")
def wrapped(reexported: Path):
    return tf.saved_model.load(str(reexported)).signatures["serving_default"]


def pixels(path: Path) -> tf.Tensor:
    """A batch of one image decoded the way the client's pixel path does it (Pillow, RGB)."""
    return tf.constant(np.asarray(Image.open(path).convert("RGB"))[np.newaxis])


def encoded(*paths: Path) -> tf.Tensor:
    return tf.constant([path.read_bytes() for path in paths])


def detections(outputs: dict, row: int = 0, min_score: float = 0.0) -> list[tuple]:
    """(class id, score, box) of one image's detections scoring above min_score.

    `outputs` is a batch: the model's tensors, or TF Serving's `predictions` turned into columns.
    """
    return [
        (int(cls), float(score), box)
        for cls, score, box in zip(
            np.asarray(outputs["detection_classes"][row]),
            np.asarray(outputs["detection_scores"][row]),
            np.asarray(outputs["detection_boxes"][row]),
            strict=True,
        )
        if score > min_score
    ]


def has_match(detection: tuple, candidates: list[tuple]) -> bool:
    """Same class, score and box within tolerance (order may differ when scores tie)."""
    cls, score, box = detection
    return any(
        other_cls == cls
        and abs(other_score - score) <= SCORE_TOLERANCE
        and np.max(np.abs(other_box - box)) <= BOX_TOLERANCE
        for other_cls, other_score, other_box in candidates
    )


def signature_def(model_dir: Path, name: str = "serving_default"):
    """The SignatureDef as TF Serving reads it from saved_model.pb (what saved_model_cli shows)."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((model_dir / "saved_model.pb").read_bytes())
    return saved_model.meta_graphs[0].signature_def[name]


def test_loaded_signature_takes_encoded_strings_and_keeps_outputs(original, wrapped) -> None:
    assert wrapped.structured_input_signature == (
        (),
        {"inputs": tf.TensorSpec([None], tf.string, name="inputs")},
    )
    assert wrapped.structured_outputs == original.structured_outputs


def test_signature_def_on_disk_is_dt_string(reexported: Path) -> None:
    sig = signature_def(reexported)
    source_sig = signature_def(SOURCE)
    assert list(sig.inputs) == ["inputs"]
    assert sig.inputs["inputs"].dtype == types_pb2.DT_STRING
    assert [dim.size for dim in sig.inputs["inputs"].tensor_shape.dim] == [-1]
    assert sig.method_name == "tensorflow/serving/predict"
    assert {name: out.dtype for name, out in sig.outputs.items()} == {
        name: out.dtype for name, out in source_sig.outputs.items()
    }
    # Written through a hidden staging directory: only the version is left in the base path.
    assert [p.name for p in reexported.parent.iterdir()] == ["1"]


@pytest.mark.parametrize(("image", "expected_class"), [(IMAGE1, COCO_DOG), (IMAGE2, COCO_KITE)])
def test_same_detections_as_the_original(original, wrapped, image: Path, expected_class) -> None:
    from_pixels = original(inputs=pixels(image))
    from_bytes = wrapped(inputs=encoded(image))

    confident = detections(from_pixels, min_score=0.5)
    assert expected_class in {cls for cls, _, _ in confident}
    assert all(has_match(d, detections(from_bytes)) for d in confident)
    assert all(has_match(d, detections(from_pixels)) for d in detections(from_bytes, min_score=0.5))


def test_png_bytes_give_the_pixel_results(original, wrapped) -> None:
    """PNG is lossless, so the decoded pixels and hence every output must be the original's."""
    buffer = io.BytesIO()
    Image.open(IMAGE1).convert("RGB").save(buffer, format="PNG")
    from_png = wrapped(inputs=tf.constant([buffer.getvalue()]))
    from_pixels = original(inputs=pixels(IMAGE1))
    for name, value in from_pixels.items():
        np.testing.assert_allclose(from_png[name].numpy(), value.numpy(), atol=1e-6)


def test_one_batch_of_two_different_sizes(wrapped) -> None:
    assert Image.open(IMAGE1).size != Image.open(IMAGE2).size
    batch = wrapped(inputs=encoded(IMAGE1, IMAGE2))
    assert batch["detection_boxes"].shape == (2, 100, 4)
    for row, image in enumerate([IMAGE1, IMAGE2]):
        alone = wrapped(inputs=encoded(image))
        for name, value in alone.items():
            np.testing.assert_allclose(batch[name][row].numpy(), value[0].numpy(), atol=1e-5)


def test_bytes_that_are_no_image_are_an_invalid_argument(wrapped) -> None:
    """TF Serving answers InvalidArgument with HTTP 400 and this message."""
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        wrapped(inputs=tf.constant([b"this is not an image"]))


def b64(path: Path) -> dict:
    return {"b64": base64.b64encode(path.read_bytes()).decode("ascii")}


def test_served_over_rest_with_b64_instances(reexported: Path) -> None:
    """The re-exported base path behind the local TF Serving stand-in, over real HTTP."""
    with LocalServer(reexported.parent, model_name="ssd_jpeg") as server:
        response = requests.post(
            server.predict_url, json={"instances": [b64(IMAGE1), b64(IMAGE2)]}, timeout=60
        )
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        columns = {name: [p[name] for p in predictions] for name in predictions[0]}
        dogs = [score for cls, score, _ in detections(columns, 0, 0.5) if cls == COCO_DOG]
        assert len(dogs) == 2
        assert all(0.65 <= score <= 0.8 for score in dogs)
        assert COCO_KITE in {cls for cls, _, _ in detections(columns, 1, 0.5)}

        not_an_image = {"b64": base64.b64encode(b"not an image").decode("ascii")}
        response = requests.post(server.predict_url, json={"instances": [not_an_image]}, timeout=60)
        assert response.status_code == 400
        assert response.json()["error"]


def test_overwrite_replaces_and_check_compares(tmp_path: Path) -> None:
    target = tmp_path / "7"
    target.mkdir()
    (target / "saved_model.pb").write_text("an older model")

    result = run_cli(SOURCE, tmp_path, "--version", 7, "--overwrite", "--check", IMAGE2)

    assert result.exit_code == 0, result.output
    assert signature_def(target).inputs["inputs"].dtype == types_pb2.DT_STRING
    check = next(line for line in result.stderr.splitlines() if line.startswith("check image2"))
    difference = float(check.split("largest output difference ")[1].split(";")[0])
    assert difference <= SCORE_TOLERANCE
    assert "original with pixels" in check
    assert "re-exported with bytes" in check


@pytest.fixture(scope="module")
def float_input_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real SavedModel whose signature takes float images: not something re-export can wrap."""
    module = tf.Module()
    module.serve = tf.function(
        lambda images: {"mean": tf.reduce_mean(images, axis=[1, 2, 3])},
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")],
    )
    path = tmp_path_factory.mktemp("float_model") / "1"
    tf.saved_model.save(module, str(path), signatures=module.serve.get_concrete_function())
    return path


@pytest.mark.parametrize(
    ("source", "options", "message"),
    [
        (SOURCE, ["--signature", "detect"], "has no signature 'detect' (it has: serving_default)"),
        (ENCODED_MODEL / "1", [], "already takes encoded images"),
        (PIXEL_MODEL, [], f"base path; pass one of its versions, e.g. {SOURCE}"),
        (IMAGE1.parent, [], "has no saved_model.pb"),
        ("float_input_model", [], "'images' is float32 (-1, -1, -1, 3); re-export needs uint8"),
    ],
)
def test_unusable_source_is_a_clear_error(
    request: pytest.FixtureRequest, tmp_path: Path, source, options, message: str
) -> None:
    if source == "float_input_model":
        source = request.getfixturevalue(source)
    result = run_cli(source, tmp_path / "out", *options)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_existing_destination_is_kept_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_text("someone's model")
    result = run_cli(SOURCE, tmp_path, "--version", 1)
    assert result.exit_code == 1
    assert "already exists: pass --overwrite" in result.stderr
    assert (tmp_path / "1" / "saved_model.pb").read_text() == "someone's model"


def test_overwrite_never_deletes_a_directory_that_is_no_saved_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("precious")
    result = run_cli(SOURCE, tmp_path, "--overwrite")
    assert result.exit_code == 1
    assert "is not a SavedModel directory: not replacing it" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_missing_source_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "nowhere", tmp_path / "out")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
