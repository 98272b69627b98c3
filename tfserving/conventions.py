"""TF Serving's conventions, in one place, without TensorFlow.

The client, the local server and the image builder all have to agree with
`tensorflow_model_server` on the same few facts: which ports it listens on, which signature a
request without `signature_name` means, where the serving image looks for models, and how a
model base path is laid out (`BASE_PATH/VERSION/saved_model.pb`, VERSION a number). They read
them from here, so none of them can drift from the others.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tfserving.errors import TFServingError

REST_PORT = 8501  # --rest_api_port
GRPC_PORT = 8500  # --port
DEFAULT_SIGNATURE = "serving_default"  # a request that names no signature calls this one
SERVE_TAGS = ("serve",)  # the MetaGraph tensorflow_model_server loads (--saved_model_tags)
MODEL_BASE_PATH = "/models"  # the tensorflow/serving image's MODEL_BASE_PATH
# TF Serving's SavedModel loader reads either file (tensorflow/cc/saved_model/loader_util).
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


class ModelDirError(TFServingError):
    """A model directory TF Serving could not load; the message says what was found instead."""


def model_path(model_name: str, base: str = MODEL_BASE_PATH) -> str:
    """Where the serving image finds a model: MODEL_BASE_PATH/MODEL_NAME (versions below)."""
    return f"{base.rstrip('/')}/{model_name}"


def saved_model_file(directory: Path) -> Path | None:
    """The SavedModel proto of a version directory (binary preferred, as TF Serving does)."""
    for name in SAVED_MODEL_FILES:
        if (directory / name).is_file():
            return directory / name
    return None


def is_saved_model(directory: Path) -> bool:
    return saved_model_file(directory) is not None


def numeric_versions(base_path: Path) -> dict[int, Path]:
    """Version dirs under a base path, as TF Serving reads them: names parsed as integers.

    "00001" is version 1; names that are not integers (e.g. "tmp", "1.bak", "²") are ignored.
    """
    versions = {}
    for entry in base_path.iterdir():
        if entry.is_dir() and entry.name.isascii() and entry.name.isdigit():
            versions[int(entry.name)] = entry
    return versions


def servable_versions(base_path: Path) -> dict[int, Path]:
    """Every numeric version under `base_path`; none is an error that says what was found."""
    if not base_path.is_dir():
        raise ModelDirError(f"model base path {base_path} is not a directory")
    versions = numeric_versions(base_path)
    if not versions:
        if is_saved_model(base_path):
            raise ModelDirError(
                f"{base_path} is a SavedModel, not a model base path: pass its parent, named "
                "by a version number (BASE_PATH/1/saved_model.pb)"
            )
        found = sorted(p.name for p in base_path.iterdir()) or ["nothing"]
        raise ModelDirError(
            f"no numeric version directory under {base_path} (found: {', '.join(found)}); "
            "lay the model out as BASE_PATH/1/saved_model.pb"
        )
    return versions


def latest_version(base_path: Path) -> tuple[int, Path]:
    """The highest numeric version under `base_path` (TF Serving's default "latest" policy)."""
    versions = servable_versions(base_path)
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
