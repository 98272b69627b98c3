"""Model base paths as TF Serving reads them: numbered version directories. No TensorFlow here,
so model preparation works without it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ModelDirError(Exception):
    """The base path holds nothing servable (said in words a user can act on)."""


def numeric_versions(base_path: Path) -> dict[int, Path]:
    """Version dirs under a base path, as TF Serving reads them: names parsed as integers.

    "00001" is version 1; names that are not integers (e.g. "tmp", "1.bak") are ignored.
    """
    versions = {}
    for entry in base_path.iterdir():
        if entry.is_dir() and entry.name.isascii() and entry.name.isdigit():
            versions[int(entry.name)] = entry
    return versions


def latest_version(base_path: Path) -> tuple[int, Path]:
    """The highest numeric version under `base_path` (TF Serving's default "latest" policy)."""
    if not base_path.is_dir():
        raise ModelDirError(f"model base path {base_path} is not a directory")
    versions = numeric_versions(base_path)
    if not versions:
        if (base_path / "saved_model.pb").is_file():
            raise ModelDirError(
                f"{base_path} is a SavedModel, not a model base path: pass its parent, named "
                "by a version number (BASE_PATH/1/saved_model.pb)"
            )
        found = sorted(p.name for p in base_path.iterdir()) or ["nothing"]
        raise ModelDirError(
            f"no numeric version directory under {base_path} (found: {', '.join(found)}); "
            "lay the model out as BASE_PATH/1/saved_model.pb (see python -m serving.prepare_model)"
        )
    version = max(versions)
    return version, versions[version]


@contextmanager
def staged_directory(target: Path, replace: bool = False) -> Iterator[Path]:
    """A hidden sibling path of `target` to write into; renamed to `target` when the block ends
    without error (`replace`: an existing `target` is removed first), else removed.

    TF Serving polls its base path and loads any new numeric directory it sees; a half-written
    version would fail to load (or worse, load). Names starting with "." are not versions to it.
    Not tempfile.mkdtemp: its mode 0700 would stay on the version directory after the rename and
    hide the model from a TF Serving container that runs as another user. The path does not exist
    yet: the block creates it (shutil.copytree, tf.saved_model.save).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
        if replace and target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
