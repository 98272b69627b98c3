"""Re-export a pixel-input detection SavedModel so that it takes encoded images (JPEG/PNG bytes).

Why: a model exported with a uint8 image input (`[-1, -1, -1, 3]`) makes every REST client send
the decoded pixels as a JSON list of numbers: a 1352x900 photo becomes ~20 MB of JSON instead of
~1.9 MB of base64 JPEG, and encoding/parsing that JSON dominates the request time. TF Serving
accepts `{"b64": "..."}` values only for DT_STRING inputs, so the fix has to be in the model.
Users who only have the exported SavedModel (not the training pipeline that could re-export with
`input_type=encoded_image_string_tensor`) can wrap it here instead:

    python -m serving.reexport models/ssd/1 models/ssd_jpeg --version 1

The new `serving_default` takes a DT_STRING tensor of shape [-1] (one encoded image per element),
decodes each element in the graph and runs the original signature on it, one image at a time, so
images of different sizes can share one request. Input name, output names and dtypes stay those
of the original, so clients only change how they encode the image.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import tensorflow as tf
from PIL import Image

from model_tools.errors import ModelToolError
from tfserving.console import log_on_stderr, with_hint
from tfserving.conventions import (
    DEFAULT_SIGNATURE,
    is_saved_model,
    numeric_versions,
    staged_directory,
)

log = logging.getLogger(__name__)


class ReexportError(ModelToolError):
    """The source or destination can't be used; the message says why and what to do instead."""


class NoSuchSignature(ReexportError):
    """The source model has no signature of the name asked for."""


class TargetExists(ReexportError):
    """The destination exists and replacing it was not asked for."""


@dataclass
class ImageSignature:
    """A loaded SavedModel's signature that takes one batch of uint8 RGB images."""

    loaded: Any  # the object tf.saved_model.load returned: owns the variables the function reads
    function: Callable[..., dict[str, tf.Tensor]]
    input_name: str
    input_spec: tf.TensorSpec
    outputs: dict[str, tf.TensorSpec]


def load_image_signature(src: Path, signature: str = DEFAULT_SIGNATURE) -> ImageSignature:
    """Load `src` and check that `signature` takes uint8 images [-1, -1, -1, 3].

    Checked up front so that a wrong model fails here with a sentence, not later inside a traced
    graph with a shape error.
    """
    if not is_saved_model(src):
        versions = numeric_versions(src)
        if versions:
            raise ReexportError(
                f"{src} is a TF Serving base path; pass one of its versions, "
                f"e.g. {versions[max(versions)]}"
            )
        raise ReexportError(f"{src} has no saved_model.pb: pass a SavedModel directory")
    try:
        loaded = tf.saved_model.load(str(src))
    except (OSError, ValueError, tf.errors.OpError) as err:
        raise ReexportError(f"could not load the SavedModel in {src}: {err}") from err
    if signature not in loaded.signatures:
        names = ", ".join(sorted(loaded.signatures)) or "none"
        raise NoSuchSignature(f"{src} has no signature {signature!r} (it has: {names})")
    function = loaded.signatures[signature]
    inputs = function.structured_input_signature[1]
    if len(inputs) != 1:
        raise ReexportError(
            f"signature {signature!r} takes {len(inputs)} inputs ({', '.join(sorted(inputs))}); "
            "only a single image input can be re-exported"
        )
    ((input_name, spec),) = inputs.items()
    _check_image_input(signature, input_name, spec)
    outputs = function.structured_outputs
    _check_batched_outputs(signature, outputs)
    return ImageSignature(loaded, function, input_name, spec, outputs)


def _check_image_input(signature: str, name: str, spec: tf.TensorSpec) -> None:
    found = f"signature {signature!r} input {name!r} is {spec.dtype.name} {_shape(spec)}"
    if spec.dtype == tf.string:
        raise ReexportError(f"{found}: it already takes encoded images, serve it as it is")
    batch_ok = spec.shape.rank == 4 and spec.shape[0] in (None, 1)
    if spec.dtype != tf.uint8 or not batch_ok or spec.shape[1:] != [None, None, 3]:
        raise ReexportError(
            f"{found}; re-export needs uint8 images of shape (-1, -1, -1, 3) "
            "(a batch of RGB pixel arrays of any size)"
        )


def _check_batched_outputs(signature: str, outputs: dict[str, tf.TensorSpec]) -> None:
    """Every output must have a batch dimension: the wrapper stacks one result per image on it."""
    unbatched = [
        name
        for name, spec in outputs.items()
        if not spec.shape.rank or spec.shape[0] not in (None, 1)  # rank None or 0: no batch
    ]
    if unbatched:
        raise ReexportError(
            f"signature {signature!r} outputs without a batch dimension: {', '.join(unbatched)}"
        )


def _shape(spec: tf.TensorSpec) -> str:
    """A shape the way saved_model_cli prints it: -1 for unknown dimensions."""
    if spec.shape.rank is None:
        return "(unknown rank)"
    return "(" + ", ".join(str(-1 if d is None else d) for d in spec.shape.as_list()) + ")"


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
    """Decode one JPEG/PNG/GIF/BMP into uint8 RGB [height, width, 3].

    JPEGs use the accurate integer IDCT: that is what Pillow uses, so the pixels are bit-identical
    to those a client decodes with Pillow and sends, and both paths give the same detections.
    (TensorFlow's default, INTEGER_FAST, differs by up to ~20 levels and moves scores by ~0.01.)
    """
    pixels = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
    )
    pixels.set_shape([None, None, 3])
    return pixels


def encoded_image_module(source: ImageSignature) -> tf.Module:
    """A tf.Module whose `serve` function maps encoded images to the source signature's outputs.

    Each image is decoded and run through the model on its own (tf.map_fn), then the results are
    stacked: images of different sizes can't be stacked into one pixel batch, and per-image calls
    are what a detector with a per-image resize does anyway.
    """
    per_image = {
        name: tf.TensorSpec(spec.shape[1:], spec.dtype) for name, spec in source.outputs.items()
    }

    def detect_one(encoded: tf.Tensor) -> dict[str, tf.Tensor]:
        batch = decode_rgb(encoded)[tf.newaxis]
        outputs = source.function(**{source.input_name: batch})
        return {name: outputs[name][0] for name in per_image}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=source.input_name)])
    def serve(encoded_images: tf.Tensor) -> dict[str, tf.Tensor]:
        return tf.map_fn(detect_one, encoded_images, fn_output_signature=per_image)

    module = tf.Module()
    module.model = source.loaded  # tracked, so the original variables are saved with the wrapper
    module.serve = serve
    return module


def target_dir(dest: Path, version: int | None) -> Path:
    """DEST/VERSION when a version is given (TF Serving's base-path layout), else DEST itself."""
    return dest if version is None else dest / str(version)


def save_atomically(module: tf.Module, target: Path, overwrite: bool) -> None:
    """Save into a hidden sibling directory, then rename it to `target` (see staged_directory)."""
    with staged_directory(target, replace=overwrite) as staging:
        signatures = {DEFAULT_SIGNATURE: module.serve.get_concrete_function()}
        tf.saved_model.save(module, str(staging), signatures=signatures)


def reexport(
    src: Path,
    dest: Path,
    signature: str = DEFAULT_SIGNATURE,
    version: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the encoded-image version of `src`'s `signature`; return the SavedModel directory.
    Each step is logged (`model_tools.reexport` logger) with its time."""
    target = target_dir(dest, version).resolve()  # resolved: "." must get a real name
    if target == src.resolve():
        raise ReexportError("the destination is the source itself: write to another directory")
    _check_replaceable(target, overwrite)
    with _step(f"loading {src} (signature {signature!r})"):
        source = load_image_signature(src, signature)
    log.info(
        "  input %r: uint8 %s; outputs: %s",
        source.input_name,
        _shape(source.input_spec),
        ", ".join(sorted(source.outputs)),
    )
    with _step(f"tracing and saving to {target}"):
        save_atomically(encoded_image_module(source), target, overwrite)
    log.info(
        "done: %s %r takes %r DT_STRING (-1), one encoded JPEG/PNG per element "
        '(over REST: {"b64": "..."})',
        target,
        DEFAULT_SIGNATURE,
        source.input_name,
    )
    return target


def _check_replaceable(target: Path, overwrite: bool) -> None:
    """`overwrite` replaces a SavedModel (or an empty directory), never some other directory:
    a mistyped DEST_DIR such as `~` must not be deleted."""
    if not target.exists():
        return
    if not overwrite:
        raise TargetExists(f"{target} already exists")
    if not is_saved_model(target) and any(target.iterdir()):
        raise ReexportError(
            f"{target} is not a SavedModel directory: not replacing it, even when asked to "
            "overwrite; choose another destination or remove it yourself"
        )


@dataclass
class CheckResult:
    """How the re-exported model compares with the original on one image."""

    image: Path
    largest_difference: float  # over every element of every output
    original_ms: float  # median model call with pixels decoded by Pillow beforehand
    reexported_ms: float  # median model call with the encoded file bytes (decoding included)


def check_on_images(
    src: Path,
    reexported: Path,
    images: Iterable[Path],
    signature: str = DEFAULT_SIGNATURE,
    runs: int = 5,
) -> Iterator[CheckResult]:
    """Run each image through the original (pixels) and the re-exported model (bytes), compare.

    Both models are loaded from disk, so this checks what was written, not what is in memory.
    The calls are in-process, without a server, so the times are those of the model alone.
    """
    source = load_image_signature(src, signature)
    function = tf.saved_model.load(str(reexported)).signatures[DEFAULT_SIGNATURE]
    for image in images:
        pixels = tf.constant(np.asarray(Image.open(image).convert("RGB"))[np.newaxis])
        encoded = tf.constant([image.read_bytes()])
        original, original_ms = _median_call(
            lambda pixels=pixels: source.function(**{source.input_name: pixels}), runs
        )
        wrapped, reexported_ms = _median_call(
            lambda encoded=encoded: function(**{source.input_name: encoded}), runs
        )
        largest = max(
            float(np.max(np.abs(original[name].numpy() - wrapped[name].numpy())))
            for name in original
        )
        yield CheckResult(image, largest, original_ms, reexported_ms)


def _median_call(call: Callable[[], Any], runs: int) -> tuple[Any, float]:
    """The result and median wall time in ms of `call`, after one untimed warm-up call."""
    result = call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - start) * 1000)
    return result, statistics.median(times)


@contextmanager
def _step(what: str) -> Iterator[None]:
    log.info("%s ...", what)
    start = time.perf_counter()
    yield
    log.info("  %.1f s", time.perf_counter() - start)


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="""\b
Examples:
  # TF Serving layout: writes models/ssd_jpeg/1/, serve with --model_base_path=models/ssd_jpeg
  python -m serving.reexport ../shared/models/ssd_mobilenet_v1_coco/1 models/ssd_jpeg --version 1
  # also compare with the original on a photo and time both model calls
  python -m serving.reexport SRC/1 models/ssd_jpeg --version 1 --check photo.jpg
""",
)
@click.argument("src_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dest_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--signature",
    default=DEFAULT_SIGNATURE,
    show_default=True,
    help="Signature of SRC_DIR that takes uint8 images [-1, -1, -1, 3].",
)
@click.option(
    "--version",
    type=click.IntRange(min=0),
    help="Write DEST_DIR/VERSION/ (the base-path layout TF Serving expects) instead of DEST_DIR.",
)
@click.option("--overwrite", is_flag=True, help="Replace the output directory if it exists.")
@click.option(
    "--check",
    "check_images",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="After writing, run this image through both models, compare outputs, time the calls. "
    "Repeatable.",
)
def main(
    src_dir: Path,
    dest_dir: Path,
    signature: str,
    version: int | None,
    overwrite: bool,
    check_images: tuple[Path, ...],
) -> None:
    """Re-export SRC_DIR (a SavedModel taking uint8 pixels) so that it takes encoded images.

    The result's serving_default takes a DT_STRING tensor [-1], one JPEG/PNG per element, under
    the original input name, and returns the original outputs. TF Serving then accepts
    {"instances": [{"b64": "<base64 JPEG>"}]}, far smaller and faster than pixel lists.
    Progress goes to stderr; the written SavedModel directory is printed on stdout.
    """

    with log_on_stderr("model_tools"):
        try:
            target = reexport(src_dir, dest_dir, signature, version, overwrite)
        except ReexportError as err:
            hints = {
                NoSuchSignature: "; choose one with --signature",
                TargetExists: ": pass --overwrite to replace it",
            }
            raise click.ClickException(with_hint(err, hints)) from err
        if check_images:
            _print_checks(src_dir, target, check_images, signature)
        click.echo(target)


def _print_checks(
    src: Path,
    target: Path,
    images: tuple[Path, ...],
    signature: str,
) -> None:
    try:
        for result in check_on_images(src, target, images, signature):
            click.echo(
                f"check {result.image.name}: largest output difference "
                f"{result.largest_difference:.4g}; model call (median of 5): original with "
                f"pixels {result.original_ms:.1f} ms, re-exported with bytes "
                f"{result.reexported_ms:.1f} ms",
                err=True,
            )
    except (OSError, tf.errors.InvalidArgumentError) as err:
        # The model is written at this point; only the comparison failed.
        raise click.ClickException(f"--check: cannot compare on this image: {err}") from err


if __name__ == "__main__":
    main()
