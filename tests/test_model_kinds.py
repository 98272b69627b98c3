"""Every kind of detection export users bring, served by the local server, through the seed's
own command line: the two beagles of image1.jpg come out of each, at the shared SSD's boxes.

The models are the shared SSD wrapped into each export's shape (sidecar_testing.model_kinds),
so their detections are the SSD's whatever the wrapping: what differs is what the client must
send (uint8, float 0-255 or 0-1, half, encoded bytes; any size or a fixed one) and how it must
read the answer (batched or not, class ids or names). Each kind is a row of the table in
docs/client.md.
"""

from __future__ import annotations

import json

import pytest

from sidecar_testing.cli import run, seed_args
from sidecar_testing.model_kinds import KINDS
from sidecar_testing.reference import assert_two_dogs
from sidecar_testing.servers import predict_requests

# kind -> (the client's extra options, what the JSON says was sent, the signature called)
EXPECTED = {
    "tf1_saved_model": ([], "pixels", "serving_default"),
    "uint8_batch1": ([], "pixels", "serving_default"),
    "encoded_batch1": ([], "b64", "serving_default"),
    "float_0_255": ([], "pixels", "serving_default"),
    "half_0_255": ([], "pixels", "serving_default"),  # over gRPC: REST has no DT_HALF
    "float_0_1": (["--input_range", "0-1"], "pixels", "serving_default"),
    "hub_default": (["--input_range", "0-1"], "pixels", "default"),
    "fixed_300": ([], "pixels", "serving_default"),
    "box_masks": ([], "pixels", "serving_default"),
    "image_masks": ([], "pixels", "serving_default"),
    "keypoints": ([], "pixels", "serving_default"),
}
BOX_TOLERANCE = 0.03


def test_every_kind_is_tested() -> None:
    assert set(EXPECTED) == set(KINDS)


@pytest.fixture(params=sorted(KINDS))
def served(request: pytest.FixtureRequest, kind_server):
    kind = request.param
    return kind, kind_server(kind)


def test_the_seeds_command_line_finds_both_dogs(served, tmp_path) -> None:
    kind, server = served
    options, encoding, signature = EXPECTED[kind]
    output = tmp_path / "out.json"
    if kind == "half_0_255":
        options = [*options, "--protocol", "grpc", "--port", server.grpc_port]
    result = run(*seed_args(server.predict_url, output, *options))
    assert result.exit_code == 0, result.output
    document = json.loads(output.read_text())
    assert_two_dogs(document, BOX_TOLERANCE)
    assert document["request"]["encoding"] == encoding
    assert document["model"]["signature_name"] == signature
    if kind == "fixed_300":
        assert document["request"]["sent_size"] == [300, 300]
    assert (tmp_path / "out_annotated.jpg").stat().st_size > 0


def test_grpc_reads_what_rest_reads(served, tmp_path) -> None:
    """Float pixels travel as raw tensors over gRPC: same detections as REST's JSON. A DT_HALF
    input has no JSON form in TF Serving's REST API: the client says so and sends nothing."""
    kind, server = served
    options = EXPECTED[kind][0]
    if kind == "half_0_255":
        result = run(*seed_args(server.predict_url, tmp_path / "out.json", *options))
        assert result.exit_code == 1
        assert "DT_HALF, which TF Serving's REST API cannot take" in result.output
        assert "--protocol grpc" in result.output
        assert predict_requests(server) == 0
        return
    answers = []
    for protocol in ("rest", "grpc"):
        output = tmp_path / f"{protocol}.json"
        result = run(
            *seed_args(server.predict_url, output, *options), "--protocol", protocol,
            "--port", server.grpc_port if protocol == "grpc" else server.port,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        answers.append(json.loads(output.read_text())["detections"])
    rest, grpc = answers
    assert [d["label"] for d in grpc] == [d["label"] for d in rest]
    for over_grpc, over_rest in zip(grpc, rest, strict=True):
        assert over_grpc["box"] == pytest.approx(over_rest["box"], abs=1e-4)
        assert over_grpc["score"] == pytest.approx(over_rest["score"], abs=1e-4)


def test_metadata_says_what_predict_sends_and_reads(served) -> None:
    kind, server = served
    result = run("metadata", "--server_url", server.predict_url)
    assert result.exit_code == 0, result.output
    signature = EXPECTED[kind][2]
    assert f"predict without --signature_name calls {signature!r}" in result.output
    sends = result.output.split("predict sends: ")[1].splitlines()[0]
    reads = result.output.split("predict reads: ")[1].splitlines()[0]
    if kind == "hub_default":
        assert sends.startswith("RGB pixels as DT_FLOAT")
        assert "columnar 'inputs'" in sends
        assert "without a batch dimension" in reads
        assert "names from detection_class_entities" in reads
    else:
        assert "row 'instances'" in sends and "with a batch dimension" in reads
    if kind == "fixed_300":
        assert "resized to 300x300" in sends
    if kind == "half_0_255":
        assert "DT_HALF" in sends
    if kind.endswith("masks"):
        assert "masks" in reads
    if kind == "keypoints":
        assert "keypoints" in reads
