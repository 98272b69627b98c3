"""Whatever a server or a file sends, client.py ends with one line and an exit code, writes only
valid JSON and prints nothing that moves the terminal's cursor.

The answers come over real HTTP on 127.0.0.1 from the small throwaway server below. It exists
only for answers a real TF Serving cannot be made to give: NaN boxes, ragged or 5-wide boxes,
strings where numbers belong, a million detections, a metadata dim of "abc", escape sequences
in error texts and model names. Its metadata is the real one, fetched once from the local TF
Serving stand-in (`pixel_server`), so the client takes exactly the path it takes in production
up to the answer. The CLI runs in-process (click's CliRunner), except where the test needs a
process of its own (an unreadable folder).
"""

import copy
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from object_detection.batch import SUMMARY_NAME
from object_detection.options import DEFAULT_MAX_BOXES
from sidecar_testing.cli import run
from sidecar_testing.data import IMAGE1, ROOT, STUB_DETECTIONS
from sidecar_testing.servers import HOST

ESC = "\x1b"
# A screen clear, a red color, a carriage return over what came before, a C1 control (CSI).
ANSI = f"{ESC}[2J{ESC}[31mred\rover\x9b1A"
NAN, INF = float("nan"), float("inf")
DOG = STUB_DETECTIONS


def row(outputs):
    return {"predictions": [outputs]}


def columnar(outputs):
    """TF Serving's answer to an `inputs` request: every output with its batch dimension."""
    return {"outputs": {name: [value] for name, value in outputs.items()}}


def changed(**outputs):
    return {**DOG, **outputs}


# Outputs the client reads, each wrong in one way.
MALFORMED_OUTPUTS = {
    "nan box": changed(detection_boxes=[[0.1, NAN, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]),
    "infinite box": changed(detection_boxes=[[0.1, 0.2, INF, 0.6], [0.0, 0.0, 1.0, 1.0]]),
    "nan score": changed(detection_scores=[NAN, 0.1]),
    "infinite score": changed(detection_scores=[INF, 0.1]),
    "boxes a string": changed(detection_boxes="abc"),
    "5-wide boxes": changed(detection_boxes=[[0.1, 0.2, 0.5, 0.6, 0.7], [0, 0, 1, 1, 1]]),
    "ragged boxes": changed(detection_boxes=[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0]]),
    "flat boxes": changed(detection_boxes=[0.1, 0.2, 0.5, 0.6, 0.0, 0.0, 1.0, 1.0]),
    "box holding a string": changed(detection_boxes=[[0.1, 0.2, 0.5, "0.6"], [0, 0, 1, 1]]),
    "num_detections empty": changed(num_detections=[]),
    "num_detections a word": changed(num_detections="many"),
    "num_detections negative": changed(num_detections=-1),
    "num_detections nan": changed(num_detections=NAN),
    "num_detections two": changed(num_detections=[2, 2]),
    "scores a number": changed(detection_scores=3),
    "scores an object": changed(detection_scores={"dog": 0.9}),
    "scores null": changed(detection_scores=None),
    "score a string": changed(detection_scores=[0.9, "high"]),
    "scores nested": changed(detection_scores=[[0.9, 0.1]]),
    "one score short": changed(detection_scores=[0.9]),
    "class 1e30": changed(detection_classes=[1e30, 1.0]),
    "class beyond float": changed(detection_classes=[10**400, 1]),
    "class negative": changed(detection_classes=[-1.0, 1.0]),
    "class fractional": changed(detection_classes=[18.5, 1.0]),
    "class nan": changed(detection_classes=[NAN, 1.0]),
    "classes an object": changed(detection_classes={"a": 1}),
}
MALFORMED_ANSWERS = {
    **{f"{name} (row)": row(outputs) for name, outputs in MALFORMED_OUTPUTS.items()},
    **{f"{name} (columnar)": columnar(outputs) for name, outputs in MALFORMED_OUTPUTS.items()},
    "predictions a number": {"predictions": 5},
    "predictions empty": {"predictions": []},
    "predictions an object": {"predictions": {"detection_boxes": []}},
    "outputs a number": {"outputs": 5},
    "outputs a list": {"outputs": [DOG]},
    "row outputs a string": {"predictions": ["abc"]},
}


def strict_json(text):
    """json.loads that refuses NaN and Infinity, which Python's json takes by default."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def to_json_bytes(body):
    """Bodies as a misbehaving server writes them: NaN and Infinity as bare words."""
    return body if isinstance(body, bytes) else json.dumps(body).encode()


class MalformedServer(ThreadingHTTPServer):
    """Answers GET .../metadata, GET /v1/models/NAME (status) and POST ...:predict with whatever
    the test set; every body as bytes, so it can hold what json.dumps would refuse."""

    daemon_threads = True

    def __init__(self, metadata):
        self.metadata = metadata
        self.name = metadata["model_spec"]["name"]  # in the URL, whatever the metadata says later
        self.answer = (200, row(DOG))
        self.status = {"model_version_status": []}
        super().__init__((HOST, 0), _Handler)
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self):
        return f"http://{HOST}:{self.server_port}/v1/models/{self.name}:predict"

    def close(self):
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.endswith("/metadata"):
            self._send(200, self.server.metadata)
        else:
            self._send(200, self.server.status)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(*self.server.answer)

    def _send(self, status, body):
        data = to_json_bytes(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def real_metadata(pixel_server):
    """The local TF Serving stand-in's metadata answer for the pixel model, as it sends it."""
    return requests.get(pixel_server.spec.metadata_url, timeout=30).json()


@pytest.fixture
def server(real_metadata):
    stub = MalformedServer(copy.deepcopy(real_metadata))
    yield stub
    stub.close()


def assert_one_line_error(result):
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr


def predict(server, *args):
    return run("--server_url", server.url, "--image_path", IMAGE1, *args)


@pytest.mark.parametrize("answer", MALFORMED_ANSWERS.values(), ids=MALFORMED_ANSWERS.keys())
def test_malformed_answer_is_one_line_and_writes_nothing(server, tmp_path, answer):
    server.answer = (200, answer)
    output = tmp_path / "out.json"
    result = predict(server, "--output_json", output)
    assert_one_line_error(result)
    assert not output.exists()


def test_malformed_answer_names_what_is_wrong(server, tmp_path):
    cases = [
        (changed(detection_scores=[INF, 0.1]), "detection_scores[0] is inf"),
        (changed(detection_classes=[1e30, 1.0]), "detection_classes[0] is 1e+30, not a class id"),
        (changed(detection_boxes=[[0.1, 0.2, 0.5, 0.6, 0.7]] * 2), "has shape (2, 5)"),
        (changed(num_detections="many"), "num_detections is 'many'"),
    ]
    for outputs, message in cases:
        server.answer = (200, row(outputs))
        result = predict(server, "--output_json", tmp_path / "out.json")
        assert message in result.stderr


@pytest.mark.parametrize("layout", [row, columnar])
def test_nan_in_an_output_not_read_becomes_null(server, tmp_path, layout):
    """TF Serving sends NaN for float outputs; what the client writes stays strict JSON."""
    server.answer = (200, layout(changed(raw_scores=[NAN, INF, -INF, 0.5])))
    output = tmp_path / "out.json"
    result = predict(server, "--output_json", output)
    assert result.exit_code == 0, result.output
    expected = layout(changed(raw_scores=[None, None, None, 0.5]))
    written = strict_json(output.read_text())
    assert written["raw_response"] == expected
    assert [d["label"] for d in written["detections"]] == ["dog"]

    printed = predict(server)  # the JSON on stdout, the summary on stderr
    assert printed.exit_code == 0, printed.output
    assert strict_json(printed.stdout)["raw_response"] == expected


def test_nan_in_metadata_json_becomes_null(server):
    server.metadata["metadata"]["signature_def"]["extra"] = NAN
    result = run("metadata", "--server_url", server.url, "--json")
    assert result.exit_code == 0, result.output
    assert strict_json(result.stdout)["metadata"]["signature_def"]["extra"] is None


def test_nan_in_the_batch_stays_out_of_the_summary(server, tmp_path):
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    shutil.copy(IMAGE1, folder / "a.jpg")
    server.answer = (200, row(changed(raw_scores=[NAN])))
    result = run("--server_url", server.url, folder, "--output_dir", out)
    assert result.exit_code == 0, result.output
    [record] = [strict_json(line) for line in (out / SUMMARY_NAME).read_text().splitlines()]
    assert record["status"] == "ok"
    assert strict_json((out / "a.json").read_text())["raw_response"]["predictions"][0] == (
        changed(raw_scores=[None])
    )


def assert_no_escape(result):
    for text in (result.stdout, result.stderr):
        assert ESC not in text and "\r" not in text and "\x9b" not in text, repr(text)


def test_escape_sequences_in_the_servers_error_are_not_printed(server):
    server.answer = (400, {"error": f"bad input {ANSI}\nsecond line"})
    result = predict(server)
    assert_one_line_error(result)
    assert_no_escape(result)
    assert "bad input \\x1b[2J\\x1b[31mred\\x0dover\\x9b1A\\x0asecond line" in result.stderr


def test_escape_sequences_in_names_are_not_printed(server, tmp_path):
    name = f"m{ANSI}"
    server.metadata["model_spec"]["name"] = name
    signatures = server.metadata["metadata"]["signature_def"]["signature_def"]
    signatures[f"sig{ANSI}"] = signatures["serving_default"]
    signatures["serving_default"]["outputs"][f"out{ANSI}"] = {"dtype": f"DT_{ANSI}"}
    server.status = {
        "model_version_status": [
            {"version": "1", "state": f"AVAILABLE{ANSI}", "status": {"error_message": ANSI}}
        ]
    }
    predicted = predict(server, "--output_json", tmp_path / "out.json")
    assert predicted.exit_code == 0, predicted.output
    assert "from model m\\x1b[2J\\x1b[31mred\\x0dover\\x9b1A version 1" in predicted.stdout
    assert_no_escape(predicted)
    for command in ("metadata", "status"):
        result = run(command, "--server_url", server.url)
        assert "\\x1b[31m" in result.stdout
        assert_no_escape(result)
    # JSON output escapes them itself, as JSON does.
    printed = predict(server)
    assert_no_escape(printed)
    assert strict_json(printed.stdout)["model"]["name"] == name


def test_escape_sequences_in_labels_and_file_names_are_not_printed(server, tmp_path):
    labels = tmp_path / "labels.pbtxt"
    # The label map's own escapes make the control characters.
    labels.write_text('item { id: 18 display_name: "dog\\x1b[2J\\x1b[31m\\r\\x9b1A\\n" }')
    result = predict(server, "--label_map", labels, "--output_json", tmp_path / "out.json")
    assert result.exit_code == 0, result.output
    assert "  dog\\x1b[2J\\x1b[31m\\x0d\\x9b1A\\x0a 0.900" in result.stdout
    assert_no_escape(result)

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / f"notes{ESC}[2J\r.jpg").write_text("not a photo")
    result = run("--server_url", server.url, folder, "--output_dir", tmp_path / "out")
    assert result.exit_code == 1
    assert "failed: " in result.stderr and "notes\\x1b[2J\\x0d.jpg" in result.stderr
    assert f"{ESC}[2J" not in result.stderr  # (the progress bar itself redraws with \r)


def test_a_million_detections_take_bounded_time_and_memory(server, tmp_path):
    """Built as text: json.dumps of the answer alone would cost the test seconds."""
    count = 10**6
    rows, scores, classes = (
        ",".join([text] * count) for text in ("[0.1,0.2,0.5,0.6]", "0.9", "18")
    )
    answer = (
        f'{{"predictions": [{{"detection_boxes": [{rows}], "detection_scores": [{scores}], '
        f'"detection_classes": [{classes}], "num_detections": {count}}}]}}'
    )
    server.answer = (200, answer.encode())
    output = tmp_path / "out.json"
    done = []
    worker = threading.Thread(target=lambda: done.append(predict(server, "--output_json", output)))
    worker.start()
    worker.join(120)  # a guard against a hang, not a timing target
    assert done, "client.py did not finish with a million detections"
    [result] = done
    assert result.exit_code == 0, result.output
    written = strict_json(output.read_text())
    assert len(written["detections"]) == DEFAULT_MAX_BOXES  # the best, of a million
    assert len(written["raw_response"]["predictions"][0]["detection_scores"]) == count
    assert f"{DEFAULT_MAX_BOXES} detections (score >= 0.5)" in result.stdout
    assert f"--max_boxes {DEFAULT_MAX_BOXES} reached" in result.stdout
    assert len(result.stdout.splitlines()) < 30  # the terminal gets a summary, the JSON all


METADATA_DAMAGE = {
    "dim abc": lambda m: _first_input(m)["tensor_shape"]["dim"].__setitem__(0, {"size": "abc"}),
    "dim a float": lambda m: _first_input(m)["tensor_shape"]["dim"].__setitem__(0, {"size": 1.5}),
    "dim below -1": lambda m: _first_input(m)["tensor_shape"]["dim"].__setitem__(0, {"size": -2}),
    "dims an object": lambda m: _first_input(m)["tensor_shape"].__setitem__("dim", {"size": 1}),
    "dtype a number": lambda m: _first_input(m).__setitem__("dtype", 4),
    "unknown_rank a word": lambda m: _first_input(m)["tensor_shape"].__setitem__(
        "unknown_rank", "yes"
    ),
    "input a list": lambda m: _signature(m)["inputs"].__setitem__("inputs", [1]),
    "inputs a list": lambda m: _signature(m).__setitem__("inputs", ["inputs"]),
    "signature a string": lambda m: _signatures(m).__setitem__("serving_default", "x"),
    "signatures a list": lambda m: m["metadata"]["signature_def"].__setitem__("signature_def", []),
    "no model_spec": lambda m: m.pop("model_spec"),
    "name a number": lambda m: m["model_spec"].__setitem__("name", 5),
    "version a list": lambda m: m["model_spec"].__setitem__("version", [1]),
}


def _signatures(metadata):
    return metadata["metadata"]["signature_def"]["signature_def"]


def _signature(metadata):
    return _signatures(metadata)["serving_default"]


def _first_input(metadata):
    return _signature(metadata)["inputs"]["inputs"]


@pytest.mark.parametrize("damage", METADATA_DAMAGE.values(), ids=METADATA_DAMAGE.keys())
def test_malformed_metadata_is_one_line(server, damage):
    url = server.url
    damage(server.metadata)
    for command in (("predict", "--image_path", IMAGE1), ("metadata",), ("bench", IMAGE1)):
        result = run(*command, "--server_url", url)
        assert_one_line_error(result)
        assert "unexpected model metadata from the server" in result.stderr


def test_metadata_dim_abc_names_the_field(server):
    _first_input(server.metadata)["tensor_shape"]["dim"][0] = {"size": "abc"}
    result = predict(server)
    assert "inputs['inputs'].tensor_shape.dim[0].size is 'abc'" in result.stderr


LABEL_MAPS = {
    "bad escape": 'item { id: 18 name: "\\x" }',
    "unknown character name": 'item { id: 18 name: "\\N{nonsense}" }',
    "nested too deep": "item " + "{ a " * 5000 + "}" * 5000,
    "id beyond int32": "item { id: 99999999999999999999 }",
}


@pytest.mark.parametrize("text", LABEL_MAPS.values(), ids=LABEL_MAPS.keys())
def test_malformed_label_map_is_one_line(server, tmp_path, text):
    labels = tmp_path / "labels.pbtxt"
    labels.write_text(text)
    result = predict(server, "--label_map", labels)
    assert_one_line_error(result)
    assert "labels.pbtxt:1: " in result.stderr


def test_glob_through_a_symlink_loop(server, tmp_path):
    """`**` follows symlinked folders: a link back up the tree must not give each photo 40
    times, and a loop of links named like photos is no photo."""
    folder, out = tmp_path / "photos", tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(IMAGE1, folder / "a.jpg")
    (folder / "sub" / "up").symlink_to("..")
    (folder / "b.jpg").symlink_to("c.jpg")
    (folder / "c.jpg").symlink_to("b.jpg")
    result = run("--server_url", server.url, f"{folder}/**/*.jpg", "--output_dir", out)
    assert result.exit_code == 0, result.output
    records = [strict_json(line) for line in (out / SUMMARY_NAME).read_text().splitlines()]
    assert [(r["input"], r["status"]) for r in records] == [(str(folder / "a.jpg"), "ok")]

    # Walking the folder itself follows no link; the loop named like a photo is reported.
    result = run("--server_url", server.url, folder, "--output_dir", out)
    assert result.exit_code == 1
    assert result.stderr.count("failed: ") == 2 and "symbolic links" in result.stderr


def test_deeply_nested_result_file_is_redone_on_resume(server, tmp_path):
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    shutil.copy(IMAGE1, folder / "a.jpg")
    (out / "a.json").write_text("[" * 100_000)
    result = run("--server_url", server.url, folder, "--output_dir", out, "--resume")
    assert result.exit_code == 0, result.output
    assert strict_json((out / "a.json").read_text())["detections"]


def test_unreadable_subfolder_counts_as_failed(server, tmp_path):
    """A real permission error, in a process of its own: as root, chmod 000 does not stop
    reads, so that process runs as root without the capabilities that bypass file modes
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), dropped by setpriv."""
    folder, out = tmp_path / "photos", tmp_path / "out"
    (folder / "locked").mkdir(parents=True)
    shutil.copy(IMAGE1, folder / "a.jpg")
    shutil.copy(IMAGE1, folder / "locked" / "b.jpg")
    command = [sys.executable, "client.py", "--server_url", server.url, str(folder)]
    command += ["--output_dir", str(out)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: no way to make a folder unreadable")
        drop = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", "--", *command]
    (folder / "locked").chmod(0)
    try:
        process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        (folder / "locked").chmod(0o755)
    assert process.returncode == 1, process.stderr
    assert "Traceback" not in process.stderr
    assert "1 done, 1 failed" in process.stderr
    lines = (out / SUMMARY_NAME).read_text().splitlines()
    records = {record["input"]: record for record in map(strict_json, lines)}
    locked = records[str(folder / "locked")]
    assert locked["status"] == "error" and locked["error_kind"] == "InputError"
    assert locked["error"] == f"cannot read folder {folder / 'locked'}: Permission denied"
    assert records[str(folder / "a.jpg")]["status"] == "ok"


STATUS_DAMAGE = {
    "entry a number": {"model_version_status": [5]},
    "entries an object": {"model_version_status": {"version": "1"}},
    "state a number": {"model_version_status": [{"version": "1", "state": 3}]},
    "status a string": {"model_version_status": [{"version": "1", "status": "bad"}]},
    "answer a list": [1, 2],
}


@pytest.mark.parametrize("answer", STATUS_DAMAGE.values(), ids=STATUS_DAMAGE.keys())
def test_malformed_status_is_one_line(server, answer):
    server.status = answer
    result = run("status", "--server_url", server.url)
    assert_one_line_error(result)
    assert "model status" in result.stderr or "not TF Serving's JSON" in result.stderr
