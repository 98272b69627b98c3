"""What a user sees when things go wrong: one clear line, exit code 1, no traceback.

The CLI runs in-process (click's CliRunner) against real HTTP on loopback. Faults a real TF
Serving cannot be made to show on demand (a proxy's HTML 502, a hung server, 503s, a model
still LOADING, a late start) come from the small throwaway HTTP server below; the errors the
real server does produce are tested against it in test_client.py.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sidecar_testing.cli import run
from sidecar_testing.data import IMAGE1, STUB_DETECTIONS
from sidecar_testing.servers import HOST, free_port

METADATA = {
    "model_spec": {"name": "m", "signature_name": "", "version": "1"},
    "metadata": {
        "signature_def": {
            "signature_def": {
                "serving_default": {
                    "inputs": {
                        "inputs": {
                            "dtype": "DT_UINT8",
                            "tensor_shape": {"dim": [{"size": "-1"}] * 3 + [{"size": "3"}]},
                        }
                    },
                    "outputs": {},
                    "method_name": "tensorflow/serving/predict",
                }
            }
        }
    },
}
DOG = STUB_DETECTIONS


def status_body(state):
    return {"model_version_status": [{"version": "1", "state": state, "status": {}}]}


class StubServer(ThreadingHTTPServer):
    """Answers each (method, path) from a list of replies; the last reply repeats."""

    daemon_threads = True  # a handler stuck in a long sleep must not block the test's end

    def __init__(self, port=0):
        self.replies = {("GET", "/v1/models/m/metadata"): [(200, METADATA)]}
        self.seen = []
        super().__init__((HOST, port), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def reply(self, method, path, *replies):
        """replies: (status, JSON-able body or bytes[, content type[, delay seconds]]);
        status None: close the connection without answering."""
        self.replies[(method, path)] = list(replies)

    def count(self, method, path):
        return self.seen.count((method, path))

    @property
    def url(self):
        return f"http://{HOST}:{self.server_port}/v1/models/m:predict"

    def handle_error(self, request, client_address):
        """Quiet: the hung-server test's client leaves before the late answer is written."""

    def close(self):
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    def _answer(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        key = (self.command, self.path)
        self.server.seen.append(key)
        replies = self.server.replies.get(key, [(404, {"error": f"no route {key}"})])
        status, body, content_type, delay = (
            replies[0] + (None, None, "application/json", 0)[len(replies[0]) :]
        )
        if len(replies) > 1:
            replies.pop(0)
        time.sleep(delay)
        if status is None:  # hang up without an answer
            return
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = StubServer()
    yield server
    server.close()


def predict(server_url, *args):
    return run("--server_url", server_url, "--image_path", IMAGE1, *args)


PREDICT = ("POST", "/v1/models/m:predict")


def test_proxy_html_502_is_reported_as_not_tf_serving(stub):
    page = b"<html><body><h1>502 Bad Gateway</h1>no healthy upstream</body></html>"
    stub.reply(*PREDICT, (502, page, "text/html"))
    result = predict(stub.url)
    assert result.exit_code == 1
    assert "HTTP 502" in result.output and "not TF Serving's JSON" in result.output
    assert "502 Bad Gateway" in result.output and "text/html" in result.output


def test_timeout_names_the_limit_and_is_not_retried(stub):
    stub.reply(*PREDICT, (200, {"predictions": [DOG]}, "application/json", 5))
    started = time.monotonic()
    result = predict(stub.url, "--timeout", "0.5")
    assert result.exit_code == 1
    assert "no answer" in result.output and "within 0.5 s" in result.output
    assert time.monotonic() - started < 4
    assert stub.count(*PREDICT) == 1  # the model may be working on it: never send it twice


def test_error_body_is_shown_as_sent_with_the_status(stub):
    message = 'Input to reshape is a tensor with 3 values, but the requested shape has "4"'
    stub.reply(*PREDICT, (400, {"error": message}))
    result = predict(stub.url)
    assert result.exit_code == 1
    assert f"HTTP 400 for {stub.url}: {message}" in result.output


def test_connection_dropped_mid_request_is_not_called_unreachable(stub):
    stub.reply(*PREDICT, (None, b""))
    result = predict(stub.url)
    assert result.exit_code == 1
    assert "closed before an answer came" in result.output
    assert stub.count(*PREDICT) == 1


def test_503_is_retried_with_backoff(stub):
    busy = (503, {"error": "server busy"})
    stub.reply(*PREDICT, busy, busy, (200, {"predictions": [DOG]}))
    result = predict(stub.url)
    assert result.exit_code == 0, result.output
    assert stub.count(*PREDICT) == 3
    assert "dog" in result.output


def test_503_that_persists_is_shown_after_the_retries(stub):
    stub.reply(*PREDICT, (503, {"error": "server busy"}))
    result = predict(stub.url, "--retries", "1")
    assert result.exit_code == 1
    assert "HTTP 503" in result.output and "server busy" in result.output
    assert stub.count(*PREDICT) == 2


def test_unreachable_server():
    url = f"http://{HOST}:{free_port()}/v1/models/m:predict"
    result = predict(url, "--retries", "0")
    assert result.exit_code == 1
    assert "cannot reach TF Serving" in result.output and "Connection refused" in result.output


def test_server_that_is_still_starting_is_waited_for():
    port = free_port()
    late = []

    def start_late():
        late.append(StubServer(port))
        late[0].reply(*PREDICT, (200, {"predictions": [DOG]}))

    timer = threading.Timer(0.5, start_late)
    timer.start()
    try:
        # Connection refused at first; the default retries (backoff 0, 1, 2 s) outlast the start.
        result = predict(f"http://{HOST}:{port}/v1/models/m:predict")
    finally:
        timer.join()
        for server in late:
            server.close()
    assert result.exit_code == 0, result.output
    assert late[0].count(*PREDICT) == 1


def test_missing_image(stub):
    result = run("--server_url", stub.url, "--image_path", "/nonexistent/photo.jpg")
    assert result.exit_code == 1
    assert "image not found: /nonexistent/photo.jpg" in result.output


def test_file_that_is_not_an_image(stub, tmp_path):
    (tmp_path / "photo.jpg").write_text("this is text")
    result = run("--server_url", stub.url, "--image_path", tmp_path / "photo.jpg")
    assert result.exit_code == 1
    assert "is not an image" in result.output
    assert stub.count(*PREDICT) == 0


def test_malformed_label_map(stub, tmp_path):
    (tmp_path / "labels.pbtxt").write_text('item {\n  id: 1\n  name: "person"\n')
    result = predict(stub.url, "--label_map", tmp_path / "labels.pbtxt")
    assert result.exit_code == 1
    assert "labels.pbtxt:1: block opened here is not closed" in result.output


def test_answer_that_is_not_a_detection_model(stub):
    stub.reply(*PREDICT, (200, {"predictions": [[0.1, 0.9]]}))
    result = predict(stub.url)
    assert result.exit_code == 1
    assert "single unnamed output" in result.output


def test_status_exit_code_follows_availability(stub):
    stub.reply("GET", "/v1/models/m", (200, status_body("LOADING")))
    result = run("status", "--server_url", stub.url)
    assert result.exit_code == 1
    assert "m version 1: LOADING" in result.output and "--wait" in result.output

    loading, available = (200, status_body("LOADING")), (200, status_body("AVAILABLE"))
    stub.reply("GET", "/v1/models/m", loading, loading, loading, available)
    result = run("status", "--server_url", stub.url, "--wait", "10")
    assert result.exit_code == 0, result.output
    assert "m version 1: AVAILABLE" in result.output
    assert stub.count("GET", "/v1/models/m") >= 5


def test_status_wait_gives_up_on_time():
    url = f"http://{HOST}:{free_port()}/v1/models/m"
    started = time.monotonic()
    result = run("status", "--server_url", url, "--wait", "1.5")
    assert result.exit_code == 1
    assert "cannot reach TF Serving" in result.output
    assert 1.4 < time.monotonic() - started < 5
