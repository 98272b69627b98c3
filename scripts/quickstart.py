"""The README's first command (`make demo`): serve a detector locally and call it with client.py.

It runs, and prints, the same commands a user types by hand in the seed's flow:

1. `python -m serving.local_server ...` (the embedded stand-in for the tensorflow/serving image),
2. `python client.py status --wait ...` until the model is AVAILABLE,
3. the seed's exact `python client.py --server_url ... --save_output_image True ...` command,
4. `python client.py status --server_url grpc://localhost:8500 ...`: the same server over gRPC,

then stops the server and says where the JSON and the annotated picture are.

The model is the shared SSD detector when ../shared is beside the project; otherwise the seed's
faster_rcnn_resnet101 is downloaded from the TF model zoo and laid out under data/ first.
The photo is ../shared/images/image1.jpg, else matplotlib's grace_hopper.jpg sample.
"""

from __future__ import annotations

import argparse
import shlex
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SEED_MODEL_URL = (
    "http://download.tensorflow.org/models/object_detection/"
    "faster_rcnn_resnet101_coco_2018_01_28.tar.gz"
)
SEED_MODEL_NAME = "faster_rcnn_resnet"


def default_model() -> tuple[Path, str]:
    """The shared SSD model when present (fast, offline), else the seed's model under data/."""
    shared = SHARED / "models" / "ssd_mobilenet_v1_coco"
    if shared.is_dir():
        return shared, shared.name
    return ROOT / "data" / SEED_MODEL_NAME, SEED_MODEL_NAME


def default_image() -> Path:
    """A photo with dogs from ../shared, else the portrait that ships with matplotlib."""
    shared = SHARED / "images" / "image1.jpg"
    if shared.is_file():
        return shared
    from matplotlib import cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pick_port(wanted: int) -> int:
    """TF Serving's port when free; otherwise any free port (said aloud), so the demo still runs."""
    if port_is_free(wanted):
        return wanted
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    print(f"port {wanted} is in use; serving on {port} instead")
    return port


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a step as a user would, showing its command line first."""
    print(f"\n$ {shlex.join(command)}", flush=True)
    return subprocess.run(command, cwd=ROOT, check=False, **kwargs)


def ensure_model(base_path: Path, name: str) -> None:
    """Download and lay out the seed's model under data/ when it is not there yet."""
    if base_path.is_dir():
        return
    print(f"{base_path} not found: downloading the seed's model (about 190 MB) once")
    prepare = [sys.executable, "-m", "serving.prepare_model", SEED_MODEL_URL]
    if run([*prepare, "--model_name", name, "--version", "1"]).returncode != 0:
        raise SystemExit("model preparation failed; see the message above")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/quickstart.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model_base_path", type=Path, help="a TF Serving model base path")
    parser.add_argument("--model_name", help="the model's name in URLs (default: dir name)")
    parser.add_argument("--image_path", type=Path, default=None, help="the photo to detect on")
    parser.add_argument("--output_dir", type=Path, default=ROOT / "out")
    parser.add_argument("--rest_api_port", type=int, default=8501)
    args = parser.parse_args(argv)

    base_path, name = default_model()
    base_path = args.model_base_path or base_path
    name = args.model_name or (base_path.name if args.model_base_path else name)
    image = args.image_path or default_image()
    ensure_model(base_path, name)
    port = pick_port(args.rest_api_port)
    grpc_port = pick_port(8500)  # TF Serving's gRPC port
    args.output_dir.mkdir(parents=True, exist_ok=True)
    output_json = args.output_dir / f"{image.stem}.json"
    server_log = args.output_dir / "local_server.log"

    server_cmd = [
        sys.executable,
        "-m",
        "serving.local_server",
        f"--model_name={name}",
        f"--model_base_path={base_path}",
        f"--rest_api_port={port}",
        f"--port={grpc_port}",
    ]
    print(f"\n$ {shlex.join(server_cmd)} 2>{server_log} &", flush=True)
    with server_log.open("wb") as log:
        server = subprocess.Popen(server_cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = [sys.executable, "client.py"]
        status = [*client, "status", "--port", str(port), "--model_name", name, "--wait", "180"]
        if run(status).returncode != 0:
            print(f"the server did not become ready; its log is {server_log}")
            return 1
        predict = run(
            [
                *client,
                "--server_url",
                f"http://localhost:{port}/v1/models/{name}:predict",
                "--image_path",
                str(image),
                "--output_json",
                str(output_json),
                "--save_output_image",
                "True",
                "--label_map",
                "data/labels.pbtxt",
            ]
        )
        if predict.returncode != 0:
            return predict.returncode
        # The same server over TF Serving's gRPC API (every client.py command takes a grpc:// URL).
        over_grpc = [*client, "status", "--server_url", f"grpc://localhost:{grpc_port}"]
        over_grpc = run([*over_grpc, "--model_name", name])
        if over_grpc.returncode != 0:
            return over_grpc.returncode
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"\ndone: detections in {output_json}, the server's log in {server_log}")

    return 0


if __name__ == "__main__":
    sys.exit(main())
