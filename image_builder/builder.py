"""Build a TF Serving image holding a model, and push it, through the Docker SDK.

The seed's six commands (run, cp, commit, kill, rm, tag/push) become two objects:
`BuildContainer`, a container that exists only inside a `with` block, and `ImageBuilder`,
which makes sure the base image is there, copies the model in, commits and pushes.

The container is created but never started: `put_archive` and `commit` work on a created
container, and a server that never runs cannot be half-way through loading when we commit it,
nor need a kill. Every Docker failure comes out as `BuildError` with a message for the user.

Nothing here writes to the terminal: steps are logged (`logging`, logger "image_builder.builder")
and transfers reported as `Progress` events to the `on_progress` callback, if one is given.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import docker
import requests
from docker.auth import resolve_repository_name
from docker.errors import APIError, DockerException, ImageNotFound
from docker.models.containers import Container
from docker.models.images import Image
from docker.utils import parse_repository_tag

from image_builder.errors import BuildError
from image_builder.model_dir import ModelArchive, ModelTree
from image_builder.progress import Progress, ProgressCallback, RegistryError, follow
from image_builder.reference import ImageReference, check_base_image, check_model_name
from tfserving.conventions import MODEL_BASE_PATH, model_path

log = logging.getLogger(__name__)

# Build containers are named PREFIX + PID + "-" + random: `docker ps -a --filter
# name=tfs-sidecar-build-` finds them, and the PID tells which build made one (tests check
# their own builds only, while others share the daemon). Not a label: `docker commit` copies
# the container's labels into the image, so every container run from it would carry the label.
CONTAINER_PREFIX = "tfs-sidecar-build-"
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Credentials:
    """Explicit registry credentials (`--username`); without them the Docker config is used."""

    username: str
    password: str
    registry: str  # host[:port] they belong to

    def for_image(self, reference: str) -> dict | None:
        """The auth config for pulling/pushing `reference`, or None for another registry."""
        if resolve_repository_name(reference)[0] != self.registry:
            return None
        return {
            "username": self.username,
            "password": self.password,
            "serveraddress": self.registry,
        }

    def __repr__(self) -> str:  # never show the password, even in a debugger or a log
        return f"Credentials(username={self.username!r}, registry={self.registry!r})"


def connect() -> docker.DockerClient:
    """A client for the daemon of DOCKER_HOST (or the default socket) that has answered a ping."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env()
        client.ping()
    except (DockerException, requests.RequestException) as exc:
        raise BuildError(
            f"cannot reach the Docker daemon at {host}: {exc}. Start it (e.g. "
            "`scripts/dockerd.sh start`) or set DOCKER_HOST to a daemon you may use."
        ) from None
    return client


@contextmanager
def docker_step(what: str) -> Iterator[None]:
    """Turn the SDK's and the registry's failures into a BuildError naming the failed step."""
    try:
        yield
    except RegistryError as exc:
        raise BuildError(f"{what} failed: {exc}") from None
    except APIError as exc:
        raise BuildError(f"{what} failed: {exc.explanation or exc}") from None
    except (DockerException, requests.RequestException) as exc:
        raise BuildError(f"{what} failed: {exc}") from None


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then act on them as usual.

    For daemon calls that go on without us: a create or commit we stop waiting for still
    completes in the daemon, leaving a container or image nobody removes; a removal cut short
    leaves the container.
    Python-level handlers, not a signal mask: a mask holds only the calling thread, and the
    signal would reach another one (tqdm's monitor) and still interrupt the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda n, _: held.append(n)) for signum in watched}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            handler = previous[held[0]]
            if callable(handler):
                handler(held[0], None)  # e.g. raises KeyboardInterrupt
            elif handler == signal.SIG_DFL:
                signal.raise_signal(held[0])


@contextmanager
def cleanup_step(what: str, by_hand: str) -> Iterator[None]:
    """A removal that Ctrl-C cannot cut short and whose failure cannot hide the error being
    handled: it is reported with the command to finish the job by hand."""
    with signals_deferred():
        try:
            yield
        except docker.errors.NotFound:
            pass
        except (DockerException, requests.RequestException) as exc:
            log.warning("could not remove %s: %s; run `%s`", what, exc, by_hand)


class BuildContainer:
    """A uniquely named container of the base image that is removed when the block ends; the
    image committed from it is removed too unless the block completes.

    >>> with BuildContainer(client, "tensorflow/serving:2.18.0") as box:
    ...     box.copy(archive)
    ...     image_id = box.commit(reference, ["ENV MODEL_NAME resnet"])
    """

    def __init__(self, client: docker.DockerClient, base_image: str) -> None:
        self.client = client
        self.base_image = base_image
        self.name = f"{CONTAINER_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.container: Container | None = None
        self.image_id: str | None = None

    def __enter__(self) -> BuildContainer:
        try:
            # Held like the commit: a create we stopped waiting for could finish after our
            # removal by name, leaving the container.
            with docker_step(f"creating a container from {self.base_image}"), signals_deferred():
                self.container = self.client.containers.create(self.base_image, name=self.name)
        except BaseException:  # e.g. the Ctrl-C held during the create
            self.remove()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.remove()
        if exc_type is not None and self.image_id:
            self._remove_image()

    def _remove_image(self) -> None:
        """Drop the image of a build that failed or was interrupted after its commit."""
        with cleanup_step(f"image {self.image_id}", f"docker rmi -f {self.image_id}"):
            self.client.api.remove_image(self.image_id, force=True)

    def remove(self) -> None:
        """Remove the container by its unique name, whether or not its creation completed."""
        with cleanup_step(f"build container {self.name}", f"docker rm -f {self.name}"):
            self.client.api.remove_container(self.name, force=True, v=True)
        self.container = None

    def copy(self, archive: ModelArchive, on_progress: ProgressCallback | None = None) -> None:
        """Stream the model tar into the container's root; Docker reads it as it is generated."""
        assert self.container is not None, "use BuildContainer in a with block"
        log.info("copying model (%.1f MB) into %s", archive.size / 1e6, self.name)
        with docker_step("copying the model into the container"):
            self.container.put_archive("/", _counted(archive, on_progress))
        if on_progress:
            on_progress(Progress("copy", archive.size, archive.size, finished=True))

    def commit(self, reference: ImageReference, changes: list[str]) -> str:
        """Commit the container as `reference`; returns the new image's id.

        Not interruptible (see signals_deferred): a Ctrl-C takes effect once the daemon is done,
        and the block's end then removes the image.
        """
        assert self.container is not None, "use BuildContainer in a with block"
        log.info("committing %s", reference)
        with docker_step(f"committing {reference}"), signals_deferred():
            self.image_id = self.client.api.commit(
                self.container.id,
                repository=reference.repository,
                tag=reference.tag,
                changes=changes,
                pause=False,  # never started: nothing to pause
            )["Id"]
        return self.image_id


def _counted(archive: ModelArchive, on_progress: ProgressCallback | None) -> Iterator[bytes]:
    """The archive's chunks, reporting the bytes handed to the daemon so far."""
    done = 0
    for chunk in archive:
        yield chunk
        done += len(chunk)
        if on_progress:
            on_progress(Progress("copy", done, archive.size))


class ImageBuilder:
    """Base image → container with the model → committed, tagged image → pushed digest.

    Quiet unless asked: `on_progress` receives the copy's and every layer's Progress, and the
    steps are logged at INFO.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        credentials: Credentials | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.client = client
        self.credentials = credentials
        self.on_progress = on_progress

    def _auth(self, reference: str) -> dict | None:
        return self.credentials.for_image(reference) if self.credentials else None

    def ensure_base_image(self, reference: str) -> Image:
        """The base image, pulled with per-layer progress when it is not here yet."""
        with docker_step(f"looking up base image {reference}"):
            try:
                return self.client.images.get(reference)
            except ImageNotFound:
                pass
        repository, tag = parse_repository_tag(reference)
        log.info("base image %s not found locally: pulling it", reference)
        with docker_step(f"pulling base image {reference} (not found locally)"):
            events = self.client.api.pull(
                repository,
                tag=tag or "latest",  # no tag would pull every tag of the repository
                stream=True,
                decode=True,
                auth_config=self._auth(reference),
            )
            follow(events, "pull", self.on_progress)
            return self.client.images.get(reference)

    def build(
        self,
        model: ModelTree,
        model_name: str,
        base_image: str,
        target: ImageReference,
    ) -> str:
        """Commit the base image plus the model (from `scan_model`) as `target`; returns the
        image id.

        The model goes to MODEL_BASE_PATH/MODEL_NAME/VERSION/, with MODEL_BASE_PATH read from
        the base image (tensorflow/serving sets /models), and MODEL_NAME is set so the image's
        entrypoint serves it. The names are checked first, as `target` was when it was made: the
        daemon would refuse a bad one only at the commit, after the copy.
        """
        check_model_name(model_name)
        base = self.ensure_base_image(check_base_image(base_image))
        env = dict(e.split("=", 1) for e in base.attrs["Config"].get("Env") or [] if "=" in e)
        model_root = model_path(model_name, env.get("MODEL_BASE_PATH", MODEL_BASE_PATH))
        archive = ModelArchive(model, model_root)
        with BuildContainer(self.client, base.id) as box:
            box.copy(archive, self.on_progress)
            return box.commit(target, [f"ENV MODEL_NAME {model_name}"])

    def push(self, target: ImageReference) -> str:
        """Push `target`; returns the manifest digest the registry stored (sha256:...)."""
        with docker_step(f"pushing {target}"):
            events = self.client.api.push(
                target.repository,
                tag=target.tag,
                stream=True,
                decode=True,
                auth_config=self._auth(target.repository),
            )
            aux = follow(events, "push", self.on_progress)
        digest = aux.get("Digest", "")
        if not DIGEST_RE.fullmatch(digest):
            raise BuildError(f"pushing {target} ended without a digest from the registry ({aux})")
        return digest
