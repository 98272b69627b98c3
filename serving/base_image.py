"""The serving base image: tensorflow/serving's contract, the project's local server inside.

The real `tensorflow/serving` image cannot be pulled everywhere (not in this project's CI), yet
the end-to-end loop (build_image.py -> registry -> container -> client.py) needs a base image
that behaves like it: `MODEL_BASE_PATH=/models`, `MODEL_NAME=model`, ports 8500/8501, and
`/usr/bin/tf_serving_entrypoint.sh` that starts the server and appends the container's arguments.
This module builds such an image offline, from Debian's packages and PyPI only, in two layers:

1. runtime `tfs-sidecar/serving-runtime:<key>` (heavy, minutes): a minimal Debian root made with
   debootstrap from this machine's apt mirror, a venv with requirements-server.txt installed from
   wheels that the host's pip downloads (so the host's index configuration and cache apply),
   imported into Docker as one layer;
2. base `tfs-sidecar/serving-base:<key>` (light, seconds): the project's wheel (what
   `pip install .` installs), unpacked on PYTHONPATH, and the entrypoint put into a container of
   the runtime image, committed with the image's config.

Each key is a hash of what shapes its layer, so an unchanged recipe is never rebuilt: a second CI
run on the same machine reuses both images (dockerd keeps them in /var/lib/docker).

    python -m serving.base_image            # build what is missing, print the image name

Progress goes to the `serving.base_image` logger; the command line shows it on stderr.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import click
import docker
import docker.errors

from image_builder.builder import BuildContainer, BuildError, connect, docker_step
from image_builder.reference import ImageReference
from serving.errors import ServingError
from tfserving.console import log_on_stderr, with_hint

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT_SCRIPT = "tf_serving_entrypoint.sh"  # package data of serving/

RUNTIME_REPOSITORY = "tfs-sidecar/serving-runtime"
BASE_REPOSITORY = "tfs-sidecar/serving-base"
SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv")
VENV = "/opt/venv"
APP_DIR = "/opt/tfs-sidecar"
SERVING_USER, SERVING_UID = "serving", 1000
REQUIREMENTS = ("requirements-server.txt", "requirements.txt")
DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docs, caches and host leftovers a server never reads (about 150 MB), and TensorFlow's C++
# headers (290 MB), only used to compile custom ops.
SLIM_PATHS = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
    "tmp",
    f"{VENV.lstrip('/')}/lib/python{{python}}/site-packages/tensorflow/include",
)
RUNTIME_CHANGES = [f"ENV PATH={PATH}", "ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]']
# Everything here shapes the runtime layer and goes into its key. Bump "recipe" when the build
# steps change in a way these values do not show.
RUNTIME_RECIPE = {
    "recipe": 2,
    "suite": SUITE,
    "variant": "minbase",
    "packages": DEBIAN_PACKAGES,
    "venv": VENV,
    "user": [SERVING_USER, SERVING_UID],
    "slim": SLIM_PATHS,
    "changes": RUNTIME_CHANGES,
}
# The tensorflow/serving image's config, plus the user the image runs as by default.
BASE_CHANGES = [
    "ENV MODEL_BASE_PATH=/models",
    "ENV MODEL_NAME=model",
    f"ENV PYTHONPATH={APP_DIR}",
    "EXPOSE 8500 8501",
    f"USER {SERVING_UID}:{SERVING_UID}",
    'ENTRYPOINT ["/usr/bin/tf_serving_entrypoint.sh"]',
    "CMD []",
]

log = logging.getLogger(__name__)


class BaseImageError(ServingError):
    """The base image could not be built; the message says which step failed and why."""


class NoAptSource(BaseImageError):
    """This machine's apt knows no mirror for the Debian suite the image is built from."""


# --- where Debian comes from ---------------------------------------------------------------


@dataclass(frozen=True)
class AptSource:
    """One `deb` entry of the apt configuration: the mirror debootstrap should use."""

    uri: str
    suites: tuple[str, ...]
    keyring: Path | None = None


def _deb822_stanzas(text: str) -> Iterable[dict[str, str]]:
    """Fields of each stanza of a deb822 `.sources` file (continuation lines joined)."""
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if fields:
            yield fields


def _one_line_sources(text: str) -> Iterable[AptSource]:
    """`deb [options] URI SUITE COMPONENTS...` lines of a sources.list file."""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        options = re.search(r"\[([^]]*)\]", line)
        words = re.sub(r"\[[^]]*\]", " ", line).split()
        if len(words) < 3 or words[0] != "deb":
            continue
        signed_by = re.search(r"signed-by=(\S+)", options.group(1)) if options else None
        yield AptSource(words[1], (words[2],), Path(signed_by.group(1)) if signed_by else None)


def apt_sources(apt_dir: Path = Path("/etc/apt")) -> list[AptSource]:
    """The `deb` sources this machine's apt uses, in apt's file order."""
    sources: list[AptSource] = []
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for fields in _deb822_stanzas(text):
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                keyring = Path(fields["signed-by"]) if "signed-by" in fields else None
                suites = tuple(fields.get("suites", "").split())
                sources += [AptSource(uri, suites, keyring) for uri in fields["uris"].split()]
        elif path.name == "sources.list" or path.suffix == ".list":
            sources += _one_line_sources(text)
    return sources


def debian_source(suite: str = SUITE, apt_dir: Path = Path("/etc/apt")) -> AptSource:
    """The mirror this machine's apt uses for `suite`: the one place Debian is reachable from."""
    for source in apt_sources(apt_dir):
        if suite in source.suites:
            return source
    raise NoAptSource(f"no apt source for Debian {suite} in {apt_dir}/sources.list(.d): add one")


# --- content keys ----------------------------------------------------------------------------


def _digest(parts: Iterable[bytes]) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(hashlib.sha256(part).digest())
    return sha.hexdigest()[:12]


def runtime_key(root: Path = PROJECT_ROOT) -> str:
    """Hash of the runtime recipe and the server's requirements (not of the mirror used)."""
    recipe = json.dumps(RUNTIME_RECIPE, sort_keys=True).encode()
    return _digest([recipe, *((root / name).read_bytes() for name in REQUIREMENTS)])


def project_wheel(root: Path, out_dir: Path) -> Path:
    """The project built as a wheel (`pip wheel --no-deps`): exactly what `pip install .` would
    put in site-packages, package data included, and nothing else of the checkout."""
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    proc = subprocess.run(
        [*command, "--quiet", "--wheel-dir", str(out_dir), str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    wheels = sorted(out_dir.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        output = (proc.stdout + proc.stderr).strip().splitlines()[-20:]
        raise BaseImageError("building the project's wheel failed:\n" + "\n".join(output))
    return wheels[0]


def app_files(wheel: Path) -> list[tuple[str, bytes, int]]:
    """(path in the image, content, mode) of the unpacked wheel under APP_DIR (on PYTHONPATH)
    and the entrypoint, in a stable order: a wheel is a zip that a purelib install unpacks."""
    with zipfile.ZipFile(wheel) as archive:
        files = [
            (f"{APP_DIR}/{name}", archive.read(name), 0o644)
            for name in sorted(archive.namelist())
            if not name.endswith("/")
        ]
    entrypoint = resources.files("serving").joinpath(ENTRYPOINT_SCRIPT).read_bytes()
    return [*files, (f"/usr/bin/{ENTRYPOINT_SCRIPT}", entrypoint, 0o755)]


def base_key(runtime_tag: str, files: list[tuple[str, bytes, int]]) -> str:
    """Hash of the runtime it builds on, the files put in (not the wheel's zip timestamps),
    and the image config."""
    parts = [runtime_tag.encode(), json.dumps(BASE_CHANGES).encode()]
    for name, content, mode in files:
        parts += [name.encode(), content, str(mode).encode()]
    return _digest(parts)


# --- running the long steps --------------------------------------------------------------


class _Clock:
    """Elapsed time since the build started, in front of every progress line."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()

    def __call__(self, message: str) -> None:
        self.last = time.monotonic()
        minutes, seconds = divmod(int(self.last - self.start), 60)
        log.info("[%2d:%02d] %s", minutes, seconds, message)

    def quiet_for(self) -> float:
        return time.monotonic() - self.last


HEARTBEAT = 10  # seconds


def _phase(line: str) -> str:
    """What a tool is doing on a line: debootstrap's "I: Retrieving", pip's "Collecting"."""
    words = line.split()
    return " ".join(words[:2]) if words[:1] == ["I:"] else (words[0] if words else "")


def _run(cmd: list[str], step: str, clock: _Clock, env: dict | None = None, hide: str = "") -> None:
    """Run a chatty command and print a few of its lines, not hundreds.

    Printed: the first line of each phase, errors, and the current line after HEARTBEAT seconds
    of silence (so a slow download still shows progress). On failure, the last lines of its
    output are in the error, so the cause is in the CI log. `hide` (the mirror's address) is
    masked in what is printed.
    """
    tail: deque[str] = deque(maxlen=30)
    seen: set[str] = set()
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip().replace(hide, "<apt mirror>") if hide else raw.rstrip()
            tail.append(line)
            phase = _phase(line)
            new_phase = phase and phase not in seen
            if new_phase or line.startswith(("E:", "ERROR")) or clock.quiet_for() > HEARTBEAT:
                clock(f"{step}: {line[:110]}")
                seen.add(phase)
    if proc.returncode != 0:
        output = "\n".join(tail)
        raise BaseImageError(f"{step} failed (exit {proc.returncode}); its last output:\n{output}")


def _chroot(rootfs: Path, *cmd: str) -> list[str]:
    return ["chroot", str(rootfs), *cmd]


# Inside the chroot: a clean environment, so the host's PIP_* settings (paths that do not exist
# in there) don't leak in. The host's pip configuration is used on the host side instead.
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    return [p for p in points if p.startswith(prefix)]


def _remove_build_dir(path: Path) -> None:
    """Delete the build dir, but never through a mount that a failed step left behind.

    debootstrap mounts /proc and /sys in the root while it configures packages; rmtree through a
    leftover mount would reach the host's files.
    """
    for point in sorted(_mounts_under(path), reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)
    if left := _mounts_under(path):
        raise BaseImageError(f"still mounted, not deleting {path}: {', '.join(left)}")
    shutil.rmtree(path, ignore_errors=True)


# --- the two layers ------------------------------------------------------------------------


def _python_version(rootfs: Path) -> str:
    """The Debian root's Python as X.Y (the wheels must be for it, not for the host's Python)."""
    target = os.readlink(rootfs / "usr/bin/python3")
    match = re.fullmatch(r"python(\d+\.\d+)", target)
    if not match:
        raise BaseImageError(f"unexpected /usr/bin/python3 -> {target} in the Debian root")
    return match.group(1)


def build_runtime(
    client: docker.DockerClient,
    tag: str,
    root: Path = PROJECT_ROOT,
    mirror: str | None = None,
) -> None:
    """Build the heavy runtime layer and import it into Docker as `tag`."""
    if os.geteuid() != 0 or not shutil.which("debootstrap"):
        raise BaseImageError(
            "building the runtime image needs root and debootstrap (apt-get install debootstrap)"
        )
    source = AptSource(mirror, (SUITE,)) if mirror else debian_source(SUITE)
    clock = _Clock()
    build_dir = Path(tempfile.mkdtemp(prefix="tfs-sidecar-runtime-", dir="/var/tmp"))
    rootfs, wheels = build_dir / "rootfs", build_dir / "wheels"
    try:
        keyring = source.keyring or (DEFAULT_KEYRING if DEFAULT_KEYRING.exists() else None)
        clock(f"debootstrap {SUITE} ({RUNTIME_RECIPE['variant']}, {', '.join(DEBIAN_PACKAGES)})")
        _run(
            [
                "debootstrap",
                f"--variant={RUNTIME_RECIPE['variant']}",
                f"--include={','.join(DEBIAN_PACKAGES)}",
                *([f"--keyring={keyring}"] if keyring else []),
                SUITE,
                str(rootfs),
                source.uri,
            ],
            "debootstrap",
            clock,
            hide=source.uri,
        )
        python = _python_version(rootfs)
        clock(f"pip download (host's index and cache) for Python {python}")
        _run(
            [
                *(sys.executable, "-m", "pip", "download", "--progress-bar=off"),
                *("--dest", str(wheels)),
                *("--only-binary=:all:", "--python-version", python),
                *("--requirement", str(root / REQUIREMENTS[0])),
            ],
            "pip download",
            clock,
        )
        inbox = rootfs / "tmp/build"
        shutil.copytree(wheels, inbox / "wheels")
        for name in REQUIREMENTS:
            shutil.copy(root / name, inbox / name)
        clock(f"venv {VENV} and pip install from the downloaded wheels")
        _run(_chroot(rootfs, f"python{python}", "-m", "venv", VENV), "venv", clock, CHROOT_ENV)
        _run(
            _chroot(
                rootfs,
                *(f"{VENV}/bin/pip", "install", "--progress-bar=off"),
                *("--no-index", "--no-cache-dir"),
                *("--disable-pip-version-check", "--find-links", "/tmp/build/wheels"),
                *("--requirement", f"/tmp/build/{REQUIREMENTS[0]}"),
            ),
            "pip install",
            clock,
            CHROOT_ENV,
        )
        _run(
            _chroot(rootfs, "useradd", "--uid", str(SERVING_UID), "--create-home", SERVING_USER),
            "useradd",
            clock,
            CHROOT_ENV,
        )
        (rootfs / "models").mkdir(mode=0o755)
        for name in SLIM_PATHS:
            for child in (rootfs / name.format(python=python)).glob("*"):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        # Docker mounts its own /etc/resolv.conf and /etc/hostname; don't ship the host's.
        for name in ("etc/resolv.conf", "etc/hostname"):
            (rootfs / name).unlink(missing_ok=True)
        size = subprocess.run(["du", "-sh", str(rootfs)], capture_output=True, text=True)
        clock(f"root file system ready: {size.stdout.split()[0]}; tar and docker import")
        archive = build_dir / "rootfs.tar"
        _run(
            [
                *("tar", "--numeric-owner", "--create", "--file", str(archive)),
                *("--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*"),
                *("--directory", str(rootfs), "."),
            ],
            "tar",
            clock,
        )
        repository, _, key = tag.rpartition(":")
        client.api.import_image(
            src=str(archive), repository=repository, tag=key, changes=RUNTIME_CHANGES
        )
        clock(f"imported {tag}")
    finally:
        _remove_build_dir(build_dir)


def _code_archive(files: list[tuple[str, bytes, int]]) -> bytes:
    """A tar of the app files, root-owned and world-readable (the image runs as uid 1000)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content, mode in files:
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size, info.mode, info.mtime = len(content), mode, 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def build_base(
    client: docker.DockerClient, runtime_tag: str, tag: str, files: list[tuple[str, bytes, int]]
) -> None:
    """Put the code and the entrypoint on the runtime image; commit it with the image's config.

    The container is a model build's (BuildContainer): never started, removed whatever happens,
    and no image left by a build that fails or is interrupted after its commit.
    """
    repository, _, key = tag.rpartition(":")
    with BuildContainer(client, runtime_tag) as box:
        with docker_step("copying the code into the container"):
            box.container.put_archive("/", _code_archive(files))
        box.commit(ImageReference(None, repository, key), BASE_CHANGES)


def ensure_base_image(
    client: docker.DockerClient,
    root: Path = PROJECT_ROOT,
    mirror: str | None = None,
    force: bool = False,
) -> str:
    """The serving base image's name, built first if this Docker engine does not have it yet."""

    def missing(tag: str) -> bool:
        try:
            client.images.get(tag)
            return force
        except docker.errors.ImageNotFound:
            return True

    runtime_tag = f"{RUNTIME_REPOSITORY}:{runtime_key(root)}"
    if missing(runtime_tag):
        log.info("building %s (Debian + Python + TensorFlow; a few minutes)", runtime_tag)
        started = time.monotonic()
        build_runtime(client, runtime_tag, root, mirror)
        log.info("built %s in %.0f s", runtime_tag, time.monotonic() - started)
    else:
        log.info("reusing %s", runtime_tag)
    with tempfile.TemporaryDirectory() as scratch:
        files = app_files(project_wheel(root, Path(scratch)))
    base_tag = f"{BASE_REPOSITORY}:{base_key(runtime_tag, files)}"
    if missing(base_tag):
        build_base(client, runtime_tag, base_tag, files)
        log.info("built %s", base_tag)
    else:
        log.info("reusing %s", base_tag)
    return base_tag


@click.command(
    epilog="""\b
Examples:
  python -m serving.base_image
  python -m serving.base_image --json
  python build_image.py --base_image "$(python -m serving.base_image)" ...
"""
)
@click.option("--mirror", help="Debian mirror URI (default: this machine's apt source).")
@click.option("--force", is_flag=True, help="Rebuild both layers even if they exist.")
@click.option("--json", "as_json", is_flag=True, help="Print image name, size and time as JSON.")
def main(mirror: str | None, force: bool, as_json: bool) -> None:
    """Build the serving base image (tensorflow/serving's contract, local server inside).

    Cached by content key: prints the image name at once when it exists already.
    Progress goes to stderr, the image name to stdout.
    """
    with log_on_stderr("serving.base_image", "image_builder"):
        started = time.monotonic()
        try:
            client = connect()
            tag = ensure_base_image(client, mirror=mirror, force=force)
        except (BaseImageError, BuildError, docker.errors.DockerException) as exc:
            hints = {NoAptSource: ", or pass --mirror URI"}
            raise click.ClickException(with_hint(exc, hints)) from None
        if as_json:
            size = client.images.get(tag).attrs["Size"]
            seconds = round(time.monotonic() - started, 1)
            click.echo(json.dumps({"image": tag, "size_bytes": size, "seconds": seconds}))
        else:
            click.echo(tag)


if __name__ == "__main__":
    main()
