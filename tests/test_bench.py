"""`client.py bench` against the local TF Serving stand-in serving the real models."""

import json

import pytest

from object_detection.images import load_image
from sidecar_testing.cli import run
from sidecar_testing.data import IMAGE1, IMAGE2
from sidecar_testing.servers import predict_requests, rest_request_body, wait_for_requests

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LATENCY_ORDER = ["min", "p50", "p90", "p95", "p99", "max"]


def bench(server, *args):
    return run("bench", "--server_url", server.predict_url, *args)


def test_counts_percentiles_bytes_and_plot(encoded_server, tmp_path):
    plot = tmp_path / "latency.png"
    before = predict_requests(encoded_server)
    result = bench(
        encoded_server, "--requests", 12, "--concurrency", 3, "--warmup", 2,
        "--json", "--plot", plot, IMAGE1, IMAGE2,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert (figures["requests"], figures["ok"], figures["errors"]) == (12, 12, {})
    assert (figures["concurrency"], figures["warmup_requests"]) == (3, 2)
    # Warm-up requests reach the server but are not counted.
    assert wait_for_requests(encoded_server, before + 14) == before + 14

    latency = [figures["latency_ms"][name] for name in LATENCY_ORDER]
    assert latency == sorted(latency) and latency[0] > 0
    assert latency[0] <= figures["latency_ms"]["mean"] <= latency[-1]
    assert figures["throughput_rps"] == pytest.approx(12 / figures["duration_s"], rel=0.01)
    # The two photos alternate; each goes as {"b64": ...} of its file, 4/3 of its size.
    size = (IMAGE1.stat().st_size + IMAGE2.stat().st_size) / 2
    assert figures["bytes_sent_per_request"] == pytest.approx(size * 4 / 3, rel=0.01)
    assert plot.read_bytes()[:8] == PNG_MAGIC


def test_duration_and_human_report(pixel_server):
    result = bench(pixel_server, "--duration", 1.5, "--concurrency", 2, "--max_side", 300, IMAGE1)
    assert result.exit_code == 0, result.output
    head, throughput, latency, errors = result.stdout.splitlines()
    assert "at concurrency 2" in head and "(after 2 warm-up requests)" in head
    body = rest_request_body(load_image(IMAGE1), "pixels", max_side=300)[0]
    assert f", {len(body):,} bytes sent per request" in head
    requests, seconds = int(head.split()[0]), float(head.split(" in ")[1].split()[0])
    assert requests >= 2 and seconds >= 1.4
    assert throughput.startswith("  throughput: ") and "requests/s" in throughput
    words = latency.split()
    assert words[:2] == ["latency", "ms:"]
    assert words[2::2] == ["min", "mean", "p50", "p90", "p95", "p99", "max"]
    values = [float(word) for word in words[3::2]]
    assert values[0] <= values[2] <= values[3] <= values[4] <= values[5] <= values[6]
    assert errors == "  errors: none"


def test_errors_are_counted_by_kind(pixel_server):
    # b64 bodies to a model that takes pixels: the server refuses each one with HTTP 400.
    result = bench(pixel_server, "--requests", 4, "--encoding", "b64", "--json", IMAGE1)
    assert result.exit_code == 1
    figures = json.loads(result.stdout)
    assert figures["errors"] == {"HTTP 400": 4}
    assert figures["ok"] == 0 and figures["throughput_rps"] == 0
    assert set(figures["latency_ms"].values()) == {None}


def test_usage_errors(pixel_server):
    result = bench(pixel_server, "--requests", 3, "--duration", 1, IMAGE1)
    assert result.exit_code == 2 and "not both" in result.stderr
    result = bench(pixel_server, "--requests", 3)
    assert result.exit_code == 2 and "Missing argument" in result.stderr
    result = run("bench", "--server_url", "http://127.0.0.1:9/v1/models/m", IMAGE1)
    assert result.exit_code == 1 and "cannot reach TF Serving" in result.stderr
