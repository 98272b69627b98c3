"""Real Docker machinery for tests: the daemon, local registries, an offline base image, cleanup.

Tests use it through these fixtures of sidecar_testing.plugin (benchmarks use `LocalRegistry`
and `import_tiny_base_image` directly):

- `docker_client` (session): a docker-py client for a daemon that answers. When none does,
  `scripts/dockerd.sh start` starts one, and it is stopped at the end only if we started it.
  When Docker cannot be had, the test is skipped locally but FAILS in CI (CI=true).
- `local_registry` / `auth_registry` (session): `docker-registry serve` (distribution 2.8) on
  127.0.0.1:FREE_PORT with our own config and a temporary storage dir; `auth_registry` asks
  for htpasswd (bcrypt) credentials, see `REGISTRY_USER` / `REGISTRY_PASSWORD`. dockerd treats
  127.0.0.0/8 registries as insecure by default, so pushes go over plain HTTP with no setup.
- `tiny_base_image` (session): a base image made offline with `docker import` of a root file
  system of a few directories, with tensorflow/serving's ENV and an entrypoint. Nothing is ever
  pulled from Docker Hub: pulling is tested against `local_registry`.
- `docker_cleanup` (function): remembers image references a test creates and removes them at the
  end, then asserts that no build container (named `tfs-sidecar-build-PID-...`) of the test
  process, or of a build_image.py process it registered with `.process(pid)`, is left. Builds
  of other processes sharing the daemon are not the test's business.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import docker
import pytest
import requests
import yaml
from docker.errors import DockerException, ImageNotFound

from image_builder.builder import CONTAINER_PREFIX
from sidecar_testing.data import ROOT
from sidecar_testing.servers import free_port

DOCKERD_SCRIPT = ROOT / "scripts" / "dockerd.sh"
REGISTRY_USER = "tester"
REGISTRY_PASSWORD = "s3cret-for-tests"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
TINY_BASE = "tfs-sidecar-test/tiny-base:1"


def in_ci() -> bool:
    """CI sets CI=true: there, Docker must be available, and its absence is a failure."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip locally, fail loudly in CI: a skipped Docker test must never pass as green there."""
    if in_ci():
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def closed_port() -> int:
    """A loopback port nothing listens on (taken free, then released): 'registry unreachable'."""
    return free_port()


class DockerDaemon:
    """A daemon that answers; started with scripts/dockerd.sh only when none does."""

    def __init__(self) -> None:
        self.started_here = False

    def _client(self) -> docker.DockerClient | None:
        try:
            client = docker.from_env()
            client.ping()
            return client
        except (DockerException, requests.RequestException):
            return None

    def start(self) -> docker.DockerClient:
        client = self._client()
        if client is not None:
            return client
        result = subprocess.run(
            [str(DOCKERD_SCRIPT), "start"], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            unavailable(f"no Docker daemon, and `{DOCKERD_SCRIPT} start` failed: {result.stderr}")
        self.started_here = True
        client = self._client()
        if client is None:
            unavailable("dockerd.sh started a daemon but the Docker SDK cannot reach it")
        return client

    def stop(self) -> None:
        if self.started_here:
            subprocess.run([str(DOCKERD_SCRIPT), "stop"], check=False)


class LocalRegistry:
    """`docker-registry serve` on 127.0.0.1, storage in a temp dir, optionally with htpasswd.

    >>> with LocalRegistry(tmp_path) as registry:
    ...     registry.host          # '127.0.0.1:PORT', to use as --registry
    ...     registry.manifest_digest("team/model_serving", "v1")
    """

    def __init__(self, workdir: Path, credentials: tuple[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.credentials = credentials
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.process: subprocess.Popen | None = None

    def _config(self) -> dict:
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "storage")},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.host, "secret": "tests-only"},
        }
        if self.credentials:
            user, password = self.credentials
            # registry 2 reads only bcrypt entries: -B
            entry = subprocess.run(
                ["htpasswd", "-Bbn", user, password], capture_output=True, text=True, check=True
            ).stdout
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(entry)
            config["auth"] = {"htpasswd": {"realm": "tfs-sidecar-tests", "path": str(htpasswd)}}
        return config

    def __enter__(self) -> LocalRegistry:
        if shutil.which("docker-registry") is None:
            unavailable("docker-registry is not installed (apt-get install docker-registry)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_file = self.workdir / "config.yml"
        config_file.write_text(yaml.safe_dump(self._config()))
        log = (self.workdir / "registry.log").open("wb")
        self.process = subprocess.Popen(
            ["docker-registry", "serve", str(config_file)], stdout=log, stderr=subprocess.STDOUT
        )
        self._wait_ready(log.name)
        return self

    def _wait_ready(self, log_path: str, timeout: float = 30) -> None:
        """/v2/ answers 200 (no auth) or 401 (auth) once the registry serves."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if requests.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401):
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"registry on {self.host} did not start: {Path(log_path).read_text()}")

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def manifest_digest(self, name: str, reference: str) -> str:
        """The digest the registry itself gives for NAME:REFERENCE (its HTTP API, not docker's)."""
        response = requests.get(
            f"{self.url}/v2/{name}/manifests/{reference}",
            headers={"Accept": MANIFEST_V2},
            auth=self.credentials,
            timeout=10,
        )
        response.raise_for_status()
        return response.headers["Docker-Content-Digest"]


def tiny_rootfs() -> bytes:
    """A root file system of empty directories: enough to create, copy into and commit."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("bin", "etc", "models", "tmp"):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
            tar.addfile(info)
    return buffer.getvalue()


def import_tiny_base_image(client: docker.DockerClient, reference: str = TINY_BASE) -> str:
    """Import the tiny root fs as `reference`, with tensorflow/serving's ENV and entrypoint."""
    repository, tag = reference.rsplit(":", 1)
    client.api.import_image_from_data(
        tiny_rootfs(),
        repository=repository,
        tag=tag,
        changes=[
            "ENV MODEL_BASE_PATH=/models",
            "ENV MODEL_NAME=model",
            'ENTRYPOINT ["/usr/bin/tf_serving_entrypoint.sh"]',
        ],
    )
    return reference


def build_containers(client: docker.DockerClient, pid: int | None = None) -> list[str]:
    """Names of build_image.py's containers, running or not: of process `pid`, or of any."""
    prefix = f"{CONTAINER_PREFIX}{pid}-" if pid else CONTAINER_PREFIX
    # The low-level list: containers.list() inspects each one, which blocks while a
    # put_archive holds the container.
    found = client.api.containers(all=True, filters={"name": f"^/?{prefix}"})
    return [c["Names"][0].lstrip("/") for c in found]


def remove_image(client: docker.DockerClient, reference: str) -> None:
    """Remove the image, containers using it too; an image already gone is no error."""
    with contextlib.suppress(ImageNotFound):
        client.images.remove(reference, force=True)


class DockerCleanup:
    """Images a test made, removed at teardown; then none of its build containers may be left."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.images: list[str] = []
        self.pids = [os.getpid()]  # builds run in-process (CliRunner), plus registered ones

    def image(self, reference: str) -> str:
        self.images.append(reference)
        return reference

    def process(self, pid: int) -> int:
        """Also check the build containers of a build_image.py subprocess."""
        self.pids.append(pid)
        return pid

    def left(self) -> list[str]:
        return [name for pid in self.pids for name in build_containers(self.client, pid)]

    def finish(self) -> None:
        for reference in reversed(self.images):
            remove_image(self.client, reference)
        assert not self.left(), f"build containers left behind: {self.left()}"
