"""The model directory: what TF Serving will find in it, and the tar carrying it into a container.

Checked before Docker is touched, so a typo in `--model_dir` costs nothing. TF Serving loads
`MODEL_BASE_PATH/MODEL_NAME/VERSION/saved_model.pb` where VERSION is a number; users hold either
such a base path (versions inside) or a bare SavedModel export (it becomes one version).

The tar is generated piece by piece while Docker reads it (headers from `tarfile`, file contents
read from disk in 1 MiB chunks), so a model of any size passes through a small, constant amount
of memory. Modes and owners are normalised (0755 dirs, 0644 files, root) so that a server
running as any non-root user can read the model whatever the permissions on the build machine.
"""

from __future__ import annotations

import os
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from serving.model_dirs import numeric_versions

# TF Serving's SavedModel loader accepts either file (tensorflow/cc/saved_model/loader_util).
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
CHUNK = 1 << 20
DIR_MODE = 0o755
FILE_MODE = 0o644


class ModelDirError(ValueError):
    """The model directory is not something TF Serving can load; the message says what was found."""


@dataclass(frozen=True)
class ModelVersion:
    number: int
    path: Path


def _is_saved_model(path: Path) -> bool:
    return any((path / name).is_file() for name in SAVED_MODEL_FILES)


def find_versions(model_dir: Path, version: int | None = None) -> list[ModelVersion]:
    """The versions to package from `model_dir`, checked as TF Serving would load them.

    A bare SavedModel dir becomes version `version` (default 1). A base path gives all its
    numeric version dirs, or only `version` when given. Raises ModelDirError otherwise.
    """
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise ModelDirError(f"model dir {model_dir} does not exist")
    if not model_dir.is_dir():
        raise ModelDirError(f"model dir {model_dir} is a file, not a directory")
    if version is not None and version < 0:
        raise ModelDirError(f"version must be a non-negative number, got {version}")

    if _is_saved_model(model_dir):
        return [ModelVersion(1 if version is None else version, model_dir)]

    versions = [ModelVersion(n, p) for n, p in sorted(numeric_versions(model_dir).items())]
    if not versions:
        entries = sorted(model_dir.iterdir())
        found = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:10]) or "nothing"
        raise ModelDirError(
            f"{model_dir} is neither a SavedModel (no {' or '.join(SAVED_MODEL_FILES)}) nor a "
            f"TF Serving base path (no numeric version directory); found: {found}"
        )
    not_loadable = [v.path.name for v in versions if not _is_saved_model(v.path)]
    if not_loadable:
        raise ModelDirError(
            f"{model_dir}: version dir(s) {', '.join(not_loadable)} hold no saved_model.pb; "
            "TF Serving would fail to load them"
        )
    if version is None:
        return versions
    chosen = [v for v in versions if v.number == version]
    if not chosen:
        have = ", ".join(str(v.number) for v in versions)
        raise ModelDirError(f"{model_dir} has no version {version} (versions: {have})")
    return chosen


@dataclass(frozen=True)
class _Entry:
    header: bytes  # the tar header block(s), as tarfile writes them
    source: Path | None  # None for a directory
    size: int


def _entry(name: str, source: Path | None, size: int, mtime: float) -> _Entry:
    info = tarfile.TarInfo(name)
    info.uid = info.gid = 0
    info.mtime = int(mtime)
    if source is None:
        info.type, info.mode = tarfile.DIRTYPE, DIR_MODE
    else:
        info.mode, info.size = FILE_MODE, size
    return _Entry(info.tobuf(format=tarfile.GNU_FORMAT), source, size)


def _entries(versions: list[ModelVersion], model_root: PurePosixPath) -> list[_Entry]:
    """Every directory (parents first) and file of the archive, from a single walk of the disk."""
    parts = model_root.relative_to("/").parts
    now = time.time()
    entries = [_entry("/".join(parts[: i + 1]), None, 0, now) for i in range(len(parts))]
    for version in versions:
        top = f"{'/'.join(parts)}/{version.number}"
        for dirpath, dirnames, filenames in os.walk(version.path, followlinks=True):
            dirnames.sort()
            rel = Path(dirpath).relative_to(version.path).as_posix()
            here = top if rel == "." else f"{top}/{rel}"
            entries.append(_entry(here, None, 0, os.stat(dirpath).st_mtime))
            for filename in sorted(filenames):
                source = Path(dirpath, filename)
                st = source.stat()
                if not source.is_file():
                    raise ModelDirError(f"{source} is not a regular file; a model holds only files")
                entries.append(_entry(f"{here}/{filename}", source, st.st_size, st.st_mtime))
    return entries


class ModelArchive:
    """The model as a tar stream for `put_archive`, laid out as MODEL_ROOT/VERSION/...

    Iterate it once: each iteration reads the files from disk again. `size` is the number of
    bytes the stream will yield, for a progress bar.
    """

    def __init__(self, versions: list[ModelVersion], model_root: str) -> None:
        self.entries = _entries(versions, PurePosixPath(model_root))
        self.size = sum(len(e.header) + _padded(e.size) for e in self.entries) + 1024

    def __iter__(self) -> Iterator[bytes]:
        for entry in self.entries:
            yield entry.header
            if entry.source is not None:
                yield from _file_chunks(entry)
        yield b"\0" * 1024  # end-of-archive: two zero blocks


def _padded(size: int) -> int:
    return -(-size // 512) * 512


def _file_chunks(entry: _Entry) -> Iterator[bytes]:
    """The file's bytes then the zero padding to a 512-byte block; the size must not change."""
    assert entry.source is not None
    sent = 0
    with entry.source.open("rb") as f:
        while sent < entry.size:
            chunk = f.read(min(CHUNK, entry.size - sent))
            if not chunk:
                break
            sent += len(chunk)
            yield chunk
        grew = bool(f.read(1))
    if sent != entry.size or grew:
        raise ModelDirError(f"{entry.source} changed size while it was being copied; try again")
    if entry.size % 512:
        yield b"\0" * (512 - entry.size % 512)
