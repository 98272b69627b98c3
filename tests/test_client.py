"""client.py end to end: the seed's command and the subcommands against the local TF Serving
stand-in serving the real SSD models, with the pictures checked pixel by pixel."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image, ImageOps

from object_detection.label_map import load_label_map
from object_detection.pipeline import detect
from object_detection.visualize import font_size, line_width
from sidecar_testing.cli import run, seed_args
from sidecar_testing.data import (
    ENCODED_MODEL,
    IMAGE1,
    PIXEL_MODEL,
    ROOT,
)
from sidecar_testing.reference import assert_two_dogs
from tfserving.client import TFServingClient
from tfserving.spec import ServerSpec

# Scores are compared with the same model called in-process (sidecar_testing.reference): they
# differ from CPU to CPU, so only classes and boxes are compared with fixed values.
MODELS = [("pixel_server", "pixels", PIXEL_MODEL), ("encoded_server", "b64", ENCODED_MODEL)]


def assert_drawn_only_on_boxes(original, annotated_path, detections):
    """Strong changes along every box outline; elsewhere only JPEG re-encoding noise."""
    before = np.asarray(original.convert("RGB"), np.int16)
    after = np.asarray(Image.open(annotated_path), np.int16)
    assert Image.open(annotated_path).format == "JPEG"
    assert after.shape == before.shape
    diff = np.abs(after - before).max(axis=2)
    height, width = diff.shape
    stroke, text = line_width(width, height), font_size(width, height)
    drawn = np.zeros(diff.shape, bool)
    margin = 3
    for detection in detections:
        ymin, xmin, ymax, xmax = detection["box_pixels"]
        edges = [
            diff[ymin + 1, xmin + stroke : xmax - stroke],
            diff[ymax - 2, xmin + stroke : xmax - stroke],
            diff[ymin + stroke : ymax - stroke, xmin + 1],
            diff[ymin + stroke : ymax - stroke, xmax - 2],
        ]
        assert min(edge.mean() for edge in edges) > 60, detection
        outline = np.zeros(diff.shape, bool)
        outline[max(0, ymin - margin) : ymax + margin, max(0, xmin - margin) : xmax + margin] = True
        outline[
            ymin + stroke + margin : ymax - stroke - margin,
            xmin + stroke + margin : xmax - stroke - margin,
        ] = False
        outline[
            max(0, ymin - 2 * text) : ymin + 2 * text, max(0, xmin - margin) : xmin + 12 * text
        ] = True
        drawn |= outline
    assert (~drawn).mean() > 0.5  # most of the picture is away from the boxes...
    assert diff[~drawn].mean() < 1.5  # ...and is left as it was, up to JPEG noise
    assert diff[~drawn].max() < 40


@pytest.mark.parametrize(("server_fixture", "encoding", "model_dir"), MODELS)
def test_seed_command_line(request, tmp_path, server_fixture, encoding, model_dir, model_reference):
    server = request.getfixturevalue(server_fixture)
    output_json = tmp_path / "out_image1.json"
    url = f"http://localhost:{server.port}/v1/models/{server.model_name}:predict"
    command = [sys.executable, "client.py", *map(str, seed_args(url, output_json))]
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr

    result = json.loads(output_json.read_text())
    assert_two_dogs(result)
    model_reference.assert_matches(result["detections"], model_dir, IMAGE1)
    assert result["model"] == {
        "name": server.model_name,
        "version": "1",
        "signature_name": "serving_default",
    }
    assert result["request"]["encoding"] == encoding  # chosen from the model's signature
    assert result["request"]["file_sent_as_is"] == (encoding == "b64")
    assert set(result["timing_ms"]) == {"load", "encode", "request", "postprocess", "total"}
    assert len(result["raw_response"]["predictions"][0]["detection_scores"]) == 100
    assert all(d["score"] >= 0.5 for d in result["detections"])

    picture = tmp_path / "out_image1_annotated.jpg"
    assert f"annotated image: {picture}" in process.stdout
    assert_drawn_only_on_boxes(Image.open(IMAGE1), picture, result["detections"])


@pytest.mark.parametrize(("server_fixture", "encoding", "model_dir"), MODELS)
def test_exif_rotated_photo_gets_its_boxes_on_the_displayed_image(
    request, tmp_path, server_fixture, encoding, model_dir, model_reference
):
    server = request.getfixturevalue(server_fixture)
    # Scores and boxes move a little (the photo is re-encoded here), far less than a rotation.
    # A camera that stores the photo sideways and tags it "rotate 90° clockwise to display".
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "rotated.jpg"
    Image.open(IMAGE1).transpose(Image.Transpose.ROTATE_90).save(rotated, quality=95, exif=exif)
    assert Image.open(rotated).size == (636, 1024)

    output_json = tmp_path / "rotated.json"
    result = run(
        "--server_url", server.predict_url, "--image_path", rotated,
        "--output_json", output_json, "--save_output_image", "true",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    detections = json.loads(output_json.read_text())
    assert (detections["image"]["width"], detections["image"]["height"]) == (1024, 636)
    assert detections["request"]["encoding"] == encoding
    assert detections["request"]["file_sent_as_is"] is False  # b64: re-encoded upright
    assert_two_dogs(detections, tolerance=0.03)
    # What the model says of the upright picture the client sent, to the JSON's precision.
    model_reference.assert_matches(detections["detections"], model_dir, rotated)
    displayed = ImageOps.exif_transpose(Image.open(rotated))
    picture = tmp_path / "rotated_annotated.jpg"
    assert f"annotated image: {picture}" in result.stdout
    assert_drawn_only_on_boxes(displayed, picture, detections["detections"])


def test_save_output_image_false_means_false(pixel_server, tmp_path):
    # The seed's `type=bool` turned the string "False" into True.
    output_json = tmp_path / "out.json"
    result = run(
        "--server_url", pixel_server.predict_url, "--image_path", IMAGE1,
        "--output_json", output_json, "--save_output_image", "False",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.json"]


def test_json_on_stdout_threshold_limit_and_no_raw(pixel_server):
    result = run(
        "predict", "--host", "127.0.0.1", "--port", pixel_server.port,
        "--model_name", pixel_server.model_name, "--model_version", "1",
        "--image_path", IMAGE1, "--min_score", "0.3", "--max_boxes", "3", "--no-raw",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)  # the summary went to stderr
    scores = [d["score"] for d in answer["detections"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and min(scores) >= 0.3
    assert "raw_response" not in answer
    assert "3 detections (score >= 0.3)" in result.stderr


def test_class_missing_from_the_label_map_is_named_by_id(pixel_server, tmp_path):
    (tmp_path / "people.pbtxt").write_text('item { id: 1 display_name: "human" }')
    result = run(
        "--server_url", pixel_server.predict_url, "--image_path", IMAGE1,
        "--label_map", tmp_path / "people.pbtxt",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    labels = [d["label"] for d in json.loads(result.stdout)["detections"]]
    assert labels == ["id 18", "id 18", "human", "human"]


def test_status(pixel_server):
    result = run("status", "--server_url", pixel_server.predict_url)
    assert result.exit_code == 0, result.output
    assert result.output == f"{pixel_server.model_name} version 1: AVAILABLE\n"

    result = run("status", "--server_url", pixel_server.predict_url, "--wait", "5")
    assert result.exit_code == 0

    result = run("status", "--server_url", pixel_server.predict_url, "--model_version", "7")
    assert result.exit_code == 1
    assert "HTTP 404" in result.output and "version 7" in result.output.lower()


def test_metadata(encoded_server):
    result = run("metadata", "--server_url", encoded_server.predict_url)
    assert result.exit_code == 0, result.output
    assert f"model {encoded_server.model_name} version 1" in result.output
    assert "inputs: DT_STRING (-1)" in result.output
    assert "detection_boxes: DT_FLOAT (-1, 100, 4)" in result.output
    assert "predict sends: the image file's bytes as {\"b64\": ...} to 'inputs'" in result.output
    assert "predict reads: detection_boxes and detection_scores with a batch" in result.output
    assert "predict without --signature_name calls 'serving_default'" in result.output

    result = run("metadata", "--json", "--port", encoded_server.port, "--host", "127.0.0.1",
                 "--model_name", encoded_server.model_name)  # fmt: skip
    assert result.exit_code == 0
    raw = json.loads(result.output)
    assert raw["model_spec"]["name"] == encoded_server.model_name


def test_server_error_bodies_are_shown_as_they_are(pixel_server):
    # An unknown model: TF Serving's 404 and its own words.
    url = f"{pixel_server.base_url}/v1/models/nosuch/metadata"
    expected = requests.get(url, timeout=30).json()["error"]
    result = run("--server_url", f"{pixel_server.base_url}/v1/models/nosuch:predict",
                 "--image_path", IMAGE1)  # fmt: skip
    assert result.exit_code == 1
    assert f"HTTP 404 for {url}: {expected}" in result.output

    # JPEG bytes forced onto a model that takes pixels: the server's 400 and its message.
    result = run("--server_url", pixel_server.predict_url, "--image_path", IMAGE1,
                 "--encoding", "b64")  # fmt: skip
    assert result.exit_code == 1
    assert f"TF Serving returned HTTP 400 for {pixel_server.predict_url}: " in result.output


def test_never_overwrites_the_input_photo(pixel_server, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(IMAGE1.read_bytes())
    result = run("--server_url", pixel_server.predict_url, "--image_path", photo,
                 "--output_image", photo)  # fmt: skip
    assert result.exit_code == 1
    assert "is the input image" in result.output
    assert photo.read_bytes() == IMAGE1.read_bytes()


def test_one_client_serves_concurrent_detect_calls(encoded_server, model_reference):
    """The library entry point the batch mode builds on: a shared client, many threads."""
    labels = load_label_map(ROOT / "data" / "labels.pbtxt")
    spec = ServerSpec.from_url(encoded_server.predict_url)
    with TFServingClient(spec, pool_size=4) as client, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: detect(client, IMAGE1, labels), range(4)))
    for result in results:
        assert_two_dogs(result.to_json())
        model_reference.assert_matches(result.to_json()["detections"], ENCODED_MODEL, IMAGE1)


def test_client_needs_no_tensorflow():
    code = (
        "import sys, client, object_detection.cli, benchmarks.bench_client_encoding; "
        "sys.exit('tensorflow' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0


def test_help_shows_examples():
    for args in ([], ["--help"], ["predict", "--help"], ["status", "--help"]):
        result = run(*args)
        assert result.exit_code in (0, 2)  # no arguments: click shows the help, exit code 2
        assert "Examples:" in result.output and "--server_url" in result.output
