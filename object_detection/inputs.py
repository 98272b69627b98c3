"""Which images a command line names: photos, directories (walked recursively) and globs,
each with the output name it gets, and a problem for those that cannot even be tried.

Apart from the batch runner so that the single-image command can tell it is one (names_one_file)
without loading the thread pool and the rest of batch.py.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class BatchInput:
    """One image to detect in. `name` is its path relative to the inputs' common folder, so
    that OUTPUT_DIR mirrors the input tree and same-named photos in different folders don't
    overwrite each other's results."""

    path: Path
    name: Path
    problem: str | None = None  # why it cannot even be tried (no such file, glob matched nothing)


def names_one_file(arguments: Sequence[str]) -> bool:
    """One argument that is not a directory or a glob: the single-image command."""
    return len(arguments) == 1 and not Path(arguments[0]).is_dir() and not _is_glob(arguments[0])


def _is_glob(argument: str) -> bool:
    """A pattern to expand; a file whose name happens to contain `*` or `[` is just a file."""
    return glob.has_magic(argument) and not os.path.exists(argument)


def iter_inputs(arguments: Sequence[str], exclude: Path | None = None) -> Iterator[BatchInput]:
    """The images named by files, directories (recursive, image extensions only, hidden entries
    skipped) and globs (image extensions only), in order, without anything under `exclude` (the
    output folder), each once per output name: a second input with the same output name
    (photo.jpg beside photo.png) is reported as a problem instead of overwriting the first one's
    result. A folder that cannot be read is an input with a problem too, so it counts as failed
    instead of vanishing from the run."""
    base = _common_folder(arguments)
    # realpath, not Path.resolve(): resolve() raises on a symlink loop (Python < 3.13).
    excluded = os.path.realpath(exclude) if exclude else None
    seen: set[Path] = set()  # output names so far: one short path per input
    for argument in arguments:
        for path, problem in _expand(argument, excluded):
            name = Path(os.path.relpath(os.path.abspath(path), base))
            key = name.with_suffix("")
            if problem is None and key in seen:
                problem = f"another input has the same output name ({key}.json): rename one"
            if problem is None:
                seen.add(key)
            yield BatchInput(path, name, problem)


def _expand(argument: str, excluded: str | None) -> Iterator[tuple[Path, str | None]]:
    path = Path(argument)
    if path.is_dir():
        yield from _walk(path, excluded)
    elif not _is_glob(argument):
        yield path, None if path.exists() else f"image not found: {path}"
    else:
        yield from _glob(argument, excluded)


def _glob(pattern: str, excluded: str | None) -> Iterator[tuple[Path, str | None]]:
    """Image files matching `pattern`, each real file once: `**` follows symlinked folders, so
    a link back up the tree would otherwise give every photo under it dozens of times."""
    real_files: set[str] = set()
    for match in sorted(glob.iglob(pattern, recursive=True)):
        found, real = Path(match), os.path.realpath(match)
        if excluded and real.startswith(os.path.join(excluded, "")):
            continue  # our own results (annotated pictures) are not inputs
        if real in real_files or not found.is_file():  # is_file: False for a dangling link
            continue
        if found.suffix.lower() in IMAGE_EXTENSIONS:
            real_files.add(real)
            yield found, None
    if not real_files:
        yield Path(pattern), f"no image matches {pattern}"


def _walk(folder: Path, excluded: str | None) -> Iterator[tuple[Path, str | None]]:
    """Image files under `folder` (symlinked folders are not followed), and the folders that
    could not be listed, each with its problem."""
    unreadable: list[OSError] = []
    for root, dirs, files in os.walk(folder, onerror=unreadable.append):
        yield from _unreadable_folders(unreadable, folder)
        dirs[:] = sorted(
            name
            for name in dirs
            if not name.startswith(".") and os.path.realpath(Path(root, name)) != excluded
        )
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield Path(root, name), None
    yield from _unreadable_folders(unreadable, folder)


def _unreadable_folders(errors: list[OSError], top: Path) -> Iterator[tuple[Path, str | None]]:
    """os.walk's listing errors so far, as problem inputs, and forgotten."""
    for error in errors:
        where = Path(error.filename or top)
        yield where, f"cannot read folder {where}: {error.strerror or error}"
    errors.clear()


def _common_folder(arguments: Sequence[str]) -> str:
    """The folder the outputs mirror: the common parent of every directory argument, each
    file's folder and each glob's fixed leading part."""
    roots = []
    for argument in arguments:
        path = Path(argument)
        if _is_glob(argument):
            fixed = []
            for part in path.parts:
                if glob.has_magic(part):
                    break
                fixed.append(part)
            path = Path(*fixed) if fixed else Path(".")
        elif not path.is_dir():
            path = path.parent
        roots.append(os.path.abspath(path))
    return os.path.commonpath(roots)
