"""The pytest fixtures and hooks of this project's tests, registered by tests/conftest.py.

Data paths and helpers are plain modules beside this one (sidecar_testing.data, .servers,
.docker, .reference, .cli): tests import those, and only ask pytest for what has a lifetime
(servers, registries, images, the Docker daemon). The Docker fixtures are described in
sidecar_testing.docker.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
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
from sidecar_testing.half_plus_two import build_half_plus_two
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
    """model_kind(KIND): the base path of a test model shaped like an export kind
    (sidecar_testing.model_kinds), built on first use and kept for the session."""
    root = tmp_path_factory.mktemp("model-kinds")

    def build(kind: str) -> Path:
        from sidecar_testing.model_kinds import build_kind  # TensorFlow: only when asked

        return build_kind(kind, root)

    return build


@pytest.fixture(scope="session")
def kind_server(
    model_kind: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], LocalServer]]:
    """kind_server(KIND): the local server serving that kind's model as KIND. One server
    process serves every kind (a --model_config_file listing them all), started on first use:
    one start instead of one per kind."""
    from sidecar_testing.model_kinds import KINDS

    config = tmp_path_factory.mktemp("kind-server") / "models.config"
    entries = "".join(
        f'  config {{ name: "{kind}" base_path: "{model_kind(kind)}" model_platform: '
        '"tensorflow" }\n'
        for kind in sorted(KINDS)
    )
    server: list[LocalServer] = []
    with ExitStack() as stack:

        def serving(kind: str) -> LocalServer:
            if not server:
                config.write_text("model_config_list {\n" + entries + "}\n")
                started = LocalServer(None, extra_args=[f"--model_config_file={config}"])
                server.append(stack.enter_context(started))
            return server[0].serving(kind)

        yield serving


@pytest.fixture(scope="session")
def half_plus_two_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base path of a half_plus_two SavedModel (sidecar_testing.half_plus_two), built once."""
    return build_half_plus_two(tmp_path_factory.mktemp("half_plus_two"))


@pytest.fixture(scope="session")
def half_plus_two_server(half_plus_two_model: Path) -> Iterator[LocalServer]:
    """The local TF Serving stand-in serving the half_plus_two model as "half_plus_two"."""
    with LocalServer(half_plus_two_model, model_name="half_plus_two") as server:
        yield server


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
