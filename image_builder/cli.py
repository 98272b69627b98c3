"""`build_image.py`: package a SavedModel into a TF Serving image, push it, pin its digest.

Progress goes to stderr, the result to stdout (the digest reference, or JSON with --json), so
`REF=$(python build_image.py ... --push)` works in scripts. The library only logs and reports
Progress events; this module turns them into stderr lines and tqdm bars, and the library's
errors into one `Error:` line, adding the option that changes the outcome where there is one
(the library's messages never name a flag).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click
from docker.auth import resolve_repository_name

from deploy.manifest import ManifestError, set_deployment_image
from image_builder.builder import Credentials, ImageBuilder, connect
from image_builder.model_dir import OutsideLinkError, scan_model
from image_builder.progress import Progress
from image_builder.reference import (
    ImageReference,
    check_base_image,
    check_model_name,
    image_reference,
)
from tfserving.console import log_on_stderr, with_hint
from tfserving.errors import SidecarError

if TYPE_CHECKING:
    from tqdm import tqdm

PASSWORD_ENV = "REGISTRY_PASSWORD"
# A fixed release, not :latest, so the same command builds the same image next month.
# Models exported by a newer TensorFlow may need a newer tag: pass --base_image.
DEFAULT_BASE_IMAGE = "tensorflow/serving:2.18.0"

EXAMPLES = f"""
\b
Examples:
  # the seed's image, pushed to Artifact Registry, digest written into the manifest
  gcloud auth configure-docker europe-west1-docker.pkg.dev
  python build_image.py --model_dir data/faster_rcnn_resnet --model_name faster_rcnn_resnet \\
      --registry europe-west1-docker.pkg.dev/my-project/serving --tag v0.1.0 --push \\
      --manifest faster_rcnn_resnet_k8s.yaml
\b
  # a local image only (no push), from a bare SavedModel export as version 3
  python build_image.py --model_dir export/saved_model --model_name ssd --version 3
\b
  # explicit credentials: the password from the environment or stdin, never the command line
  {PASSWORD_ENV}=... python build_image.py ... --push --username ci-bot
  cat token | python build_image.py ... --push --username ci-bot --password_stdin
"""


def _credentials(username: str | None, password_stdin: bool, repository: str) -> Credentials | None:
    if username is None:
        if password_stdin:
            raise click.UsageError("--password_stdin needs --username")
        return None  # the Docker config and its credential helpers
    if password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    else:
        password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        raise click.UsageError(
            f"--username needs a password: set {PASSWORD_ENV} or pipe it with --password_stdin"
        )
    return Credentials(username, password, resolve_repository_name(repository)[0])


def _check_manifest(manifest: Path, target: ImageReference) -> None:
    """Fail before building, not after pushing, when --manifest could not take the digest.

    Runs the real edit on a scratch copy with a dummy digest of the same shape.
    """
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch, manifest.name)
        shutil.copyfile(manifest, copy)
        try:
            set_deployment_image(copy, target.with_digest("sha256:" + "0" * 64))
        except (ManifestError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"--manifest {manifest}: {exc}") from None


class _ProgressDisplay:
    """The builder's Progress events: a tqdm bar for the copy and for each layer on a terminal;
    otherwise (CI logs) one line per finished layer. tqdm is imported only to draw a bar."""

    def __init__(self) -> None:
        self.interactive = sys.stderr.isatty()
        self.bars: dict[tuple[str, str | None], tqdm] = {}

    def __enter__(self) -> _ProgressDisplay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for bar in self.bars.values():  # those a failure cut short; a closed bar ignores it
            bar.close()

    def __call__(self, event: Progress) -> None:
        if self.interactive:
            self._draw(event)
        elif event.finished and event.layer:
            click.echo(f"{event.phase} {event.layer}: {event.status}", err=True)

    def _draw(self, event: Progress) -> None:
        key = (event.phase, event.layer)
        bar = self.bars.get(key)
        if bar is None:
            from tqdm import tqdm

            desc = f"{event.phase} {event.layer}" if event.layer else event.phase
            bar = self.bars[key] = tqdm(desc=desc, unit="B", unit_scale=True, leave=True)
        if event.total is not None:
            bar.total = max(event.total, event.done)  # pushes may count past the estimate
            bar.n = event.done
        if event.status:
            bar.set_postfix_str(event.status, refresh=False)
        bar.refresh()
        if event.finished:
            bar.close()  # drawn for good, before the next log line


def _interrupted(signum: int, frame: object) -> NoReturn:
    """SIGTERM behaves like Ctrl-C: unwind through every `finally`, removing the container."""
    raise KeyboardInterrupt


@click.command(epilog=EXAMPLES, context_settings={"max_content_width": 100})
@click.option(
    "--model_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="TF Serving base path (VERSION/saved_model.pb...) or a bare SavedModel dir.",
)
@click.option("--model_name", required=True, help="Model name: sets MODEL_NAME and the path.")
@click.option("--base_image", default=DEFAULT_BASE_IMAGE, show_default=True, help="Serving image.")
@click.option("--registry", help="HOST[/PROJECT...] to push to, e.g. REGION-docker.pkg.dev/P/R.")
@click.option("--image", help="Image name.  [default: MODEL_NAME_serving]")
@click.option("--tag", default="v0.1.0", show_default=True, help="Image tag.")
@click.option(
    "--version",
    type=click.IntRange(min=0),
    help="Version number of a bare SavedModel (default 1); with a base path, package only it.",
)
@click.option("--push", is_flag=True, help="Push the image and print its digest reference.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--manifest",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Kubernetes YAML whose Deployment image is set to the pushed digest (needs --push).",
)
@click.option("--username", help=f"Registry user; password from ${PASSWORD_ENV} or stdin.")
@click.option(
    "--password_stdin", "--password-stdin", is_flag=True, help="Read the password from stdin."
)
@click.option(
    "--follow_symlinks",
    is_flag=True,
    help="Copy what symlinks leading out of the model dir point to (refused otherwise).",
)
def main(
    model_dir: Path,
    model_name: str,
    base_image: str,
    registry: str | None,
    image: str | None,
    tag: str,
    version: int | None,
    push: bool,
    as_json: bool,
    manifest: Path | None,
    username: str | None,
    password_stdin: bool,
    follow_symlinks: bool,
) -> None:
    """Build a TF Serving image holding MODEL_DIR as /models/MODEL_NAME/VERSION, optionally push it.

    Replaces the seed's docker run / cp / commit / kill / rm / tag / push, and the copy of the
    digest into the Kubernetes manifest. Nothing is left behind: the build container is removed
    on success, on error and on Ctrl-C.
    """
    if manifest and not push:
        raise click.UsageError("--manifest needs --push: only a pushed image has a digest")
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupted)
    try:
        with log_on_stderr("image_builder"), _ProgressDisplay() as progress:
            # Everything that can be checked without Docker is checked first.
            check_model_name(model_name)
            check_base_image(base_image)
            target = image_reference(registry, image or f"{model_name.lower()}_serving", tag)
            credentials = _credentials(username, password_stdin, target.repository)
            if manifest:
                _check_manifest(manifest, target)
            model = scan_model(model_dir, version, follow_symlinks=follow_symlinks)

            builder = ImageBuilder(connect(), credentials, progress)
            image_id = builder.build(model, model_name, base_image, target)
            click.echo(f"built {target} ({image_id})", err=True)
            digest = builder.push(target) if push else None
        reference = target.with_digest(digest) if digest else None
        if manifest and reference:
            try:
                set_deployment_image(manifest, reference)
            except (ManifestError, OSError) as exc:
                raise click.ClickException(f"pushed {reference}, but {manifest}: {exc}") from None
            click.echo(f"{manifest}: image set to {reference}", err=True)
    except SidecarError as exc:
        hints = {OutsideLinkError: "; pass --follow_symlinks to copy it"}
        raise click.ClickException(with_hint(exc, hints)) from None
    except KeyboardInterrupt:
        click.echo("interrupted; the build container was removed", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)

    if as_json:
        result = {
            "image": str(target),
            "image_id": image_id,
            "digest": digest,
            "reference": reference,
            "model_name": model_name,
            "versions": [v.number for v in model.versions],
            "manifest": str(manifest) if manifest else None,
        }
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(reference or str(target))
