"""The pytest fixtures and hooks of this project's tests, registered by tests/conftest.py.

Data paths and helpers are plain modules beside this one (sidecar_testing.data, .servers,
.docker, .reference, .cli): tests import those, and only ask pytest for what has a lifetime
(servers, registries, images, the Docker daemon). The Docker fixtures are described in
sidecar_testing.docker.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from sidecar_testing.data import ENCODED_MODEL, PIXEL_MODEL, SHARED
from sidecar_testing.docker import (
    REGISTRY_PASSWORD,
    REGISTRY_USER,
    DockerCleanup,
    DockerDaemon,
    LocalRegistry,
    import_tiny_base_image,
    remove_image,
)
from sidecar_testing.reference import ModelReference
from sidecar_testing.servers import LocalServer


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail at once, with the reason, when ../shared is missing: every model test needs it."""
    if not PIXEL_MODEL.is_dir():
        raise pytest.UsageError(
            f"test data not found at {SHARED}: clone the project beside shared/"
        )


@pytest.fixture(scope="session")
def model_reference() -> ModelReference:
    """In-process calls of the shared models (TensorFlow loads on first use)."""
    return ModelReference()


@pytest.fixture(scope="session")
def pixel_server() -> Iterator[LocalServer]:
    """The local TF Serving stand-in serving PIXEL_MODEL (uint8 pixels), one per test session."""
    with LocalServer(PIXEL_MODEL, model_name="ssd_mobilenet_v1_coco") as server:
        yield server


@pytest.fixture(scope="session")
def encoded_server() -> Iterator[LocalServer]:
    """The local TF Serving stand-in serving ENCODED_MODEL ({"b64"} JPEG/PNG bytes)."""
    with LocalServer(ENCODED_MODEL, model_name="ssd_mobilenet_v1_coco_encoded") as server:
        yield server


@pytest.fixture(scope="session")
def model_kind(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`model_kind("box_masks")`: the base path of a test model shaped like that export kind
    (sidecar_testing.model_kinds), built on first use (about 4 s) and kept for the session."""
    from sidecar_testing.model_kinds import build_kind  # TensorFlow: only for tests that ask

    root = tmp_path_factory.mktemp("model_kinds")
    return lambda kind: build_kind(kind, root)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client of a daemon that answers, started (and at the end stopped) here if none did."""
    daemon = DockerDaemon()
    client = daemon.start()
    yield client
    client.close()
    daemon.stop()


@pytest.fixture(scope="session")
def local_registry(docker_client: docker.DockerClient) -> Iterator[LocalRegistry]:
    """A registry on 127.0.0.1 that takes pushes and pulls without credentials."""
    with (
        tempfile.TemporaryDirectory(prefix="tfs-registry-") as workdir,
        LocalRegistry(Path(workdir)) as registry,
    ):
        yield registry


@pytest.fixture(scope="session")
def auth_registry(docker_client: docker.DockerClient) -> Iterator[LocalRegistry]:
    """A registry on 127.0.0.1 that wants REGISTRY_USER / REGISTRY_PASSWORD (htpasswd)."""
    with (
        tempfile.TemporaryDirectory(prefix="tfs-registry-auth-") as workdir,
        LocalRegistry(Path(workdir), (REGISTRY_USER, REGISTRY_PASSWORD)) as registry,
    ):
        yield registry


@pytest.fixture(scope="session")
def tiny_base_image(docker_client: docker.DockerClient) -> Iterator[str]:
    """A base image imported offline (nothing pulled from Docker Hub), removed at the end."""
    reference = import_tiny_base_image(docker_client)
    yield reference
    remove_image(docker_client, reference)


@pytest.fixture
def docker_cleanup(docker_client: docker.DockerClient) -> Iterator[DockerCleanup]:
    """Removes the images a test registered; then none of its build containers may be left."""
    cleanup = DockerCleanup(docker_client)
    yield cleanup
    cleanup.finish()
