"""build_image.py against a real dockerd and real registries on 127.0.0.1 (no Docker Hub).

Every test uses `docker_cleanup`, which removes the images the test made and then asserts that
no build container (name prefix tfs-sidecar-build-) is left: the "nothing left behind" check.
"""

import base64
import difflib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner, Result
from docker.errors import ImageNotFound

from deploy.validate import load_documents, validate_documents
from image_builder.builder import BuildContainer
from image_builder.cli import PASSWORD_ENV, main
from image_builder.progress import follow
from tests.conftest import MANIFEST, PIXEL_MODEL, ROOT
from tests.docker_support import (
    REGISTRY_PASSWORD,
    REGISTRY_USER,
    DockerCleanup,
    LocalRegistry,
    build_containers,
    closed_port,
    import_tiny_base_image,
)

pytestmark = pytest.mark.docker


def build(*args: str, env: dict | None = None, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, input=stdin)


def model_args(base_image: str, *more: str) -> list[str]:
    return [
        "--model_dir",
        str(PIXEL_MODEL),
        "--model_name",
        "ssd",
        "--base_image",
        base_image,
        *more,
    ]


def assert_clean_failure(result: Result, message: str) -> None:
    """Non-zero exit, the reason shown, no traceback."""
    assert result.exit_code == 1, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_build_push_and_pull_back_by_digest(
    docker_client: docker.DockerClient,
    local_registry: LocalRegistry,
    tiny_base_image: str,
    docker_cleanup: DockerCleanup,
) -> None:
    """The acceptance test: the printed digest is the registry's, and the image holds the model."""
    args = model_args(tiny_base_image, "--registry", f"{local_registry.host}/acceptance")
    proc = subprocess.Popen(
        [sys.executable, "build_image.py", *args, "--push", "--json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    docker_cleanup.process(proc.pid)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    result = json.loads(stdout)
    docker_cleanup.image(result["image"])
    assert result["image"] == f"{local_registry.host}/acceptance/ssd_serving:v0.1.0"
    assert result["reference"] == (
        f"{local_registry.host}/acceptance/ssd_serving@{result['digest']}"
    )
    assert local_registry.manifest_digest("acceptance/ssd_serving", "v0.1.0") == result["digest"]

    # Pull back by digest from the registry, not from the local cache.
    docker_client.images.remove(result["image"])
    with pytest.raises(ImageNotFound):
        docker_client.images.get(result["image_id"])
    pulled = docker_client.images.pull(docker_cleanup.image(result["reference"]))
    assert pulled.id == result["image_id"]
    env = pulled.attrs["Config"]["Env"]
    assert "MODEL_NAME=ssd" in env
    assert "MODEL_BASE_PATH=/models" in env  # the base image's contract is kept

    container = docker_client.containers.create(pulled.id, name=f"test-read-{uuid.uuid4().hex}")
    try:
        chunks, _ = container.get_archive("/models/ssd")
        data = b"".join(chunks)
    finally:
        container.remove(force=True)
    source = PIXEL_MODEL / "1"
    expected = {"ssd", "ssd/1"} | {
        f"ssd/1/{p.relative_to(source).as_posix()}" for p in source.rglob("*")
    }
    with tarfile.open(fileobj=io.BytesIO(data)) as packed:
        members = {m.name: m for m in packed.getmembers()}
        assert members.keys() == expected
        for name, member in members.items():
            assert member.mode & 0o777 == (0o755 if member.isdir() else 0o644), name
            assert member.uid == 0, name
            if member.isfile():
                original = (source / Path(name).relative_to("ssd/1")).read_bytes()
                assert packed.extractfile(member).read() == original, name


@pytest.mark.parametrize("auth", [False, True], ids=["open registry", "htpasswd registry"])
def test_missing_base_image_is_pulled_with_progress(
    auth: bool,
    docker_client: docker.DockerClient,
    local_registry: LocalRegistry,
    auth_registry: LocalRegistry,
    docker_cleanup: DockerCleanup,
) -> None:
    """A base image only the registry has (pushed there, removed here) is pulled for the build:
    by tag from the open registry; by digest from the htpasswd registry, with the --username
    credentials given for the push."""
    registry = auth_registry if auth else local_registry
    credentials = {"username": REGISTRY_USER, "password": REGISTRY_PASSWORD} if auth else None
    local = docker_cleanup.image(import_tiny_base_image(docker_client, "tfs-sidecar-test/pull:1"))
    tagged = f"{registry.host}/bases/tiny:{uuid.uuid4().hex[:8]}"
    docker_client.images.get(local).tag(tagged)
    pushed = docker_client.api.push(tagged, stream=True, decode=True, auth_config=credentials)
    digest = follow(pushed, "push")["Digest"]
    docker_client.images.remove(tagged)
    docker_client.images.remove(local)
    remote = f"{registry.host}/bases/tiny@{digest}" if auth else tagged
    docker_cleanup.image(remote)
    with pytest.raises(ImageNotFound):
        docker_client.images.get(remote)

    target = docker_cleanup.image(f"{registry.host}/ssd_serving:pulled")
    args = model_args(remote, "--registry", registry.host, "--tag", "pulled")
    if auth:
        args += ["--username", REGISTRY_USER]
    result = build(*args, env={PASSWORD_ENV: REGISTRY_PASSWORD})
    assert result.exit_code == 0, result.output
    assert f"base image {remote} not found locally: pulling it" in result.stderr
    assert "pull " in result.stderr  # a line per layer
    assert result.stdout.strip() == target
    assert "MODEL_NAME=ssd" in docker_client.images.get(target).attrs["Config"]["Env"]


@pytest.mark.parametrize("how", ["env", "stdin", "docker-config"])
def test_push_with_good_credentials(
    how: str,
    tmp_path: Path,
    auth_registry: LocalRegistry,
    tiny_base_image: str,
    docker_cleanup: DockerCleanup,
) -> None:
    args = model_args(tiny_base_image, "--registry", auth_registry.host, "--tag", how, "--push")
    docker_cleanup.image(f"{auth_registry.host}/ssd_serving:{how}")
    if how == "env":
        result = build(*args, "--username", REGISTRY_USER, env={PASSWORD_ENV: REGISTRY_PASSWORD})
    elif how == "stdin":
        result = build(*args, "--username", REGISTRY_USER, "--password-stdin",
                       stdin=REGISTRY_PASSWORD + "\n")  # fmt: skip
    else:  # what `docker login` / `gcloud auth configure-docker` leave: the default path
        token = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
        config = {"auths": {auth_registry.host: {"auth": token}}}
        (tmp_path / "config.json").write_text(json.dumps(config))
        result = build(*args, env={"DOCKER_CONFIG": str(tmp_path), PASSWORD_ENV: None})
    assert result.exit_code == 0, result.output
    digest = auth_registry.manifest_digest("ssd_serving", how)
    assert result.stdout.strip() == f"{auth_registry.host}/ssd_serving@{digest}"
    assert REGISTRY_PASSWORD not in result.output


ERROR_CASES = {
    # name: (extra args, env, message expected in the output)
    "daemon unreachable": (
        [],
        {"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
        "cannot reach the Docker daemon",
    ),
    "base missing, not pullable": (
        ["--base_image", "{registry}/nowhere/base:1"],
        {},
        "manifest unknown",
    ),
    "bad image name": (["--image", "SSD Serving"], {}, "invalid image name 'SSD Serving'"),
    "bad tag": (["--tag", ".v1"], {}, "invalid tag '.v1'"),
    "registry unreachable": (
        ["--registry", "127.0.0.1:{closed}", "--push"],
        {},
        "connection refused",
    ),
    "authentication refused": (
        ["--registry", "{auth}", "--push", "--username", REGISTRY_USER],
        {PASSWORD_ENV: "wrong-password"},
        "unauthorized: authentication required",  # the registry's own message
    ),
    "model dir invalid": (["--model_dir", str(PIXEL_MODEL.parent)], {}, "neither a SavedModel"),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_failures_are_clear_and_leave_no_container(
    case: str,
    docker_client: docker.DockerClient,
    local_registry: LocalRegistry,
    auth_registry: LocalRegistry,
    tiny_base_image: str,
    docker_cleanup: DockerCleanup,
) -> None:
    extra, env, message = ERROR_CASES[case]
    hosts = {"registry": local_registry.host, "auth": auth_registry.host, "closed": closed_port()}
    extra = [arg.format(**hosts) for arg in extra]
    for registry in (f"127.0.0.1:{hosts['closed']}", auth_registry.host, None):
        docker_cleanup.image(f"{registry}/ssd_serving:v0.1.0" if registry else "ssd_serving:v0.1.0")

    result = build(*model_args(tiny_base_image), *extra, env=env)
    assert_clean_failure(result, message)
    assert "wrong-password" not in result.output
    assert not docker_cleanup.left()  # and again at teardown, after the images are removed


def test_manifest_gets_the_digest_and_nothing_else(
    tmp_path: Path,
    local_registry: LocalRegistry,
    tiny_base_image: str,
    docker_cleanup: DockerCleanup,
) -> None:
    manifest = tmp_path / MANIFEST.name
    manifest.write_bytes(MANIFEST.read_bytes())
    docker_cleanup.image(f"{local_registry.host}/k8s/ssd_serving:v0.1.0")
    args = model_args(tiny_base_image, "--registry", f"{local_registry.host}/k8s", "--push")
    result = build(*args, "--manifest", str(manifest))
    assert result.exit_code == 0, result.output
    reference = result.stdout.strip()

    before = MANIFEST.read_text().splitlines(keepends=True)
    after = manifest.read_text().splitlines(keepends=True)
    changed = [line for line in difflib.ndiff(before, after) if line[:2] in ("- ", "+ ")]
    assert len(changed) == 2, changed
    old, new = changed
    assert old.startswith("- ") and new.startswith("+ ")
    old_reference = old.split("image:")[1].strip()
    assert new[2:] == old[2:].replace(old_reference, reference)
    # and deploy.validate (issue 5) accepts what build_image.py wrote, placeholder forbidden
    problems = validate_documents(load_documents(manifest), allow_placeholder=False)
    assert [str(p) for p in problems if not p.note] == []


@pytest.mark.parametrize(
    ("phase", "signum"),
    [
        ("copying model", signal.SIGINT),
        ("copying model", signal.SIGTERM),
        ("committing", signal.SIGINT),
    ],
)
def test_interrupt_leaves_no_container_and_no_image(
    phase: str,
    signum: int,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    tiny_base_image: str,
    docker_cleanup: DockerCleanup,
) -> None:
    """Ctrl-C (or CI's SIGTERM) while the model streams in or while the daemon commits: exit
    130, the container removed, and no image, not even one the daemon finishes committing
    after the command has stopped waiting."""
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"pb")
    with (model / "variables" / "variables.data-00000-of-00001").open("wb") as f:
        f.truncate(256 << 20)  # sparse: costs no disk here, takes seconds to copy and commit
    name = f"interrupted_{uuid.uuid4().hex[:8]}"
    target = docker_cleanup.image(f"{name}_serving:v0.1.0")
    args = ["--model_dir", str(model), "--model_name", name, "--base_image", tiny_base_image]
    proc = subprocess.Popen(
        [sys.executable, "build_image.py", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    docker_cleanup.process(proc.pid)
    try:
        seen = ""
        while not seen.startswith(phase):
            seen = proc.stderr.readline()
            assert seen, f"build_image.py ended before {phase!r}: {proc.communicate()}"
        time.sleep(0.5)  # well inside the step: copying or committing 256 MB takes seconds
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted; the build container was removed" in stderr
    assert "Traceback" not in stderr
    assert not build_containers(docker_client, proc.pid)
    for _ in range(10):  # a commit the command abandoned would appear within seconds
        with pytest.raises(ImageNotFound):
            docker_client.images.get(target)
        time.sleep(0.5)


def test_build_container_is_removed_when_the_block_fails(
    docker_client: docker.DockerClient, tiny_base_image: str, docker_cleanup: DockerCleanup
) -> None:
    with pytest.raises(RuntimeError, match="boom"), BuildContainer(docker_client, tiny_base_image):
        assert len(docker_cleanup.left()) == 1
        raise RuntimeError("boom")
    assert not docker_cleanup.left()
