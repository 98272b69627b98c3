"""The model directory: what TF Serving will find in it, and the tar carrying it into a container.

Checked before Docker is touched, so a typo in `--model_dir` costs nothing. TF Serving loads
`MODEL_BASE_PATH/MODEL_NAME/VERSION/saved_model.pb` where VERSION is a number; users hold either
such a base path (versions inside) or a bare SavedModel export (it becomes one version).

`scan_model` walks the whole tree before anything is copied and refuses what must not go into
an image, because an image is published: whatever it holds, anyone who can pull it can read.

- Symlinks. The model dir itself may be one; it is resolved. A link inside it whose target
  stays inside is copied as content (the file or directory it points to), so the image is
  self-contained and no link in it can point at nothing. A link whose target is outside the
  model dir is refused (OutsideLinkError): `ln -s /etc/shadow M/1/x` must not put the build
  machine's /etc/shadow into the image. A caller who links version directories from elsewhere
  on purpose passes `follow_symlinks`, and the targets are copied as content. Dangling links
  and loops are refused in any case.
- Modes. Every file goes in as 0644 and every directory as 0755, owned by root, so that a
  server running as any user (the Kubernetes manifest's uid 1000) can read the model. A file
  that other users cannot read on the build machine (0600, 0640: a key, a token) is refused
  rather than silently made world-readable. Directory modes are not carried over: a 0700
  directory (tempfile.mkdtemp's) protects the build machine, it is not part of the model.
- Only regular files and directories: no fifos, sockets or devices.

The tar is generated piece by piece while Docker reads it (headers from `tarfile`, file contents
read from disk in 1 MiB chunks), so a model of any size passes through a small, constant amount
of memory. Each file opened must be the one scanned (same inode, same size): one replaced in
the meantime, by a link to elsewhere say, stops the copy.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from image_builder.errors import BuildError
from tfserving.conventions import (
    SAVED_MODEL_FILES,
    ModelDirError,
    is_saved_model,
    numeric_versions,
)

CHUNK = 1 << 20
DIR_MODE = 0o755
FILE_MODE = 0o644


class ModelTreeError(BuildError):
    """Something in the model dir that must not, or cannot, go into an image."""


class OutsideLinkError(ModelTreeError):
    """A symlink in the model dir whose target is outside it; `link` is relative to the model
    dir, so that the CLI can name it and say how to copy it anyway."""

    def __init__(self, link: PurePosixPath, target: Path, model_dir: Path) -> None:
        self.link = link
        self.target = target
        super().__init__(
            f"{link} is a symlink to {target}, outside the model dir {model_dir}: refused, so "
            "that a link cannot put a file of the build machine into the image"
        )


@dataclass(frozen=True)
class ModelVersion:
    number: int
    path: Path


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

    if is_saved_model(model_dir):
        return [ModelVersion(1 if version is None else version, model_dir)]

    versions = [ModelVersion(n, p) for n, p in sorted(numeric_versions(model_dir).items())]
    if not versions:
        entries = sorted(model_dir.iterdir())
        found = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:10]) or "nothing"
        raise ModelDirError(
            f"{model_dir} is neither a SavedModel (no {' or '.join(SAVED_MODEL_FILES)}) nor a "
            f"TF Serving base path (no numeric version directory); found: {found}"
        )
    not_loadable = [v.path.name for v in versions if not is_saved_model(v.path)]
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
class TreeEntry:
    """A directory or a file of the model, named by where it goes below the model root."""

    name: str  # e.g. "1/variables/variables.index"
    mtime: int
    source: Path | None = None  # the file's real path; None for a directory
    size: int = 0
    file_id: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the file scanned


@dataclass(frozen=True)
class ModelTree:
    """A model dir as scanned and checked: everything that will be copied, no content read yet."""

    root: Path  # the model dir, symlinks resolved
    versions: list[ModelVersion]
    entries: list[TreeEntry]


def scan_model(
    model_dir: Path, version: int | None = None, *, follow_symlinks: bool = False
) -> ModelTree:
    """The versions to package (see find_versions) and every file and directory below them.

    Raises ModelDirError for a dir TF Serving could not load, ModelTreeError (OutsideLinkError
    for a link out of the model dir, unless `follow_symlinks`) for what may not be copied.
    """
    root = _resolved(Path(model_dir))
    versions = find_versions(root, version)
    scan = _Scan(root, follow_symlinks)
    for v in versions:
        scan.add(v.path, PurePosixPath(v.path.relative_to(root)), str(v.number), ())
    scan.refuse_private_files()
    return ModelTree(root, versions, scan.entries)


def _resolved(model_dir: Path) -> Path:
    """The model dir with every symlink resolved: what "inside the model dir" is measured by."""
    if model_dir.is_symlink():
        return _link_target(model_dir, str(model_dir))
    return Path(os.path.realpath(model_dir))


def _link_target(link: Path, shown: str) -> Path:
    """Where a symlink finally leads (through any chain of links), checked to exist."""
    try:
        return Path(os.path.realpath(link, strict=True))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            problem = "is a symlink loop: following its links never ends at a file"
        elif exc.errno == errno.ENOENT:
            problem = f"is a dangling symlink: its target {os.readlink(link)} does not exist"
        else:
            problem = f"is a symlink that cannot be followed: {exc.strerror}"
        raise ModelTreeError(f"{shown} {problem}") from None


@contextmanager
def _reading(rel: PurePosixPath) -> Iterator[None]:
    """A file or directory of the model that cannot be read is one line, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise ModelTreeError(f"cannot read {rel} in the model dir: {exc.strerror}") from None


class _Scan:
    """One walk of the model tree: its entries, parents first, and the files to refuse."""

    def __init__(self, root: Path, follow_symlinks: bool) -> None:
        self.root = root
        self.follow_symlinks = follow_symlinks
        self.entries: list[TreeEntry] = []
        self.private: list[PurePosixPath] = []

    def add(self, path: Path, rel: PurePosixPath, name: str, inside: tuple[Path, ...]) -> None:
        """Add `path` (`rel` to the model dir, `name` in the archive), and all below it.

        `inside` holds the real paths of the directories the walk is in, to catch loops.
        """
        real = self._follow(path, rel) if path.is_symlink() else path
        with _reading(rel):
            st = real.lstat()  # not stat(): a link swapped in since is refused, not followed
        if stat.S_ISDIR(st.st_mode):
            self._add_directory(real, rel, name, st, inside)
        elif stat.S_ISREG(st.st_mode):
            if not st.st_mode & stat.S_IROTH:
                self.private.append(rel)
            file_id = (st.st_dev, st.st_ino)
            self.entries.append(TreeEntry(name, int(st.st_mtime), real, st.st_size, file_id))
        else:
            raise ModelTreeError(f"{rel} is not a regular file; a model holds only files")

    def _follow(self, link: Path, rel: PurePosixPath) -> Path:
        target = _link_target(link, str(rel))
        if not (self.follow_symlinks or target.is_relative_to(self.root)):
            raise OutsideLinkError(rel, target, self.root)
        return target

    def _add_directory(
        self,
        real: Path,
        rel: PurePosixPath,
        name: str,
        st: os.stat_result,
        inside: tuple[Path, ...],
    ) -> None:
        # Copying a directory that contains one the walk is in would never end.
        if any(open_dir.is_relative_to(real) for open_dir in inside):
            raise ModelTreeError(
                f"{rel} is a symlink loop: it leads back to {real}, which contains it"
            )
        self.entries.append(TreeEntry(name, int(st.st_mtime)))
        with _reading(rel):
            children = sorted(os.listdir(real))
        for child in children:
            self.add(real / child, rel / child, f"{name}/{child}", (*inside, real))

    def refuse_private_files(self) -> None:
        """All of them in one error, after the walk: an export made with umask 077 has many."""
        if not self.private:
            return
        shown = ", ".join(map(str, self.private[:3])) + (", ..." if len(self.private) > 3 else "")
        raise ModelTreeError(
            f"{len(self.private)} file(s) of the model dir are not readable by other users "
            f"({shown}): the image would make them readable by anyone (mode 0644), so they "
            "are refused; `chmod o+r` them if they belong to the model, or move them out"
        )


class ModelArchive:
    """The model as a tar stream for `put_archive`, laid out as MODEL_ROOT/VERSION/...

    Iterate it once: each iteration reads the files from disk again. `size` is the number of
    bytes the stream will yield, for a progress bar.
    """

    def __init__(self, tree: ModelTree, model_root: str) -> None:
        root = PurePosixPath(model_root).relative_to("/")
        now = int(time.time())
        parents = [TreeEntry(str(d), now) for d in [*reversed(root.parents[:-1]), root]]
        entries = parents + [replace(e, name=f"{root}/{e.name}") for e in tree.entries]
        self.members = [(_header(e), e) for e in entries]
        self.size = sum(len(header) + _padded(e.size) for header, e in self.members) + 1024

    def __iter__(self) -> Iterator[bytes]:
        for header, entry in self.members:
            yield header
            if entry.source is not None:
                yield from _file_chunks(entry)
        yield b"\0" * 1024  # end-of-archive: two zero blocks


def _header(entry: TreeEntry) -> bytes:
    """The tar header block(s) of `entry`: root's, with the fixed modes (see the module doc)."""
    info = tarfile.TarInfo(entry.name)
    info.uid = info.gid = 0
    info.mtime = entry.mtime
    if entry.source is None:
        info.type, info.mode = tarfile.DIRTYPE, DIR_MODE
    else:
        info.mode, info.size = FILE_MODE, entry.size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _padded(size: int) -> int:
    return -(-size // 512) * 512


def _file_chunks(entry: TreeEntry) -> Iterator[bytes]:
    """The file's bytes then the zero padding to a 512-byte block.

    The header already announced the size, and the scan checked this very file: another one
    in its place, or a size that changed, would corrupt the archive or slip in unchecked.
    """
    assert entry.source is not None
    sent = 0
    with entry.source.open("rb") as f:
        st = os.fstat(f.fileno())
        if (st.st_dev, st.st_ino) != entry.file_id:
            raise ModelTreeError(f"{entry.source} was replaced after the model was checked")
        while sent < entry.size:
            chunk = f.read(min(CHUNK, entry.size - sent))
            if not chunk:
                break
            sent += len(chunk)
            yield chunk
        grew = bool(f.read(1))
    if sent != entry.size or grew:
        raise ModelTreeError(f"{entry.source} changed size while it was being copied; try again")
    if entry.size % 512:
        yield b"\0" * (512 - entry.size % 512)
