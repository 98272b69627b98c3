"""The seed's whole loop, end to end: model -> serving image -> registry -> container -> client.

What a user does by hand in the seed ("test the custom server"), on real parts: build_image.py
packages a model onto the serving base image and pushes it to a local registry; the image is
pulled back by the printed digest and run as uid 1000 with host networking, as a cluster would
run it; client.py waits for the model and then, with the seed's own command line, finds the two
dogs in image1.jpg. Then version 2 (the pixel model) joins the model dir: the client must get it
by default and switch from {"b64"} to pixels by itself, from the model's metadata.

The base image (serving.base_image: tensorflow/serving's contract, the project's local
server inside) is built on the first run on a machine (a few minutes) and reused afterwards.
Quick tests of its recipe (apt source, content keys, contract) are at the end.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container
from PIL import Image

from serving.base_image import (
    REQUIREMENTS,
    BaseImageError,
    app_files,
    base_key,
    debian_source,
    ensure_base_image,
    project_wheel,
    runtime_key,
)
from sidecar_testing.data import COCO_DOG, ENCODED_MODEL, IMAGE1, PIXEL_MODEL, ROOT, SHARED_LABELS
from sidecar_testing.docker import DockerCleanup, LocalRegistry
from sidecar_testing.servers import free_port

MODEL_NAME = "ssd_mobilenet"
CONTAINER_PREFIX = "tfs-sidecar-e2e-"


@pytest.fixture(scope="module")
def serving_base_image(docker_client: docker.DockerClient, pytestconfig: pytest.Config) -> str:
    """Built once per machine and kept: it is a cache, like a pulled tensorflow/serving.

    Its progress goes straight to the terminal: the first build is minutes of CI log otherwise
    silent.
    """
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
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


def logs(container: Container) -> str:
    return container.logs().decode(errors="replace")[-4000:]


@contextmanager
def serving_container(client: docker.DockerClient, image: str) -> Iterator[tuple[int, int]]:
    """Run `image` as a cluster would (uid 1000, no root); yield its REST and gRPC ports; always
    remove it.

    As with tensorflow/serving, the container's arguments are appended to the entrypoint's flags
    and the last one wins: free ports instead of 8501/8500, which may be taken on this machine.
    """
    port, grpc_port = free_port(), free_port()
    container = client.containers.run(
        image,
        command=[f"--rest_api_port={port}", f"--port={grpc_port}"],
        user="1000",
        network_mode="host",
        name=f"{CONTAINER_PREFIX}{uuid.uuid4().hex[:12]}",
        detach=True,
    )
    try:
        yield port, grpc_port
        container.stop(timeout=20)
        exit_code = container.wait(timeout=30)["StatusCode"]
        assert exit_code == 0, f"server did not stop cleanly on SIGTERM:\n{logs(container)}"
    except BaseException:
        print(f"--- container log ---\n{logs(container)}", file=sys.stderr)
        raise
    finally:
        container.remove(force=True)


def serve_and_detect(
    client: docker.DockerClient,
    cleanup: DockerCleanup,
    pushed: dict,
    out_dir: Path,
    expect: Callable[[list[dict]], None],
) -> dict:
    """Pull `pushed` back by digest, run it, and run the seed's client command against it;
    `expect` checks the detections (against the same model called in-process)."""
    client.images.remove(cleanup.image(pushed["image"]))  # the pull must come from the registry
    pulled = client.images.pull(cleanup.image(pushed["reference"]))
    assert pulled.id == pushed["image_id"]

    with serving_container(client, pushed["reference"]) as (port, grpc_port):
        status = run(
            *("client.py", "status", "--wait", "120", "--host", "127.0.0.1"),
            *("--port", str(port), "--model_name", MODEL_NAME),
        )
        assert status.returncode == 0, status.stdout + status.stderr
        # The container answers on TF Serving's gRPC port too.
        over_grpc = run(
            *("client.py", "status", "--protocol", "grpc", "--host", "127.0.0.1"),
            *("--port", str(grpc_port), "--model_name", MODEL_NAME),
        )
        assert over_grpc.returncode == 0, over_grpc.stdout + over_grpc.stderr
        assert over_grpc.stdout == status.stdout
        output_json = out_dir / "out_image1.json"
        server_url = f"http://localhost:{port}/v1/models/{MODEL_NAME}:predict"
        # The seed's command line, only the port differs.
        predict = run(
            *("client.py", "--server_url", server_url),
            *("--image_path", IMAGE1, "--output_json", output_json),
            *("--save_output_image", "True", "--label_map", SHARED_LABELS),
        )
        assert predict.returncode == 0, predict.stdout + predict.stderr

    result = json.loads(output_json.read_text())
    dogs = result["detections"][:2]
    assert [d["class_id"] for d in dogs] == [COCO_DOG, COCO_DOG], result["detections"]
    assert [d["label"] for d in dogs] == ["dog", "dog"]
    expect(result["detections"])  # the container runs the same graph on the same CPU
    [picture] = out_dir.glob("*.jpg")  # --save_output_image: the annotated photo beside the JSON
    with Image.open(picture) as annotated:
        assert annotated.size == (1024, 636)
    return result


@pytest.mark.docker
@pytest.mark.e2e
def test_model_to_image_to_container_to_detections(
    docker_client: docker.DockerClient,
    local_registry: LocalRegistry,
    docker_cleanup: DockerCleanup,
    serving_base_image: str,
    model_reference,
    tmp_path: Path,
) -> None:
    def matches(model: Path) -> Callable[[list[dict]], None]:
        return lambda detections: model_reference.assert_matches(detections, model, IMAGE1)

    base_path = tmp_path / MODEL_NAME
    shutil.copytree(ENCODED_MODEL / "1", base_path / "1")

    v1 = build_and_push(base_path, serving_base_image, local_registry, "v1")
    first = serve_and_detect(
        docker_client, docker_cleanup, v1, tmp_path / "v1", matches(ENCODED_MODEL)
    )
    assert first["model"]["version"] == "1"
    assert first["request"]["encoding"] == "b64"  # DT_STRING input: the JPEG file, as sent

    # Version 2 takes uint8 pixels: the client must see it in the metadata and adapt.
    shutil.copytree(PIXEL_MODEL / "1", base_path / "2")
    v2 = build_and_push(base_path, serving_base_image, local_registry, "v2")
    second = serve_and_detect(
        docker_client, docker_cleanup, v2, tmp_path / "v2", matches(PIXEL_MODEL)
    )
    assert second["model"]["version"] == "2"
    assert second["request"]["encoding"] == "pixels"

    left = docker_client.containers.list(all=True, filters={"name": CONTAINER_PREFIX})
    assert not left, f"containers left behind: {[c.name for c in left]}"


# The serving base image's recipe --------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.e2e
def test_base_image_keeps_tensorflow_serving_contract_and_is_cached(
    docker_client: docker.DockerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base_image = ensure_base_image(docker_client)
    config = docker_client.images.get(base_image).attrs["Config"]
    assert {"MODEL_BASE_PATH=/models", "MODEL_NAME=model"} <= set(config["Env"])
    assert set(config["ExposedPorts"]) == {"8500/tcp", "8501/tcp"}
    assert config["Entrypoint"] == ["/usr/bin/tf_serving_entrypoint.sh"]
    assert not config["Cmd"]  # `docker run IMAGE --flag` appends only what the user gives
    assert config["User"] == "1000:1000"

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="serving.base_image"):
        assert ensure_base_image(docker_client) == base_image
    messages = [record.getMessage() for record in caplog.records]
    assert messages and all(m.startswith("reusing ") for m in messages), messages


def write_apt_config(apt_dir: Path, sources_list: str, deb822: str) -> Path:
    (apt_dir / "sources.list.d").mkdir(parents=True)
    (apt_dir / "sources.list").write_text(sources_list)
    (apt_dir / "sources.list.d" / "debian.sources").write_text(deb822)
    (apt_dir / "sources.list.d" / "other.list.disabled").write_text(
        "deb http://disabled.example/debian bookworm main\n"
    )
    return apt_dir


def test_debian_mirror_is_read_from_apt_deb822_sources(tmp_path: Path) -> None:
    apt_dir = write_apt_config(
        tmp_path,
        "# deb http://commented.example/debian bookworm main\n",
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb-src\nURIs: http://source.example/debian\nSuites: bookworm\n\n"
        "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\n\n"
        "Types: deb\n# a comment inside the stanza\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm\n bookworm-updates\nComponents: main\nSigned-By: /keys/debian.gpg\n",
    )
    source = debian_source("bookworm", apt_dir)
    assert source.uri == "http://mirror.example/debian"
    assert source.suites == ("bookworm", "bookworm-updates")
    assert source.keyring == Path("/keys/debian.gpg")


def test_debian_mirror_is_read_from_one_line_sources_list(tmp_path: Path) -> None:
    apt_dir = write_apt_config(
        tmp_path,
        "deb-src http://source.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/keys/debian.gpg] http://mirror.example/debian bookworm main\n",
        "",
    )
    source = debian_source("bookworm", apt_dir)
    assert source.uri == "http://mirror.example/debian"
    assert source.keyring == Path("/keys/debian.gpg")


def test_no_apt_source_for_the_suite_says_what_to_do(tmp_path: Path) -> None:
    apt_dir = write_apt_config(tmp_path, "deb http://mirror.example/ubuntu noble main\n", "")
    with pytest.raises(BaseImageError, match=r"no apt source for Debian bookworm in .*: add one$"):
        debian_source("bookworm", apt_dir)


def test_code_layer_is_the_project_wheel_and_the_entrypoint(tmp_path: Path) -> None:
    """The image gets what `pip install .` installs (package data too), not the checkout."""
    first = app_files(project_wheel(ROOT, tmp_path / "first"))
    files = {name: (content, mode) for name, content, mode in first}
    app = "/opt/tfs-sidecar/"
    for module in ("serving/local_server.py", "tfserving/conventions.py", "serving/base_image.py"):
        assert app + module in files
    assert not [name for name in files if name.startswith((app + "tests/", app + "benchmarks/"))]
    entrypoint, mode = files["/usr/bin/tf_serving_entrypoint.sh"]
    assert entrypoint.startswith(b"#!/bin/bash") and mode == 0o755
    assert files[app + "serving/tf_serving_entrypoint.sh"][0] == entrypoint
    # The same code gives the same key, whatever the wheel's timestamps.
    again = app_files(project_wheel(ROOT, tmp_path / "again"))
    assert base_key("runtime:1", again) == base_key("runtime:1", first)


def test_runtime_key_follows_the_requirements(tmp_path: Path) -> None:
    for name in REQUIREMENTS:
        shutil.copy(ROOT / name, tmp_path / name)
    assert runtime_key(tmp_path) == runtime_key(ROOT)
    with (tmp_path / "requirements.txt").open("a") as f:
        f.write("rich>=13\n")
    assert runtime_key(tmp_path) != runtime_key(ROOT)
