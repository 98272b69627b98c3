"""The seed's whole loop, end to end: model -> serving image -> registry -> container -> client.

What a user does by hand in the seed ("test the custom server"), on real parts: build_image.py
packages a model onto the serving base image and pushes it to a local registry; the image is
pulled back by the printed digest and run as uid 1000 with host networking, as a cluster would
run it; client.py waits for the model and then, with the seed's own command line, finds the two
dogs in image1.jpg. Then version 2 (the pixel model) joins the model dir: the client must get it
by default and switch from {"b64"} to pixels by itself, from the model's metadata.

The base image (image_builder.base_image: tensorflow/serving's contract, the project's local
server inside) is built on the first run on a machine (a few minutes) and reused afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest
from PIL import Image

from image_builder.base_image import ensure_base_image
from tests.conftest import COCO_DOG, ENCODED_MODEL, IMAGE1, PIXEL_MODEL, ROOT, SHARED_LABELS
from tests.docker_support import DockerCleanup, LocalRegistry, free_port

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

MODEL_NAME = "ssd_mobilenet"
CONTAINER_PREFIX = "tfs-sidecar-e2e-"


@pytest.fixture(scope="module")
def serving_base_image(docker_client: docker.DockerClient) -> str:
    """Built once per machine and kept: it is a cache, like a pulled tensorflow/serving."""
    return ensure_base_image(docker_client)


def run(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """A project command line, run from the project root as a user would."""
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def build_and_push(model_dir: Path, base_image: str, registry: LocalRegistry, tag: str) -> dict:
    proc = run(
        *("build_image.py", "--model_dir", model_dir, "--model_name", MODEL_NAME),
        *("--base_image", base_image, "--registry", f"{registry.host}/e2e", "--tag", tag),
        *("--push", "--json"),
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@contextmanager
def serving_container(client: docker.DockerClient, image: str) -> Iterator[int]:
    """Run `image` as a cluster would (uid 1000, no root); yield its REST port; always remove it.

    As with tensorflow/serving, the container's arguments are appended to the entrypoint's flags
    and the last one wins: free ports instead of 8501/8500, which may be taken on this machine.
    """
    port = free_port()
    container = client.containers.run(
        image,
        command=[f"--rest_api_port={port}", f"--port={free_port()}"],
        user="1000",
        network_mode="host",
        name=f"{CONTAINER_PREFIX}{uuid.uuid4().hex[:12]}",
        detach=True,
    )
    try:
        yield port
        container.stop(timeout=20)
        exit_code = container.wait(timeout=30)["StatusCode"]
        assert exit_code == 0, f"server did not stop cleanly on SIGTERM:\n{logs(container)}"
    except BaseException:
        print(f"--- container log ---\n{logs(container)}", file=sys.stderr)
        raise
    finally:
        container.remove(force=True)


def logs(container) -> str:
    return container.logs().decode(errors="replace")[-4000:]


def serve_and_detect(
    client: docker.DockerClient, cleanup: DockerCleanup, pushed: dict, out_dir: Path
) -> dict:
    """Pull `pushed` back by digest, run it, and run the seed's client command against it."""
    client.images.remove(cleanup.image(pushed["image"]))  # the pull must come from the registry
    pulled = client.images.pull(cleanup.image(pushed["reference"]))
    assert pulled.id == pushed["image_id"]

    with serving_container(client, pushed["reference"]) as port:
        status = run(
            *("client.py", "status", "--wait", "120", "--host", "127.0.0.1"),
            *("--port", str(port), "--model_name", MODEL_NAME),
        )
        assert status.returncode == 0, status.stdout + status.stderr
        output_json = out_dir / "out_image1.json"
        # The seed's command line, only the port differs.
        predict = run(
            *(
                "client.py",
                "--server_url",
                f"http://localhost:{port}/v1/models/{MODEL_NAME}:predict",
            ),
            *("--image_path", IMAGE1, "--output_json", output_json),
            *("--save_output_image", "True", "--label_map", SHARED_LABELS),
        )
        assert predict.returncode == 0, predict.stdout + predict.stderr

    result = json.loads(output_json.read_text())
    dogs = result["detections"][:2]
    assert [d["class_id"] for d in dogs] == [COCO_DOG, COCO_DOG], result["detections"]
    assert [d["label"] for d in dogs] == ["dog", "dog"]
    assert all(d["score"] == pytest.approx(0.71, abs=0.03) for d in dogs), dogs
    with Image.open(output_json.with_suffix(".jpg")) as annotated:
        assert annotated.size == (1024, 636)
    return result


def test_model_to_image_to_container_to_detections(
    docker_client: docker.DockerClient,
    local_registry: LocalRegistry,
    docker_cleanup: DockerCleanup,
    serving_base_image: str,
    tmp_path: Path,
) -> None:
    base_path = tmp_path / MODEL_NAME
    shutil.copytree(ENCODED_MODEL / "1", base_path / "1")

    v1 = build_and_push(base_path, serving_base_image, local_registry, "v1")
    first = serve_and_detect(docker_client, docker_cleanup, v1, tmp_path / "v1")
    assert first["model"]["version"] == "1"
    assert first["request"]["encoding"] == "b64"  # DT_STRING input: the JPEG file, as sent

    # Version 2 takes uint8 pixels: the client must see it in the metadata and adapt.
    shutil.copytree(PIXEL_MODEL / "1", base_path / "2")
    v2 = build_and_push(base_path, serving_base_image, local_registry, "v2")
    second = serve_and_detect(docker_client, docker_cleanup, v2, tmp_path / "v2")
    assert second["model"]["version"] == "2"
    assert second["request"]["encoding"] == "pixels"

    left = docker_client.containers.list(all=True, filters={"name": CONTAINER_PREFIX})
    assert not left, f"containers left behind: {[c.name for c in left]}"
