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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner, Result
from docker.errors import ImageNotFound

from deploy.validate import load_documents, validate_documents
from image_builder.builder import CONTAINER_PREFIX, BuildContainer, ImageBuilder
from image_builder.cli import PASSWORD_ENV, _ProgressDisplay, main
from image_builder.model_dir import scan_model
from image_builder.progress import Progress, follow
from image_builder.reference import image_reference
from sidecar_testing.data import MANIFEST, PIXEL_MODEL, ROOT
from sidecar_testing.docker import (
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


def image_files(
    client: docker.DockerClient, image: str, path: str
) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    """What `image` holds under `path` (member, and content for a file), read back from a
    container of it that is created, never started."""
    container = client.containers.create(image, name=f"test-read-{uuid.uuid4().hex}")
    try:
        chunks, _ = container.get_archive(path)
        data = b"".join(chunks)
    finally:
        container.remove(force=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {
            m.name: (m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()
        }


@contextmanager
def nothing_created(client: docker.DockerClient, repository: str) -> Iterator[None]:
    """Assert that the block creates no build container and no image of `repository`.

    The daemon's lists are compared before and after, and its event log is read for the
    block's duration: a container created and removed again would leave the lists as they
    were. Only what this test's build could make counts (containers named for this process,
    images of `repository`): other processes' builds may share the daemon.
    """
    prefix = f"{CONTAINER_PREFIX}{os.getpid()}-"

    def listed() -> tuple[list[str], list[str]]:
        images = client.api.images(all=True, name=repository)
        return build_containers(client, os.getpid()), sorted(i["Id"] for i in images)

    start_ns = time.time_ns()
    before = listed()
    yield
    assert listed() == before
    events = client.api.events(since=start_ns // 10**9, until=f"{time.time():.9f}", decode=True)
    ours = [
        event
        for event in events
        if event["timeNano"] >= start_ns
        and (
            event["Actor"]["Attributes"].get("name", "").startswith(prefix)
            or repository in event["Actor"]["Attributes"].get("name", "")
        )
    ]
    assert not ours, ours


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

    files = image_files(docker_client, pulled.id, "/models/ssd")
    source = PIXEL_MODEL / "1"
    expected = {"ssd", "ssd/1"} | {
        f"ssd/1/{p.relative_to(source).as_posix()}" for p in source.rglob("*")
    }
    assert files.keys() == expected
    for name, (member, content) in files.items():
        assert member.mode & 0o777 == (0o755 if member.isdir() else 0o644), name
        assert member.uid == 0, name
        if member.isfile():
            assert content == (source / Path(name).relative_to("ssd/1")).read_bytes(), name


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


def small_model(base: Path) -> Path:
    """A base path holding version 1 of a fake SavedModel, saved_model.pb being b"pb 1"."""
    (base / "1" / "variables").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"pb 1")
    (base / "1" / "variables" / "variables.index").write_bytes(b"index")
    return base


def linked_out(tmp_path: Path) -> tuple[Path, Path]:
    """A model whose version 1 has a symlink to a file outside the model dir (and the file)."""
    base = small_model(tmp_path / "model")
    outside = tmp_path / "notes.txt"
    outside.write_text("from outside the model dir")
    (base / "1" / "variables" / "notes").symlink_to(outside)
    return base, outside


def test_nothing_created_sees_a_container_made_and_removed(
    docker_client: docker.DockerClient, tiny_base_image: str, docker_cleanup: DockerCleanup
) -> None:
    """The check the refusals below rely on is not blind: a build container counts."""
    with (
        pytest.raises(AssertionError),
        nothing_created(docker_client, "unused"),
        BuildContainer(docker_client, tiny_base_image),
    ):
        pass


def test_link_out_of_the_model_dir_is_refused_before_docker(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    tiny_base_image: str,
    docker_cleanup: DockerCleanup,
) -> None:
    base, outside = linked_out(tmp_path)
    name = f"linked_{uuid.uuid4().hex[:8]}"
    docker_cleanup.image(f"{name}_serving:v0.1.0")
    with nothing_created(docker_client, f"{name}_serving"):
        result = build("--model_dir", str(base), "--model_name", name,
                       "--base_image", tiny_base_image)  # fmt: skip
    assert_clean_failure(result, f"Error: 1/variables/notes is a symlink to {outside}, outside")
    assert result.output.rstrip().endswith("; pass --follow_symlinks to copy it")
    assert result.output.count("\n") == 1, result.output


def test_follow_symlinks_copies_what_the_link_points_to(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    tiny_base_image: str,
    docker_cleanup: DockerCleanup,
) -> None:
    base, outside = linked_out(tmp_path)
    name = f"linked_{uuid.uuid4().hex[:8]}"
    target = docker_cleanup.image(f"{name}_serving:v0.1.0")
    result = build("--model_dir", str(base), "--model_name", name,
                   "--base_image", tiny_base_image, "--follow_symlinks")  # fmt: skip
    assert result.exit_code == 0, result.output
    member, content = image_files(docker_client, target, f"/models/{name}")[
        f"{name}/1/variables/notes"
    ]
    assert member.isfile() and member.mode & 0o777 == 0o644
    assert content == outside.read_bytes()


def test_links_inside_the_model_dir_are_copied_as_content(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    tiny_base_image: str,
    docker_cleanup: DockerCleanup,
) -> None:
    base = small_model(tmp_path / "model")
    (base / "2").symlink_to("1")
    (base / "1" / "alias.pb").symlink_to("saved_model.pb")
    name = f"inside_{uuid.uuid4().hex[:8]}"
    target = docker_cleanup.image(f"{name}_serving:v0.1.0")
    result = build("--model_dir", str(base), "--model_name", name,
                   "--base_image", tiny_base_image)  # fmt: skip
    assert result.exit_code == 0, result.output
    files = image_files(docker_client, target, f"/models/{name}")
    for path in ("1/alias.pb", "2/saved_model.pb", "2/alias.pb"):
        member, content = files[f"{name}/{path}"]
        assert member.isfile(), path  # not a link: the image is self-contained
        assert content == b"pb 1", path
    assert files[f"{name}/2"][0].isdir()


@pytest.mark.parametrize(
    ("link", "message"),
    [("x", "1/x is a symlink loop"), ("nowhere", "1/x is a dangling symlink")],
)
def test_loop_and_dangling_link_are_one_line_before_docker(
    link: str,
    message: str,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    tiny_base_image: str,
    docker_cleanup: DockerCleanup,
) -> None:
    base = small_model(tmp_path / "model")
    (base / "1" / "x").symlink_to(link)
    name = f"broken_{uuid.uuid4().hex[:8]}"
    with nothing_created(docker_client, f"{name}_serving"):
        result = build("--model_dir", str(base), "--model_name", name,
                       "--base_image", tiny_base_image, "--follow_symlinks")  # fmt: skip
    assert_clean_failure(result, f"Error: {message}")
    assert result.output.count("\n") == 1, result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tag", "vü"], "invalid tag 'vü'"),
        (["--image", "ssdü"], "invalid image name 'ssdü'"),
        (["--registry", "127.0.0.1:5000/teamü"], "invalid registry"),
        (["--base_image", "tinyü:1"], "invalid base image 'tinyü:1'"),
    ],
)
def test_non_ascii_names_are_refused_before_any_container(
    extra: list[str],
    message: str,
    docker_client: docker.DockerClient,
    tiny_base_image: str,
    docker_cleanup: DockerCleanup,
) -> None:
    with nothing_created(docker_client, "ssd_serving"):
        result = build(*model_args(tiny_base_image), *extra)
    assert_clean_failure(result, message)


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


def ctrl_c_as_in_a_terminal() -> None:
    """In the child, before it runs: SIGINT's default action, as a command started from a
    terminal has it. Tests started in the background (`cmd &`) have SIGINT ignored, and
    children inherit that: Ctrl-C would then do nothing at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
        preexec_fn=ctrl_c_as_in_a_terminal,
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


def test_image_builder_is_quiet_from_python_and_reports_to_a_callback(
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    docker_client: docker.DockerClient,
    tiny_base_image: str,
    docker_cleanup: DockerCleanup,
) -> None:
    """No callback, no output (not even a bar on the terminal's fd); with one, the copy's
    progress arrives as data, ending with a finished event for all the bytes."""
    model = scan_model(small_model(tmp_path / "model"))
    quiet, reported = (image_reference(None, f"quiet_{uuid.uuid4().hex[:8]}", t) for t in "ab")
    for target in (quiet, reported):
        docker_cleanup.image(str(target))
    ImageBuilder(docker_client).build(model, "quiet", tiny_base_image, quiet)
    assert capfd.readouterr() == ("", "")

    events: list[Progress] = []
    ImageBuilder(docker_client, on_progress=events.append).build(
        model, "quiet", tiny_base_image, reported
    )
    assert capfd.readouterr() == ("", "")
    assert {e.phase for e in events} == {"copy"}
    assert events[-1].finished and events[-1].done == events[-1].total
    assert [e.done for e in events] == sorted(e.done for e in events)


def test_cli_progress_lines_off_a_terminal_and_bars_on_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Off a terminal: one line per finished layer, nothing for the copy. On one: tqdm bars."""
    events = [
        Progress("copy", 512, 1024),
        Progress("copy", 1024, 1024, finished=True),
        Progress("push", 10, 100, "abc123", "Pushing"),
        Progress("push", 0, None, "abc123", "Pushed", finished=True),
    ]
    with _ProgressDisplay() as display:
        for event in events:
            display(event)
    assert capsys.readouterr().err == "push abc123: Pushed\n"

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with _ProgressDisplay() as display:
        for event in events:
            display(event)
    drawn = capsys.readouterr().err
    assert "copy" in drawn and "push abc123" in drawn and "Pushed" in drawn
    assert "push abc123: Pushed\n" not in drawn
