"""Lay a SavedModel out as a TF Serving model base path: data/NAME/VERSION/saved_model.pb.

The seed tutorial's steps 3 and 4 (download a model zoo tarball, unpack it, copy its saved_model/
into a numbered version directory) as one command:

    ZOO=http://download.tensorflow.org/models/object_detection
    python -m serving.prepare_model $ZOO/faster_rcnn_resnet101_coco_2018_01_28.tar.gz \\
        --model_name faster_rcnn_resnet
    python -m serving.prepare_model ~/Downloads/my_model.tar.gz --model_name my_model --version 3
    python -m serving.prepare_model exported/saved_model --model_name my_model

SOURCE is a URL, a local tarball or a directory; the SavedModel is the one directory in it that
holds a saved_model.pb. The new version appears all at once (copied beside, then renamed), so a
server polling the base path never loads a half-copied model. No TensorFlow needed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import requests

from model_tools.errors import ModelToolError
from tfserving.conventions import SAVED_MODEL_FILES, numeric_versions, staged_directory

DOWNLOAD_CHUNK = 1 << 20
# Called with (bytes so far, total bytes or None) as a download goes.
Progress = Callable[[int, int | None], None]


class PrepareError(ModelToolError):
    """Why the source can't be laid out, in words a user can act on."""


def download(url: str, destination: Path, progress: Progress | None = None) -> Path:
    """Stream `url` to `destination`, reporting to `progress` (tarballs are hundreds of MB)."""
    try:
        with requests.get(url, stream=True, timeout=(10, 60)) as response:
            response.raise_for_status()
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            with destination.open("wb") as out:
                for chunk in response.iter_content(DOWNLOAD_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
    except requests.RequestException as e:
        raise PrepareError(f"could not download {url}: {e}") from None
    return destination


def extract(tarball: Path, destination: Path) -> Path:
    """Unpack a tarball safely: tarfile's "data" filter refuses paths outside `destination`,
    absolute paths, links pointing out and device files."""
    try:
        with tarfile.open(tarball) as archive:
            archive.extractall(destination, filter="data")
    except tarfile.FilterError as e:
        raise PrepareError(f"refusing to unpack {tarball}: unsafe member ({e})") from None
    except (tarfile.TarError, OSError) as e:
        raise PrepareError(f"could not unpack {tarball}: {e}") from None
    return destination


def find_saved_model(root: Path) -> Path:
    """The one directory under `root` (itself included) that holds a saved_model.pb(txt)."""
    found = sorted({path.parent for name in SAVED_MODEL_FILES for path in root.rglob(name)})
    if len(found) == 1:
        return found[0]
    if not found:
        listing = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        shown = ", ".join(listing[:20]) + (
            f", ... ({len(listing)} entries)" if len(listing) > 20 else ""
        )
        raise PrepareError(
            f"no saved_model.pb in {root} (nor .pbtxt): found {shown or 'nothing'}. "
            "Export the model as a SavedModel first (a model zoo tarball has one in saved_model/)."
        )
    names = ", ".join(str(p.relative_to(root)) for p in found)
    raise PrepareError(f"several SavedModels in {root}: {names}; pass the one to serve")


def lay_out(saved_model: Path, base_path: Path, version: int | None) -> Path:
    """Copy `saved_model` to base_path/VERSION (default: one past the highest) atomically."""
    base_path.mkdir(parents=True, exist_ok=True)
    existing = numeric_versions(base_path)
    if version is None:
        version = max(existing, default=0) + 1
    if version in existing:
        raise PrepareError(
            f"version {version} already exists at {existing[version]}; "
            "pick another version or remove it"
        )
    target = base_path / str(version)
    with staged_directory(target) as staging:
        shutil.copytree(saved_model, staging)
    return target


def prepare_model(
    source: str,
    model_name: str,
    data_dir: Path = Path("data"),
    version: int | None = None,
    progress: Progress | None = None,
) -> Path:
    """Make data_dir/model_name/VERSION from a URL, tarball or directory; return that path.
    A download reports to `progress`."""
    base_path = data_dir / model_name
    data_dir.mkdir(parents=True, exist_ok=True)
    # Downloads and unpacking happen beside the result (same disk; data/ is gitignored).
    with tempfile.TemporaryDirectory(prefix=".prepare-", dir=data_dir) as work:
        work_dir = Path(work)
        if urlparse(source).scheme in ("http", "https"):
            name = Path(urlparse(source).path).name or "model.tar.gz"
            tarball = download(source, work_dir / name, progress)
            root = extract(tarball, work_dir / "unpacked")
        elif os.path.isdir(source):
            root = Path(source)
        elif os.path.isfile(source):
            root = extract(Path(source), work_dir / "unpacked")
        else:
            raise PrepareError(f"{source} is not a URL, a file or a directory")
        return lay_out(find_saved_model(root), base_path, version)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.prepare_model",
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n" + __doc__.split("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="URL of a tarball, a local tarball, or a directory")
    parser.add_argument("--model_name", required=True, help="the model's name in TF Serving URLs")
    parser.add_argument(
        "--version", type=int, default=None, help="version number (default: one past the highest)"
    )
    parser.add_argument(
        "--data_dir", type=Path, default=Path("data"), help="where model base paths live"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.version is not None and args.version < 1:
        print("prepare_model: error: --version must be a positive integer", file=sys.stderr)
        return 2
    from tqdm import tqdm

    with tqdm(unit="B", unit_scale=True, desc="download", disable=None) as bar:

        def show(done: int, total: int | None) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            target = prepare_model(args.source, args.model_name, args.data_dir, args.version, show)
        except PrepareError as e:
            print(f"prepare_model: error: {e}", file=sys.stderr)
            return 1
    print(f"SavedModel laid out at {target}")
    print(
        "serve it with: python -m serving.local_server "
        f"--model_name={args.model_name} --model_base_path={target.parent} --rest_api_port=8501"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
