"""The local server against hostile or careless clients (issue 12), over real loopback sockets.

Burst of connections, slow and stalled clients, oversized bodies, request smuggling, deeply
nested JSON, huge numbers, memory after a burst: each against a real server process.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serving.http_server import Limits
from sidecar_testing.data import ENCODED_MODEL, IMAGE1, IMAGE2, PIXEL_MODEL
from sidecar_testing.servers import HOST, LocalServer

MODEL = "limits"
HEADER_TIMEOUT_S, IDLE_TIMEOUT_S = 2, 3
MAX_BODY = 4 << 20


@pytest.fixture(scope="module")
def server():
    flags = [
        f"--rest_api_header_timeout_s={HEADER_TIMEOUT_S}",
        f"--rest_api_idle_timeout_s={IDLE_TIMEOUT_S}",
        f"--rest_api_max_body_bytes={MAX_BODY}",
    ]
    with LocalServer(ENCODED_MODEL, model_name=MODEL, extra_args=flags) as server:
        yield server


def b64_body(image=IMAGE1) -> bytes:
    b64 = base64.b64encode(image.read_bytes()).decode()
    return json.dumps({"instances": [{"b64": b64}]}).encode()


def exchange(port: int, data: bytes, half_close: bool = False, timeout: float = 10) -> bytes:
    """Send raw bytes on a new connection; everything the server sends until it closes."""
    with socket.create_connection((HOST, port), timeout=timeout) as conn:
        conn.sendall(data)
        if half_close:
            conn.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_defaults_admit_a_12mp_photo_and_stay_under_kubernetes_grace() -> None:
    defaults = Limits()
    assert defaults.max_body_bytes >= 512 << 20
    assert defaults.backlog >= 128
    assert defaults.shutdown_deadline_s < 30


def test_64_simultaneous_new_connections_are_all_answered_promptly(server) -> None:
    barrier = threading.Barrier(64)

    def status(_: int) -> tuple[int, float]:
        barrier.wait()
        start = time.perf_counter()
        response = requests.get(server.model_url, timeout=30)
        return response.status_code, time.perf_counter() - start

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(status, range(64)))
    assert [code for code, _ in results] == [200] * 64
    # The old server's backlog of 5 made some wait 1-8 s (SYN retries) or fail after 10 s;
    # here each is a few ms of work, so even a loaded machine stays far below that.
    assert max(seconds for _, seconds in results) < 2.5, sorted(s for _, s in results)


def test_1000_idle_and_slowloris_connections_neither_block_a_predict_nor_stay(server) -> None:
    conns = []
    try:
        for i in range(1000):
            conn = socket.create_connection((HOST, server.port), timeout=10)
            if i % 2:  # slowloris: headers started, never finished
                conn.sendall(b"POST /v1/models/limits:predict HTTP/1.1\r\nHost: x\r\n")
            conns.append(conn)
        response = requests.post(server.predict_url, data=b64_body(), timeout=30)
        assert response.status_code == 200
        # Past the header timeout (slowloris) and idle timeout, plus a sweep, all are closed.
        time.sleep(IDLE_TIMEOUT_S + 1.5)
        for conn in conns:
            conn.settimeout(5)
            assert conn.recv(100) == b""  # closed, nothing sent (no request was complete)
        assert requests.get(server.model_url, timeout=10).status_code == 200
    finally:
        for conn in conns:
            conn.close()
    assert "request headers not complete within 2 s" in server.stderr()


def test_a_body_over_the_limit_is_413_before_it_is_read(server) -> None:
    before = server.rss_mb()
    with socket.create_connection((HOST, server.port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/models/limits:predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 100000000000\r\n\r\n"
        )
        answer = conn.makefile("rb").read()  # the server closes after answering
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer
    assert b"Connection: close" in head
    assert "larger than 4194304 bytes" in json.loads(body)["error"]
    # A chunked body is counted as it comes, and cut at the limit.
    chunk = b"x" * (1 << 20)
    frame = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(6)) + b"0\r\n\r\n"
    answer = exchange(
        server.port,
        b"POST /v1/models/limits:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + frame,
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert server.rss_mb() - before < 50


SMUGGLED = b"GET /v1/models/limits/versions/777001 HTTP/1.1\r\nHost: x\r\n\r\n"
PREDICT = b"POST /v1/models/limits:predict HTTP/1.1\r\nHost: x\r\n"
SMUGGLING = {
    "TE with a trailing space": b"Transfer-Encoding: chunked \r\n\r\n" + SMUGGLED,
    "gzip, chunked": b"Transfer-Encoding: gzip, chunked\r\n\r\n" + SMUGGLED,
    "two TE headers": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
    + SMUGGLED,
    "two Content-Lengths": b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED)
    + SMUGGLED,
    "CL and TE": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "negative CL": b"Content-Length: -1\r\n\r\n" + SMUGGLED,
    "CL 1_0": b"Content-Length: 1_0\r\n\r\n" + SMUGGLED,
    "CL +10": b"Content-Length: +10\r\n\r\n" + SMUGGLED,
    "chunk size 0x11": b"Transfer-Encoding: chunked\r\n\r\n0x11\r\n" + SMUGGLED,
    "chunk size +10": b"Transfer-Encoding: chunked\r\n\r\n+10\r\n" + SMUGGLED,
    "chunk size -1": b"Transfer-Encoding: chunked\r\n\r\n-1\r\n" + SMUGGLED,
    "folded header": b"Content-Length: 2\r\n x\r\n\r\n{}" + SMUGGLED,
}


@pytest.mark.parametrize("headers", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_each_smuggling_pattern_is_400_and_closed_and_never_runs(server, headers) -> None:
    answer = exchange(server.port, PREDICT + headers)  # returns once the server closes
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert answer.count(b"HTTP/1.1") == 1  # one answer: the smuggled request got none
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    assert set(json.loads(body)) == {"error"}
    assert "777001" not in server.stderr()


def test_an_incomplete_body_is_never_run(server) -> None:
    body = b64_body()
    ran = f"POST /v1/models/{MODEL}:predict 200"
    before = server.stderr().count(ran)
    answer = exchange(
        server.port,
        PREDICT + b"Content-Length: %d\r\n\r\n" % (len(body) + 10) + body,
        half_close=True,
    )
    assert answer == b""  # a half-close ends the connection before the body is complete
    time.sleep(0.5)
    assert server.stderr().count(ran) == before
    assert f"POST /v1/models/{MODEL}:predict 499" in server.stderr()


def test_200kb_of_nested_brackets_is_400_in_well_under_a_second(server) -> None:
    for body in (b"[" * 200_000, b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        start = time.perf_counter()
        response = requests.post(server.predict_url, data=body, timeout=30)
        assert time.perf_counter() - start < 1.0
        assert response.status_code == 400
        assert "nested deeper than 64 levels" in response.json()["error"]


@pytest.mark.parametrize("depth", [65, 990])
def test_nesting_past_64_levels_is_400(server, depth: int) -> None:
    body = b'{"instances": [' + b"[" * depth + b'{"b64": "AAAA"}' + b"]" * depth + b"]}"
    response = requests.post(server.predict_url, data=body, timeout=30)
    assert response.status_code == 400, response.text
    assert "nested deeper than 64 levels" in response.json()["error"]


def test_a_5000_digit_integer_is_400(server) -> None:
    response = requests.post(server.predict_url, data=b'{"instances": [' + b"9" * 5000 + b"]}")
    assert response.status_code == 400
    assert response.json() == {"error": "JSON Parse error: Number too big to be stored in double."}


def test_errors_are_json_logged_on_one_escaped_line_without_banner_or_traceback(server) -> None:
    # The signature name comes back in the error text as sent: an ANSI escape, decoded.
    ansi = b'{"signature_name": "\\u001b[31mred", "instances": [1]}'
    response = requests.post(server.predict_url, data=ansi)
    assert response.status_code == 400
    assert "\x1b[31mred" in response.json()["error"]
    assert "Server" not in response.headers or "BaseHTTP" not in response.headers["Server"]
    for garbage in (b"NOT HTTP\r\n\r\n", b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n"):
        answer = exchange(server.port, garbage)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 4"), answer[:200]
        assert b"Content-Type: application/json" in head
        assert set(json.loads(body)) == {"error"}
    # A client that goes away mid-body.
    with socket.create_connection((HOST, server.port)) as conn:
        conn.sendall(PREDICT + b"Content-Length: 1000\r\n\r\n{")
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while "the client went away" not in server.stderr() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.stderr()
    assert "\x1b" not in log
    assert "\\x1b[31mred" in log
    assert "the client went away" in log
    assert "Traceback" not in log
    # No "Internal error" line (status 500) for what was the client's doing.
    assert re.search(r" 500 [0-9.]+ ms", log) is None


def test_a_stalled_client_does_not_hold_up_sigterm_past_the_deadline() -> None:
    flags = ["--rest_api_shutdown_deadline_s=3", "--rest_api_max_in_flight=1"]
    with LocalServer(ENCODED_MODEL, model_name=MODEL, extra_args=flags) as server:
        stalled = socket.create_connection((HOST, server.port))
        stalled.sendall(PREDICT + b"Content-Length: 1000\r\n\r\n{")  # in flight, then silence
        half_headers = socket.create_connection((HOST, server.port))
        half_headers.sendall(PREDICT)
        time.sleep(0.5)
        # The one slot is taken: the next request is told to retry.
        response = requests.post(server.predict_url, data=b64_body(), timeout=10)
        assert response.status_code == 503
        assert "retry" in response.json()["error"]
        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
        assert time.monotonic() - start < 3 + 2
        assert "shutdown deadline of 3 s passed" in server.stderr()
        stalled.close()
        half_headers.close()


def test_idle_rss_returns_near_its_post_load_level_after_pixel_requests() -> None:
    import numpy as np
    from PIL import Image

    from tfserving.encoding import pixels_request

    body = pixels_request(np.asarray(Image.open(IMAGE2).convert("RGB")), "serving_default")
    with LocalServer(PIXEL_MODEL, model_name="pixels") as server, requests.Session() as session:
        session.post(server.predict_url, data=b'{"instances": [[[[1, 2, 3]]]]}')
        time.sleep(1.5)
        post_load, idle = server.rss_mb(), []
        for _ in range(2):  # two "benches"
            for _ in range(6):
                assert session.post(server.predict_url, data=body).status_code == 200
            time.sleep(3.5)  # idle (2 s): the freed request buffers go back to the kernel
            idle.append(server.rss_mb())
    # The old server: 0.98 GB after load, then 1.68, 2.11, 2.35 GB after each bench, kept.
    # Here about +100-150 MB (TensorFlow's own caches, ~+80 MB, included), and no growth.
    assert max(idle) - post_load < 250, (post_load, idle)
    assert idle[1] - idle[0] < 60, (post_load, idle)
