"""`client.py`: detect objects in a photo with a model served by TF Serving (REST or gRPC).

The seed's command line still works as it was (`client.py --server_url ... --image_path ...`
runs `predict`); `status` and `metadata` check a server before sending it work. Every command
speaks gRPC too (`--protocol grpc` or a `grpc://` URL), through the same library calls.
"""

from __future__ import annotations

import functools
import gc
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from object_detection.options import (
    COCO_RESULTS_NAME,
    DEFAULT_MAX_BOXES,
    ENCODINGS,
    INPUT_RANGES,
    OUTPUT_FORMATS,
    DetectOptions,
)
from tfserving.client import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    TFServingClient,
)
from tfserving.console import with_hint
from tfserving.conventions import DEFAULT_SIGNATURE, GRPC_PORT, REST_PORT
from tfserving.errors import (
    ResponseTooLarge,
    RestUnfeedable,
    ServerTimeout,
    SidecarError,
    SignatureNotFound,
    TFServingError,
    UnfeedableInput,
    escape_controls,
)
from tfserving.spec import ServerSpec, ServerSpecError, grpc_address

if TYPE_CHECKING:
    from object_detection.batch import BatchOptions
    from object_detection.coco import ImageIds
    from object_detection.label_map import LabelMap
    from object_detection.plan import Plan
    from tfserving.model_client import ModelClient

# The pipeline (numpy, Pillow, label maps), the batch and bench code and tqdm are imported in
# the commands that use them: `--help` and a typo answer without them (bench_cold_start.py).

FILE = click.Path(dir_okay=False, path_type=Path)
# Errors a user can fix (anything the project raises, and files): one line, exit 1, no traceback.
USER_ERRORS = (SidecarError, OSError)
# The option that changes what an error is about: the library's messages name no flags.
HINTS = {
    ServerTimeout: "; raise --timeout if the model needs longer",
    ResponseTooLarge: "; raise --max_response_mb to accept it",
    SignatureNotFound: "; pick one with --signature_name",
    UnfeedableInput: "; force an encoding with --encoding",
    RestUnfeedable: "; send it over gRPC: --protocol grpc",
}
# An Authorization header value ("Bearer TOKEN") for servers behind an authenticating proxy:
# read from here or from --authorization_file, never from the command line (process lists).
AUTHORIZATION_ENV = "TFS_AUTHORIZATION"
LISTED_DETECTIONS = 20  # the human summary's list; the JSON has every detection

EXAMPLES = """\b
Examples:
  # the seed's command (no subcommand means predict)
  python client.py --server_url "http://localhost:8501/v1/models/ssd:predict" \\
      --image_path photo.jpg --output_json out/photo.json \\
      --save_output_image true --label_map data/labels.pbtxt
  # the same server named by parts; a load balancer's IP works the same way
  python client.py predict --host 34.73.137.228 --model_name ssd --image_path photo.jpg
  # a folder (recursively) and a glob, 4 requests at a time; after a crash add --resume
  python client.py predict --model_name ssd photos/ 'more/**/*.png' --output_dir results/
  # COCO results to evaluate with pycocotools, image ids from the ground truth's file names
  python client.py predict --model_name ssd val2017/ --output_dir out/ \\
      --format coco --coco_gt instances_val2017.json
  # a Mask R-CNN model: masks drawn on the picture but left out of the JSON
  python client.py predict --model_name mask_rcnn photo.jpg --no-masks --save_output_image true
  python client.py status --model_name ssd --wait 60
  python client.py metadata --server_url http://localhost:8501/v1/models/ssd
  # gRPC (port 8500): pixels travel as raw bytes, not JSON text
  python client.py predict --server_url grpc://localhost:8500 --model_name ssd photo.jpg
  python client.py status --protocol grpc --model_name ssd
  # TLS behind a load balancer that wants a token (read from the environment, never argv)
  TFS_AUTHORIZATION="Bearer $TOKEN" python client.py predict --model_name ssd \\
      --server_url grpcs://detect.example.com --ca_file ca.pem photo.jpg
"""


def printable(text: str) -> str:
    """`text` on one line, control characters written as escapes (ESC as \\x1b, a newline as
    \\x0a): error texts, model and tensor names, labels and file names come from servers and
    files, and nothing the client prints may move the terminal's cursor or fake a line."""
    return escape_controls(text)


def user_message(exc: Exception) -> str:
    """The one line a user sees for `exc`: its message, the option that helps, printable."""
    return printable(with_hint(exc, HINTS))


def say(line: str, err: bool = False) -> None:
    """click.echo for a line of human-readable text, made printable."""
    click.echo(printable(line), err=err)


class DefaultPredictGroup(click.Group):
    """Runs `predict` when the first argument is not a subcommand (the seed's command line)
    and turns the errors a user can fix into one-line messages."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["predict", *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            raise click.ClickException(user_message(exc)) from exc


@dataclass(frozen=True)
class ServerSettings:
    spec: ServerSpec
    timeout: float
    retries: int
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    grpc_port: int | None = None  # None: REST
    ca_file: Path | None = None
    authorization: str | None = field(default=None, repr=False)

    def client(self, retries: int | None = None, pool_size: int = 10) -> ModelClient:
        """A REST or gRPC client of the model (gRPC multiplexes calls: no pool to size)."""
        options: dict[str, Any] = {
            "timeout": self.timeout,
            "retries": self.retries if retries is None else retries,
            "max_response_bytes": self.max_response_bytes,
            "ca_file": self.ca_file,
            "authorization": self.authorization,
        }
        if self.grpc_port is None:
            return TFServingClient(self.spec, pool_size=pool_size, **options)
        from tfserving.grpc_client import GrpcClient

        return GrpcClient.from_spec(self.spec, self.grpc_port, **options)


def server_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options naming a server, shared by every subcommand, passed on as `server`."""

    @click.option(
        "--server_url",
        envvar="TFS_SERVER_URL",
        help="TF Serving REST URL of the model, e.g. "
        "http://localhost:8501/v1/models/NAME:predict (also .../versions/N, .../labels/L, "
        "or just http://HOST:PORT with --model_name), or its gRPC address, "
        "grpc://HOST:PORT (grpcs:// for TLS). User and password in it "
        "(http://user:secret@host) go as basic auth and are never printed; set TFS_SERVER_URL "
        "instead to keep them out of the process list.",
    )
    @click.option("--host", default="localhost", show_default=True, help="Server host or IP.")
    @click.option(
        "--port",
        type=click.IntRange(1, 65535),
        help=f"Server port  [default: {REST_PORT}, or {GRPC_PORT} with gRPC]",
    )
    @click.option(
        "--protocol",
        type=click.Choice(["rest", "grpc"]),
        help="TF Serving API to call  [default: grpc for a grpc:// URL, else rest]",
    )
    @click.option("--model_name", help="Model name (overrides the one in --server_url).")
    @click.option("--model_version", type=click.IntRange(min=0), help="A specific version.")
    @click.option("--version_label", help="A version label such as 'stable'.")
    @click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=DEFAULT_TIMEOUT,
        show_default=True,
        help="Seconds for each whole request: connecting, sending and the full answer.",
    )
    @click.option(
        "--max_response_mb",
        type=click.FloatRange(min=0, min_open=True),
        default=DEFAULT_MAX_RESPONSE_BYTES / 2**20,
        show_default=True,
        help="Refuse answers larger than this many MiB (after decompression).",
    )
    @click.option(
        "--retries",
        type=click.IntRange(min=0),
        default=DEFAULT_RETRIES,
        show_default=True,
        help="Retries, with backoff, while the server refuses connections or answers 503 "
        "(gRPC: UNAVAILABLE).",
    )
    @click.option(
        "--ca_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="TLS (https:// or grpcs://): trust the server's certificate if this CA bundle "
        "(PEM) signed it  [default: the system's roots]",
    )
    @click.option(
        "--authorization_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Send this file's content as the Authorization header (e.g. 'Bearer TOKEN'), "
        f"for a server behind an authenticating proxy. Or set {AUTHORIZATION_ENV}; never "
        "put a secret on the command line.",
    )
    @functools.wraps(command)
    def wrapper(
        server_url: str | None,
        host: str,
        port: int | None,
        protocol: str | None,
        model_name: str | None,
        model_version: int | None,
        version_label: str | None,
        timeout: float,
        max_response_mb: float,
        retries: int,
        ca_file: Path | None,
        authorization_file: Path | None,
        **kwargs: Any,
    ) -> Any:
        try:
            grpc_url = grpc_address(server_url) if server_url else None
            if grpc_url and protocol == "rest":
                raise click.UsageError("a grpc:// URL is gRPC's: drop --protocol rest")
            use_grpc = grpc_url is not None or protocol == "grpc"
            default_port = GRPC_PORT if use_grpc else REST_PORT
            if server_url:
                url = grpc_url[0] if grpc_url else server_url
                spec = ServerSpec.from_url(url, model_name, model_version, version_label)
            elif model_name:
                spec = ServerSpec.from_parts(
                    host, port or default_port, model_name, model_version, version_label
                )
            else:
                raise click.UsageError("name the model: --server_url URL or --model_name NAME")
        except ServerSpecError as exc:
            raise click.UsageError(str(exc)) from None
        grpc_port = (grpc_url[1] if grpc_url else port or GRPC_PORT) if use_grpc else None
        settings = ServerSettings(
            spec,
            timeout,
            retries,
            int(max_response_mb * 2**20),
            grpc_port,
            ca_file,
            read_authorization(authorization_file),
        )
        return command(server=settings, **kwargs)

    return wrapper


def read_authorization(path: Path | None) -> str | None:
    """The Authorization header's value from the file, else from the environment, else None."""
    if path is None:
        value = os.environ.get(AUTHORIZATION_ENV, "").strip()
        source = AUTHORIZATION_ENV
    else:
        value, source = path.read_text().strip(), str(path)
    if "\n" in value or "\r" in value:
        raise click.UsageError(f"{source}: the Authorization value must be one line")
    if path is not None and not value:
        raise click.UsageError(f"{source} is empty: it should hold the Authorization value")
    return value or None


# Options of both predict and bench: the request is built the same way for both.
encoding_option = click.option(
    "--encoding",
    type=click.Choice(ENCODINGS),
    default="auto",
    show_default=True,
    help="How to send the image: auto follows the model's input dtype (DT_STRING: b64 of the "
    "file, DT_UINT8/DT_FLOAT/DT_HALF: pixel array).",
)
signature_option = click.option(
    "--signature_name",
    help=f"The signature to call  [default: {DEFAULT_SIGNATURE}, or the model's only one]",
)
input_range_option = click.option(
    "--input_range",
    type=click.Choice(INPUT_RANGES),
    default=INPUT_RANGES[0],
    show_default=True,
    help="Pixel values for a DT_FLOAT/DT_HALF input: 0-255 (TF Object Detection API exports) "
    "or 0-1 (TF Hub detectors).",
)
max_side_option = click.option(
    "--max_side",
    type=click.IntRange(min=1),
    metavar="PIXELS",
    help="Pixel encoding: shrink larger images to fit PIXELS x PIXELS before sending (less "
    "JSON, faster; boxes still land on the original). b64 sends the file as it is.",
)


@click.group(cls=DefaultPredictGroup, epilog=EXAMPLES)
def cli() -> None:
    """Object detection through TF Serving's REST or gRPC API: JSON results and an annotated
    picture."""


@cli.command(epilog=EXAMPLES)
@server_options
@click.argument("paths", nargs=-1, metavar="[PHOTO|DIR|GLOB]...")
@click.option(
    "--image_path",
    multiple=True,
    help="The photo (JPEG, PNG, ...). Repeat it, or name photos, directories (searched "
    "recursively for image files) and quoted globs as arguments, to detect in many.",
)
@click.option(
    "--output_json",
    type=FILE,
    help="Write the result here (default: print it).",
)
@click.option(
    "--save_output_image",
    type=click.BOOL,
    default=False,
    show_default=True,
    help="true/false: also write the annotated picture (next to the JSON: NAME_annotated.jpg).",
)
@click.option(
    "--output_image",
    type=FILE,
    help="Write the annotated picture here (implies --save_output_image true).",
)
@click.option(
    "--label_map",
    type=FILE,
    help="Label map (.pbtxt) naming the class ids.  [default: the COCO map, data/labels.pbtxt]",
)
@click.option(
    "--min_score",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Keep detections scoring at least this.",
)
@click.option(
    "--max_boxes",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BOXES,
    show_default=True,
    help="Keep at most this many, best first.",
)
@encoding_option
@input_range_option
@signature_option
@click.option(
    "--raw/--no-raw",
    default=True,
    show_default=True,
    help="Keep the server's full answer in the JSON (raw_response).",
)
@max_side_option
@click.option(
    "--masks/--no-masks",
    default=True,
    show_default=True,
    help="Models with masks: write each detection's mask (COCO RLE) in the JSON and the COCO "
    "results; --no-masks leaves them out to keep the files small (the picture still shows them).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(OUTPUT_FORMATS),
    default="json",
    show_default=True,
    help="json: the result document per photo; coco: a COCO results list (image_id, "
    "category_id, bbox [x, y, w, h] in pixels, score, segmentation, keypoints) for "
    "pycocotools' COCOeval, to --output_json (or stdout), or with --output_dir to "
    f"OUTPUT_DIR/{COCO_RESULTS_NAME} beside the per-photo JSON.",
)
@click.option(
    "--coco_gt",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="GT.json",
    help="--format coco: take each photo's image_id from this COCO annotations file (the "
    "image whose file_name is the photo's path relative to the inputs' folder, else its base "
    "name)  [default: 1..N in input order, listed in image_ids.json]",
)
@click.option(
    "--output_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Many images: write NAME.json (and NAME_annotated.jpg) here, mirroring the input "
    "folders, and summary.jsonl with every input's outcome.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Many images: requests in flight at once, over as many keep-alive connections.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Many images: skip inputs whose result is already complete in --output_dir.",
)
def predict(
    server: ServerSettings,
    paths: tuple[str, ...],
    image_path: tuple[str, ...],
    output_json: Path | None,
    save_output_image: bool,
    output_image: Path | None,
    label_map: Path | None,
    min_score: float,
    max_boxes: int | None,
    encoding: str,
    input_range: str,
    signature_name: str | None,
    raw: bool,
    max_side: int | None,
    masks: bool,
    output_format: str,
    coco_gt: Path | None,
    output_dir: Path | None,
    workers: int,
    resume: bool,
) -> None:
    """Detect objects in one image (JSON with the detections, and optionally the picture),
    or in many: photos, directories and globs, with --output_dir."""
    from object_detection.inputs import names_one_file
    from object_detection.label_map import coco_label_map, load_label_map

    inputs = [*image_path, *paths]
    if not inputs:
        raise click.UsageError("name the image: --image_path PHOTO (or photos, dirs, globs)")
    labels = load_label_map(label_map) if label_map else coco_label_map()
    options = DetectOptions(
        min_score,
        max_boxes,
        encoding,
        signature_name,
        input_range,
        keep_raw=raw,
        max_side=max_side,
        keep_masks=masks,
    )
    image_ids = coco_image_ids(output_format, coco_gt)
    if output_dir is None and names_one_file(inputs):
        if resume:
            raise click.UsageError("--resume needs --output_dir")
        image = Path(inputs[0])
        predict_one(
            server, image, labels, options, output_json, save_output_image, output_image, image_ids
        )
        return
    if output_dir is None:
        raise click.UsageError("several images (or a directory, or a glob) need --output_dir")
    if output_json or output_image:
        raise click.UsageError(
            "--output_json and --output_image name one image's files: with --output_dir, "
            "each image gets NAME.json (and NAME_annotated.jpg) there"
        )
    output_real = os.path.realpath(output_dir)  # resolve() raises on a symlink loop
    if any(Path(name).is_dir() and os.path.realpath(name) == output_real for name in inputs):
        raise click.UsageError("--output_dir must not be one of the input directories")
    from object_detection.batch import BatchOptions  # threads and all: only for many images

    batch = BatchOptions(output_dir, workers, save_output_image, resume)
    predict_many(server, inputs, labels, options, batch, image_ids)


def coco_image_ids(output_format: str, coco_gt: Path | None) -> ImageIds | None:
    """With --format coco, where the photos' image ids come from (read now: a broken ground
    truth stops the run before any request)."""
    if output_format != "coco":
        if coco_gt:
            raise click.UsageError("--coco_gt goes with --format coco")
        return None
    from object_detection.coco import ImageIds

    return ImageIds(coco_gt)


def predict_one(
    server: ServerSettings,
    image_path: Path,
    labels: LabelMap,
    options: DetectOptions,
    output_json: Path | None,
    save_output_image: bool,
    output_image: Path | None,
    image_ids: ImageIds | None = None,
) -> None:
    """The seed's single-image command: JSON to a file or stdout, a human summary. With
    `image_ids` (--format coco) the JSON is the photo's COCO results."""
    from object_detection.pipeline import (
        RESULT_LAYOUT,
        annotated_image_path,
        detect,
        write_annotated_image,
        write_document,
    )
    from object_detection.strict_json import dumps_json

    # The id first: a photo missing from the ground truth costs no request.
    image_id = image_ids.assign(image_path, image_path) if image_ids else 0
    with server.client() as client:
        result = detect(client, image_path, labels, options)
    warn_if_unused(options.max_side, options.input_range, result.plan)

    document, layout = result.to_json(), RESULT_LAYOUT
    if image_ids:
        from object_detection.coco import COCO_LAYOUT, coco_results, image_ids_path

        document, layout = coco_results(image_id, document), COCO_LAYOUT
    # Without --output_json, stdout carries the JSON and the human summary goes to stderr.
    to_stderr = output_json is None
    if output_json is None:
        click.echo(dumps_json(document, layout))
    else:
        write_document(document, output_json, layout)
        if image_ids and not image_ids.ground_truth:
            write_coco_image_ids(image_ids, image_ids_path(output_json))
    if save_output_image or output_image:
        if output_image is None:
            output_image = (
                annotated_image_path(output_json)
                if output_json
                else Path(f"{image_path.stem}_annotated.jpg")
            )
        write_annotated_image(result, output_image)

    say(
        f"{len(result.detections)} detections (score >= {options.min_score:g}) from model "
        f"{result.model_name} version {result.model_version}, {result.encoding} encoding, "
        f"{result.timing_ms['total']:.0f} ms",
        err=to_stderr,
    )
    for detection in result.detections[:LISTED_DETECTIONS]:
        box = ", ".join(f"{value:.3f}" for value in detection.box)
        say(f"  {detection.label:<16} {detection.score:.3f}  [{box}]", err=to_stderr)
    if len(result.detections) > LISTED_DETECTIONS:
        unlisted = len(result.detections) - LISTED_DETECTIONS
        say(f"  ... and {unlisted} more, in the JSON", err=to_stderr)
    if len(result.detections) == options.max_boxes:
        say(f"  (--max_boxes {options.max_boxes} reached: there may be more)", err=to_stderr)
    if output_json:
        say(f"JSON: {output_json}", err=to_stderr)
    if output_image:
        say(f"annotated image: {output_image}", err=to_stderr)


def predict_many(
    server: ServerSettings,
    inputs: list[str],
    labels: LabelMap,
    options: DetectOptions,
    batch: BatchOptions,
    image_ids: ImageIds | None = None,
) -> None:
    """Every image through the server, `workers` at a time, with a progress bar on stderr.
    With `image_ids` (--format coco), OUTPUT_DIR/coco_results.json is made at the end from
    the results of the inputs that are done."""
    from tqdm import tqdm

    from object_detection.batch import SUMMARY_NAME, BatchTally, run_batch
    from object_detection.coco import numbered
    from object_detection.inputs import iter_inputs
    from object_detection.plan import plan_for

    output_dir, workers = batch.output_dir, batch.workers
    done: set[str] = set()  # the inputs whose result is in OUTPUT_DIR (ok or skipped)
    total = sum(1 for _ in iter_inputs(inputs, exclude=output_dir))  # a walk, no image read
    with server.client(pool_size=workers) as client:
        # A server or model this client cannot use stops the run before the first image.
        signature = client.metadata().signature(options.signature_name)
        plan = plan_for(signature, options.encoding, options.input_range)
        warn_if_unused(options.max_side, options.input_range, plan)
        progress = tqdm(total=total, unit="img", desc="predict", file=sys.stderr)

        def show(record: dict[str, Any], tally: BatchTally) -> None:
            if record["status"] == "error":
                error, name = record["error"], record["input"]
                message = error if name in error else f"{name}: {error}"
                progress.write(f"failed: {printable(message)}", sys.stderr)
            else:
                done.add(record["input"])
            counts = {"ok": tally.ok, "failed": tally.error, "skipped": tally.skipped}
            progress.set_postfix(counts, refresh=False)
            progress.update()

        try:
            images = iter_inputs(inputs, exclude=output_dir)
            if image_ids:
                images = numbered(images, image_ids)
            tally = run_batch(client, images, labels, options, batch, show)
        except KeyboardInterrupt:
            raise click.ClickException(
                "interrupted: the results written so far are complete; run the same command "
                "with --resume to do the rest"
            ) from None
        finally:
            progress.close()
    if image_ids:
        write_batch_coco(image_ids, done, batch)
    say(
        f"{tally.ok} done, {tally.error} failed, {tally.skipped} skipped (already done); "
        f"results in {output_dir}, every input's outcome in {output_dir / SUMMARY_NAME}",
        err=True,
    )
    if tally.error:
        raise click.ClickException(f"{tally.error} of {total} images failed (see the summary)")


def write_batch_coco(image_ids: ImageIds, done: set[str], batch: BatchOptions) -> None:
    """OUTPUT_DIR/coco_results.json from the done inputs' result files (this run's and, with
    --resume, earlier ones'), and image_ids.json when the ids are the run's own."""
    from object_detection.coco import COCO_LAYOUT, IMAGE_IDS_NAME, results_from_files
    from object_detection.inputs import BatchInput
    from object_detection.pipeline import write_document

    documents = [
        (image.image_id, batch.json_path(BatchInput(image.path, image.name)))
        for image in image_ids.images
        if str(image.path) in done
    ]
    results_path = batch.output_dir / COCO_RESULTS_NAME
    write_document(results_from_files(documents), results_path, COCO_LAYOUT)
    if not image_ids.ground_truth:
        write_coco_image_ids(image_ids, batch.output_dir / IMAGE_IDS_NAME)
    say(f"COCO results: {results_path} ({len(documents)} images)", err=True)


def write_coco_image_ids(image_ids: ImageIds, path: Path) -> None:
    """Which photo each image id stands for, when the ids are the run's own (1..N)."""
    from object_detection.coco import COCO_LAYOUT
    from object_detection.pipeline import write_document

    write_document(image_ids.id_map(), path, COCO_LAYOUT)


def warn_if_unused(max_side: int | None, input_range: str, plan: Plan) -> None:
    """A note on stderr for options the model's input makes moot (the run goes on)."""
    if max_side and plan.encoding == "b64":
        click.echo("note: --max_side applies to pixels; b64 sends the file as it is", err=True)
    elif max_side and plan.fixed_size:
        size = "{}x{}".format(*plan.fixed_size)
        click.echo(f"note: --max_side unused: the model takes {size} images", err=True)
    if input_range != INPUT_RANGES[0] and not plan.float_input:
        click.echo(
            f"note: --input_range applies to float inputs; {plan.input.name!r} is "
            f"{plan.input.dtype}",
            err=True,
        )


BENCH_EXAMPLES = """\b
Examples:
  # 200 requests, 4 at a time, cycling through two photos
  python client.py bench --model_name ssd --requests 200 --concurrency 4 a.jpg b.jpg
  # 30 seconds at 8 in flight; figures as JSON, and a latency plot
  python client.py bench --server_url http://10.0.0.5:8501/v1/models/ssd \\
      --duration 30 --concurrency 8 --json --plot latency.png photo.jpg
"""


@cli.command(epilog=BENCH_EXAMPLES)
@server_options
@click.argument("images", nargs=-1, required=True, type=FILE)
@click.option(
    "--requests",
    "request_count",
    type=click.IntRange(min=1),
    help="Measured requests to send  [default: 100, unless --duration]",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Send requests for this long instead of a fixed number.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Requests in flight at once (each on its own keep-alive connection).",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    help="Requests sent first and not counted  [default: one per concurrent connection]",
)
@encoding_option
@input_range_option
@signature_option
@max_side_option
@click.option("--plot", type=FILE, help="Write a PNG: latency histogram and latency over time.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def bench(
    server: ServerSettings,
    images: tuple[Path, ...],
    request_count: int | None,
    duration: float | None,
    concurrency: int,
    warmup: int | None,
    encoding: str,
    input_range: str,
    signature_name: str | None,
    max_side: int | None,
    plot: Path | None,
    as_json: bool,
) -> None:
    """Load-test a served model: latency percentiles, throughput, errors by kind.

    Bodies are built before timing; warm-up requests are not counted; nothing is retried.
    Exit code 1 when any measured request failed.
    """
    from object_detection.images import load_image
    from object_detection.pipeline import request_body
    from object_detection.plan import plan_for
    from object_detection.strict_json import dumps_json
    from tfserving.loadtest import format_report, run_bench
    from tfserving.loadtest import plot as draw_bench_plot

    if request_count is not None and duration is not None:
        raise click.UsageError("give --requests or --duration, not both")
    if duration is None and request_count is None:
        request_count = 100
    with server.client(retries=0, pool_size=concurrency) as client:
        plan = plan_for(client.metadata().signature(signature_name), encoding, input_range)
        warn_if_unused(max_side, input_range, plan)
        bodies = [request_body(client, load_image(image), plan, max_side)[0] for image in images]
        what = f"{request_count} requests" if duration is None else f"{duration:g} s"
        click.echo(
            f"bench: {what} at concurrency {concurrency}, {plan.encoding} encoding", err=True
        )
        result = run_bench(
            client,
            bodies,
            concurrency,
            request_count,
            duration,
            concurrency if warmup is None else warmup,
        )
    summary = result.summary()
    if as_json:
        click.echo(dumps_json(summary, depth=None))
    else:
        for line in format_report(summary).splitlines():
            say(line)
    if plot:
        draw_bench_plot(result, plot)
        click.echo(f"plot: {plot}", err=True)
    if summary["errors"]:
        raise SystemExit(1)


@cli.command(epilog=EXAMPLES)
@server_options
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=0,
    metavar="SECONDS",
    help="Poll until a version is AVAILABLE, for at most SECONDS.",
)
def status(server: ServerSettings, wait: float) -> None:
    """Model version states; exit code 0 only when a version is AVAILABLE."""
    deadline = time.monotonic() + wait
    # While waiting, the polling loop is the retry: urllib3's backoff would overshoot --wait.
    with server.client(retries=0 if wait else None) as client:
        while True:
            try:
                versions, problem = client.status(), None
            except TFServingError as exc:
                versions, problem = [], exc
            if any(version.available for version in versions) or time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    if problem is not None:
        raise problem
    for version in versions:
        message = f" ({version.error_message})" if version.error_message else ""
        say(f"{server.spec.model_name} version {version.version}: {version.state}{message}")
    if not any(version.available for version in versions):
        raise click.ClickException(
            f"no version of {server.spec.model_name} is AVAILABLE"
            + (f" after waiting {wait:g} s" if wait else " (use --wait SECONDS to wait for it)")
        )


@cli.command(epilog=EXAMPLES)
@server_options
@click.option("--json", "as_json", is_flag=True, help="Print TF Serving's answer as it is.")
def metadata(server: ServerSettings, as_json: bool) -> None:
    """The model's signatures: inputs and outputs with dtypes and shapes."""
    from object_detection.plan import plan_for
    from object_detection.strict_json import dumps_json

    with server.client() as client:
        if as_json:
            click.echo(dumps_json(client.metadata_json(), depth=None))
            return
        model = client.metadata()
    say(f"model {model.model_name} version {model.version}")
    for signature in model.signatures.values():
        say(f"signature {signature.name!r} ({signature.method})")
        say("  inputs:")
        for tensor in signature.inputs:
            say(f"    {tensor.describe()}")
        say("  outputs:")
        for tensor in signature.outputs:
            say(f"    {tensor.describe()}")
        try:
            for line in plan_for(signature).describe():
                say(f"  {line}")
        except TFServingError as exc:
            say(f"  predict cannot use it: {exc}")
    if model.signatures:
        try:
            chosen = model.signature().name
        except TFServingError as exc:
            say(f"predict without --signature_name: {exc}")
        else:
            say(f"predict without --signature_name calls {chosen!r}")


def main() -> None:
    """`python client.py ...` or the installed `tfs-client ...`: usage names what was run."""
    try:
        cli(prog_name=Path(sys.argv[0]).name)
    finally:
        # The process ends here (click exits): everything alive now dies with it. Frozen, it is
        # left out of the garbage collections the interpreter runs at exit, which walk every
        # object (30,000 after numpy, Pillow and urllib3): 40-70 ms of a one-photo run on the
        # 2-core development machine. The commands have closed their files and connections;
        # stdout and stderr are flushed at exit as always.
        gc.freeze()
