"""`client.py predict` on many images, against the local TF Serving stand-in and the real models.

Requests are counted at the server, from its own log (sidecar_testing.servers.predict_requests):
no proxy is needed between client and server.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from object_detection.batch import SUMMARY_NAME
from object_detection.images import ImageError, load_image
from object_detection.inputs import iter_inputs
from sidecar_testing.cli import run
from sidecar_testing.data import IMAGE1, IMAGE2, LEFT_DOG, PIXEL_MODEL, RIGHT_DOG, ROOT
from sidecar_testing.servers import predict_requests, rest_request_body, wait_for_requests


def summary(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / SUMMARY_NAME).read_text().splitlines()]


def photo_folder(root: Path) -> Path:
    """Good photos (two named a.jpg in different folders), a truncated JPEG, a text file named
    .jpg, a file that is not an image by its extension, and a hidden file."""
    folder = root / "photos"
    (folder / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(IMAGE1, folder / "a.jpg")
    shutil.copy(IMAGE2, folder / "sub" / "a.jpg")
    Image.open(IMAGE1).convert("L").save(folder / "sub" / "deeper" / "gray.png")
    (folder / "broken.jpg").write_bytes(IMAGE2.read_bytes()[:20_000])
    (folder / "notes.jpg").write_text("not a photo at all\n")
    (folder / "README.txt").write_text("ignored: not an image extension\n")
    shutil.copy(IMAGE1, folder / ".hidden.jpg")
    return folder


def test_folder_with_bad_images(pixel_server, tmp_path):
    folder, out = photo_folder(tmp_path), tmp_path / "out"
    before = predict_requests(pixel_server)
    result = run(
        "--server_url", pixel_server.predict_url, folder,
        "--output_dir", out, "--save_output_image", "true", "--workers", 3,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "2 of 5 images failed" in result.stderr
    assert "failed: " in result.stderr and "broken.jpg" in result.stderr

    # Every good image has its result, mirroring the folders: the two a.jpg don't collide.
    first = json.loads((out / "a.json").read_text())
    assert sorted(d["label"] for d in first["detections"][:2]) == ["dog", "dog"]
    boxes = sorted((d["box"] for d in first["detections"][:2]), key=lambda box: box[1])
    assert np.array(boxes) == pytest.approx(np.array([LEFT_DOG, RIGHT_DOG]), abs=0.01)
    second = json.loads((out / "sub" / "a.json").read_text())
    assert second["image"]["width"] == 1352
    assert "kite" in {d["label"] for d in second["detections"]}
    gray = json.loads((out / "sub" / "deeper" / "gray.json").read_text())
    assert gray["image"]["path"].endswith("gray.png")
    for name in ("a", "sub/a", "sub/deeper/gray"):
        assert Image.open(out / f"{name}_annotated.jpg").format == "JPEG"
    assert not (out / "broken.json").exists() and not (out / "notes.json").exists()

    records = {Path(r["input"]).relative_to(folder).as_posix(): r for r in summary(out)}
    assert set(records) == {"a.jpg", "sub/a.jpg", "sub/deeper/gray.png", "broken.jpg", "notes.jpg"}
    assert records["broken.jpg"]["status"] == "error"
    assert "broken or truncated image data" in records["broken.jpg"]["error"]
    assert records["notes.jpg"]["error_kind"] == "ImageError"
    assert "is not an image" in records["notes.jpg"]["error"]
    ok = records["sub/a.jpg"]
    assert ok["status"] == "ok"
    assert ok["json"] == str(out / "sub" / "a.json")
    assert ok["image"] == str(out / "sub" / "a_annotated.jpg")
    assert ok["detections"] == len(second["detections"]) and ok["ms"] > 0
    # Bad files are refused before any request: only the three good ones reached the server.
    assert wait_for_requests(pixel_server, before + 3) == before + 3


def test_b64_photos_are_not_decoded_and_broken_ones_get_the_servers_error(encoded_server, tmp_path):
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    shutil.copy(IMAGE1, folder / "good.jpg")
    # The header is whole, the compressed data cut short: only a decoder can tell.
    (folder / "cut.jpg").write_bytes(IMAGE1.read_bytes()[:60_000])
    assert load_image(folder / "cut.jpg", decode=False).size == (1024, 636)
    with pytest.raises(ImageError, match="truncated"):
        load_image(folder / "cut.jpg")

    result = run("--server_url", encoded_server.predict_url, folder, "--output_dir", out)
    assert result.exit_code == 1
    records = {Path(r["input"]).name: r for r in summary(out)}
    assert records["good.jpg"]["status"] == "ok"
    assert records["cut.jpg"]["error_kind"] == "ServerError"
    assert "HTTP 400" in records["cut.jpg"]["error"]
    assert "failed: " in result.stderr and "\t" not in result.stderr  # one line per failure


def test_undecoded_image_decodes_on_first_use(tmp_path):
    lazy, eager = load_image(IMAGE1, decode=False), load_image(IMAGE1)
    assert lazy.decoded is None and lazy.sent_as_is and lazy.size == eager.size
    assert np.array_equal(lazy.pixels(), eager.pixels())
    # A file that b64 must re-encode (here: EXIF says rotate) is decoded at once.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(IMAGE1).save(tmp_path / "rotated.jpg", exif=exif)
    rotated = load_image(tmp_path / "rotated.jpg", decode=False)
    assert rotated.decoded is not None and rotated.size == (636, 1024)


def test_resume_sends_no_request_for_done_images(encoded_server, tmp_path):
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    for index in range(4):
        shutil.copy(IMAGE1 if index % 2 else IMAGE2, folder / f"photo{index}.jpg")
    command = ["--server_url", encoded_server.predict_url, folder, "--output_dir", out]

    before = predict_requests(encoded_server)
    assert run(*command, "--workers", 2).exit_code == 0
    assert wait_for_requests(encoded_server, before + 4) == before + 4

    # Nothing left to do: not one request.
    result = run(*command, "--resume")
    assert result.exit_code == 0
    assert "0 done, 0 failed, 4 skipped" in result.stderr
    time.sleep(0.3)  # a request would have been logged by now
    assert predict_requests(encoded_server) == before + 4

    # A missing result and one that is not a result (e.g. cut short by a full disk): both redone.
    (out / "photo1.json").unlink()
    (out / "photo2.json").write_text('{"image": {"path": "photo2.jpg"}, "detect')
    result = run(*command, "--resume")
    assert result.exit_code == 0, result.output
    assert wait_for_requests(encoded_server, before + 6) == before + 6
    assert json.loads((out / "photo2.json").read_text())["detections"]
    # The summary keeps the first run's lines and adds this run's: the last line per input wins.
    lines = summary(out)
    assert len(lines) == 12
    assert {Path(r["input"]).name: r["status"] for r in lines[-4:]} == {
        "photo0.jpg": "skipped",
        "photo1.jpg": "ok",
        "photo2.jpg": "ok",
        "photo3.jpg": "skipped",
    }


def test_killed_run_leaves_complete_files_and_resume_finishes(encoded_server, tmp_path):
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    count = 60
    for index in range(count):
        os.link(IMAGE2 if index % 3 == 0 else IMAGE1, folder / f"photo{index:03}.jpg")
    command = [
        sys.executable, "client.py", "--server_url", encoded_server.predict_url,
        str(folder), "--output_dir", str(out), "--workers", "2", "--save_output_image", "true",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
    summary_file = out / SUMMARY_NAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if summary_file.exists() and summary_file.read_text().count("\n") >= 8:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # no chance to clean up: as a power cut or OOM kill
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"

    results = sorted(out.glob("*.json"))
    assert 8 <= len(results) < count
    for path in results:  # whole files only, each with its picture
        assert json.loads(path.read_text())["detections"]
        assert Image.open(path.with_name(f"{path.stem}_annotated.jpg")).format == "JPEG"
    recorded = summary(out)  # every line parses
    assert summary_file.read_text().endswith("\n")
    assert all(r["status"] == "ok" for r in recorded)

    before = predict_requests(encoded_server)
    result = run(*command[2:], "--resume")
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.json"))) == count
    # Only the images without a result were sent again (a few were in flight when killed).
    sent = wait_for_requests(encoded_server, before + count - len(results)) - before
    assert sent == count - len(results)


def test_inputs_from_files_globs_and_folders(tmp_path):
    folder = photo_folder(tmp_path)
    shutil.copy(IMAGE1, folder / "a.png")  # same output name as a.jpg
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    shutil.copy(IMAGE1, other / "sub" / "a.jpg")  # same relative path as photos/sub/a.jpg
    out = folder / "out"
    shutil.copytree(folder / "sub", out)  # an output folder inside an input folder is skipped

    items = list(iter_inputs([str(folder), str(other)], exclude=out))
    names = [item.name.as_posix() for item in items]
    assert names == [
        "photos/a.jpg", "photos/a.png", "photos/broken.jpg", "photos/notes.jpg",
        "photos/sub/a.jpg", "photos/sub/deeper/gray.png", "other/sub/a.jpg",
    ]  # fmt: skip
    problems = {item.name.as_posix(): item.problem for item in items if item.problem}
    assert list(problems) == ["photos/a.png"]
    assert "same output name (photos/a.json)" in problems["photos/a.png"]

    # A glob mirrors the folders under its fixed part; a missing file or an empty glob is an
    # input with a problem (recorded in the summary), not the end of the run.
    pattern = str(folder / "**" / "*.jpg")
    arguments = [pattern, str(tmp_path / "gone.jpg"), str(tmp_path / "*.gif")]
    items = list(iter_inputs(arguments, exclude=out))
    assert [(i.name.as_posix(), i.problem) for i in items] == [
        ("photos/a.jpg", None),
        ("photos/broken.jpg", None),
        ("photos/notes.jpg", None),
        ("photos/sub/a.jpg", None),
        ("gone.jpg", f"image not found: {tmp_path / 'gone.jpg'}"),
        ("*.gif", f"no image matches {tmp_path / '*.gif'}"),
    ]
    # Photos named one by one keep only their names under the output folder.
    items = list(iter_inputs([str(folder / "a.jpg"), str(folder / "notes.jpg")]))
    assert [item.name.as_posix() for item in items] == ["a.jpg", "notes.jpg"]


def test_many_images_usage_errors(tmp_path):
    folder = photo_folder(tmp_path)
    url = "http://127.0.0.1:9/v1/models/m:predict"
    result = run("--server_url", url, folder / "a.jpg", folder / "sub" / "a.jpg")
    assert result.exit_code == 2 and "need --output_dir" in result.stderr
    result = run("--server_url", url, folder, "--output_dir", folder)
    assert result.exit_code == 2 and "must not be one of the input directories" in result.stderr
    result = run("--server_url", url, folder, "--output_dir", tmp_path / "o", "--output_json", "x")
    assert result.exit_code == 2 and "--output_json" in result.stderr
    # Nothing listening: one message before any image is tried, no summary of N failures.
    result = run("--server_url", url, folder, "--output_dir", tmp_path / "o", "--retries", 0)
    assert result.exit_code == 1 and "cannot reach TF Serving" in result.stderr
    assert result.stderr.count("\n") == 1


def test_max_side_sends_fewer_pixels_and_boxes_land_on_the_original(
    pixel_server, tmp_path, model_reference
):
    output = tmp_path / "small.json"
    result = run(
        "--server_url", pixel_server.predict_url, "--image_path", IMAGE1,
        "--output_json", output, "--max_side", 300,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    small = json.loads(output.read_text())
    assert small["request"]["sent_size"] == [300, 186]  # 1024x636 shrunk to fit 300x300
    assert small["request"]["bytes"] < 700_000  # instead of 7.9 MB
    assert (small["image"]["width"], small["image"]["height"]) == (1024, 636)
    dogs = [d for d in small["detections"] if d["label"] == "dog"]
    dogs.sort(key=lambda d: d["box"][1])
    assert len(dogs) == 2
    boxes = np.array([d["box"] for d in dogs])
    assert boxes == pytest.approx(np.array([LEFT_DOG, RIGHT_DOG]), abs=0.03)
    # Exactly what the model says of the downscaled picture (bilinear, as documented), saved
    # losslessly so that the in-process call sees the same pixels.
    shrunk = tmp_path / "shrunk.png"
    ImageOps.contain(Image.open(IMAGE1), (300, 300), Image.Resampling.BILINEAR).save(shrunk)
    model_reference.assert_matches(small["detections"], PIXEL_MODEL, shrunk)
    for dog in dogs:  # pixel boxes are in the original picture's pixels
        expected = np.array(dog["box"]) * [636, 1024, 636, 1024]
        assert dog["box_pixels"] == pytest.approx(expected, abs=1)


def test_max_side_body_is_the_downscaled_picture():
    image = load_image(IMAGE2)
    body, size = rest_request_body(image, "pixels", max_side=500)
    assert size == (500, 333)
    pixels = np.array(json.loads(body)["instances"][0], np.uint8)
    assert pixels.shape == (333, 500, 3)
    expected = np.asarray(image.image.resize((500, 333), Image.Resampling.BILINEAR))
    assert np.abs(pixels.astype(int) - expected).max() <= 1
    # Smaller images, and b64, are sent as they are.
    assert rest_request_body(image, "pixels", max_side=2000)[1] == (1352, 900)
    b64_body, b64_size = rest_request_body(image, "b64", max_side=500)
    assert b64_size == (1352, 900) and len(b64_body) > IMAGE2.stat().st_size
