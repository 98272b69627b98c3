"""The client's transport holds whatever a server does: a deadline for each whole request, a
size limit on answers (decompressed too), one line for a cut-off answer, and credentials in the
URL sent as basic auth but never shown.

The misbehaving servers below are real HTTP servers on 127.0.0.1 (http.server, one thread per
connection). They exist only for what a real TF Serving cannot be made to do: drip an answer a
byte at a time, send a gzip bomb, stop halfway through an answer. Their metadata is the real
one, fetched from the local TF Serving stand-in, so the client takes its production path up to
the answer. Deadlines and memory are measured on client.py in a process of its own.
"""

import base64
import json
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from click.testing import CliRunner

from object_detection.cli import cli
from sidecar_testing.data import IMAGE1, ROOT, STUB_DETECTIONS

HOST = "127.0.0.1"
SECRET = "s3cr3t-pa55"
DOG = STUB_DETECTIONS


class MisbehavingServer(ThreadingHTTPServer):
    """Serves the real metadata; every other request is answered by `self.answer(handler)`."""

    daemon_threads = True

    def __init__(self, metadata, answer):
        self.metadata = json.dumps(metadata).encode()
        self.answer = answer
        self.authorizations = []
        super().__init__((HOST, 0), _Handler)
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, userinfo=""):
        name = json.loads(self.metadata)["model_spec"]["name"]
        return f"http://{userinfo}{HOST}:{self.server_port}/v1/models/{name}:predict"

    def handle_error(self, request, client_address):
        """Quiet: the client hangs up on a dripping answer, which is the point."""

    def close(self):
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._answer()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer()

    def _answer(self):
        self.server.authorizations.append(self.headers.get("Authorization"))
        if self.path.endswith("/metadata"):
            send(self, 200, self.server.metadata)
        else:
            self.server.answer(self)

    def log_message(self, *args):
        pass


def send(handler, status, body, **headers):
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture(scope="module")
def metadata(pixel_server):
    return requests.get(pixel_server.spec.metadata_url, timeout=30).json()


@pytest.fixture
def serve(metadata):
    """serve(answer) -> a running MisbehavingServer; closed after the test."""
    servers = []

    def start(answer):
        servers.append(MisbehavingServer(metadata, answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def client_process(*args, timeout=120):
    """client.py in a process of its own; returns (returncode, stdout, stderr, seconds, peak
    RSS in MiB of that process alone)."""
    # VmHWM, not getrusage's ru_maxrss: that one keeps the peak of the process before exec,
    # here pytest's, which holds TensorFlow when a test before this one loaded a model.
    runner = (
        "import re, runpy, sys\n"
        "sys.argv = ['client.py', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_path('client.py', run_name='__main__')\n"
        "finally:\n"
        "    status = open('/proc/self/status').read()\n"
        "    peak = int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n"
        "    print(f'peak_rss_mib={peak / 1024:.0f}', file=sys.stderr)\n"
    )
    started = time.monotonic()
    process = subprocess.run(
        [sys.executable, "-c", runner, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.monotonic() - started
    *lines, peak = process.stderr.rstrip("\n").split("\n")
    assert peak.startswith("peak_rss_mib="), process.stderr
    stderr = "\n".join(lines) + "\n"
    return process.returncode, process.stdout, stderr, seconds, int(peak.partition("=")[2])


def assert_one_line_error(returncode, stderr):
    assert returncode == 1, stderr
    assert stderr.startswith("Error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr


def drip_body(handler):
    """Headers at once, then the body one byte every 0.5 s (each read is quick: only the whole
    answer is slow)."""
    body = json.dumps({"predictions": [DOG]}).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    for byte in body:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(0.5)


def drip_headers(handler):
    """Even the status line comes a byte every 0.5 s."""
    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" * 50:
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()
        time.sleep(0.5)


@pytest.mark.parametrize("drip", [drip_body, drip_headers])
@pytest.mark.parametrize("command", ["predict", "status"])
def test_a_dripping_server_is_a_timeout_within_the_deadline(serve, drip, command):
    server = serve(drip)
    args = ("--image_path", IMAGE1) if command == "predict" else ()
    code, _, stderr, seconds, _ = client_process(
        command, "--server_url", server.url(), *args, "--timeout", "2"
    )
    assert_one_line_error(code, stderr)
    assert "within 2 s" in stderr and "raise --timeout" in stderr
    assert seconds < 3, f"took {seconds:.1f} s"  # 2 s of deadline, and starting Python


def test_the_deadline_covers_the_retries(serve):
    """503 "not taken" is retried with backoff, but never past the deadline."""
    server = serve(lambda handler: send(handler, 503, b'{"error": "busy"}'))
    started = time.monotonic()
    args = ["--server_url", server.url(), "--image_path", IMAGE1, "--timeout", 1.5, "--retries", 10]
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    assert result.exit_code == 1
    assert "HTTP 503" in result.stderr
    assert time.monotonic() - started < 2.5


def gzip_bomb(size):
    """`size` zero bytes, gzip-compressed (about 1000:1) without holding them in memory."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(2**20)
    parts = [compressor.compress(zeros) for _ in range(size // len(zeros))]
    return b"".join([*parts, compressor.flush()])


def test_a_gzip_bomb_is_refused_at_the_limit_in_bounded_memory(serve):
    bomb = gzip_bomb(2**30)  # 1 GiB once decompressed, about 1 MB sent
    server = serve(lambda handler: send(handler, 200, bomb, Content_Encoding="gzip"))
    code, _, stderr, _, peak_mib = client_process(
        "--server_url", server.url(), "--image_path", IMAGE1
    )
    assert_one_line_error(code, stderr)
    assert "larger than 256 MiB" in stderr and "raise --max_response_mb" in stderr
    # The limit's 256 MiB plus the interpreter, numpy and Pillow; 1 GiB if it were all read.
    assert peak_mib < 256 + 160, f"peak RSS {peak_mib} MiB"


def test_an_oversized_answer_is_refused_before_it_is_read(serve):
    """A Content-Length beyond the limit is refused at once; an answer without one (chunked),
    as soon as the limit is passed, while the server would go on for ever."""

    def endless(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = b"[" + b"0," * 2**15 + b"0]"
        while True:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    def huge(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(10 * 2**30))
        handler.end_headers()
        handler.wfile.write(b'{"predictions": [')

    for answer in (huge, endless):
        server = serve(answer)
        code, _, stderr, seconds, peak_mib = client_process(
            "--server_url", server.url(), "--image_path", IMAGE1, "--max_response_mb", "8"
        )
        assert_one_line_error(code, stderr)
        assert "larger than 8 MiB" in stderr
        assert peak_mib < 8 + 160 and seconds < 10


def test_a_cut_off_answer_is_one_line(serve):
    def cut_off(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b'{"predictions"')
        handler.close_connection = True

    server = serve(cut_off)
    result = CliRunner().invoke(cli, ["--server_url", server.url(), "--image_path", str(IMAGE1)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "the answer was cut off after 14 of 1000 bytes" in result.stderr


def test_credentials_go_as_basic_auth_and_are_never_shown(serve, tmp_path):
    def answer(handler):
        expected = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
        if handler.headers.get("Authorization") != expected:
            send(handler, 401, b'{"error": "who are you?"}')
        elif handler.command == "GET":
            send(handler, 200, b'{"model_version_status": [{"version": "1", "state": "END"}]}')
        else:
            send(handler, 400, json.dumps({"error": f"rejected {handler.path}"}).encode())

    server = serve(answer)
    url = server.url(f"user:{SECRET}@")
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(IMAGE1.read_bytes())
    runs = [
        ["--server_url", url, "--image_path", str(IMAGE1), "--output_json", str(out / "x.json")],
        ["--server_url", url, str(photos), "--output_dir", str(out)],
        ["status", "--server_url", url],
        ["metadata", "--server_url", url],
        ["--server_url", url.replace(f":{server.server_port}", ":99999"), str(IMAGE1)],
    ]
    for args in runs:
        result = CliRunner().invoke(cli, args)
        assert SECRET not in result.stdout + result.stderr, (args, result.output)
    assert f"user:***@{HOST}" in result.stderr  # the bad URL is shown, redacted
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    summary = (out / "summary.jsonl").read_text()
    assert "rejected /v1/models/" in summary  # the server was reached, with the credentials
    assert None not in server.authorizations


def test_credentials_from_the_environment(serve):
    """TFS_SERVER_URL keeps the password out of the process list."""
    server = serve(lambda handler: send(handler, 200, json.dumps({"predictions": [DOG]}).encode()))
    result = CliRunner(env={"TFS_SERVER_URL": server.url(f"user:{SECRET}@")}).invoke(
        cli, ["--image_path", str(IMAGE1)]
    )
    assert result.exit_code == 0, result.output
    assert server.authorizations[-1].startswith("Basic ")
    assert SECRET not in result.output


def test_an_authorization_header_from_a_file_or_the_environment(serve, tmp_path):
    """For servers behind an authenticating proxy: the value never comes from argv and is
    never shown; the file wins over the environment."""
    server = serve(lambda handler: send(handler, 200, json.dumps({"predictions": [DOG]}).encode()))
    token_file = tmp_path / "token"
    token_file.write_text(f"Bearer {SECRET}-file\n")
    env = {"TFS_AUTHORIZATION": f"Bearer {SECRET}-env"}
    for args, sent in [
        ([], f"Bearer {SECRET}-env"),
        (["--authorization_file", str(token_file)], f"Bearer {SECRET}-file"),
    ]:
        result = CliRunner(env=env).invoke(
            cli, ["--server_url", server.url(), "--image_path", str(IMAGE1), *args]
        )
        assert result.exit_code == 0, result.output
        assert server.authorizations[-1] == sent
        assert SECRET not in result.output
    token_file.write_text("Bearer a\nX-Injected: 1")
    result = CliRunner().invoke(
        cli, ["status", "--server_url", server.url(), "--authorization_file", str(token_file)]
    )
    assert result.exit_code == 2 and "must be one line" in result.stderr
