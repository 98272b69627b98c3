"""The project is a package: `pip wheel .` builds it, `pip install .` gives the client without
TensorFlow, `pip install .[server]` adds the local server, and the declared dependencies are the
requirements files the Makefile installs.

The install tests make a fresh venv in a temporary folder (pip's cache makes the downloads
quick after the first run) from a copy of the checkout, so the build's files stay out of it.
"""

import shutil
import subprocess
import sys
import time
import zipfile

import pytest
import requests
import tomllib

from sidecar_testing.data import PIXEL_MODEL, ROOT
from sidecar_testing.servers import HOST, free_port, port_accepts

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements(name):
    """The requirement lines of a requirements file, without comments and `-r` includes."""
    lines = (line.partition("#")[0].strip() for line in (ROOT / name).read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-r")]


def test_dependencies_are_the_requirements_files():
    project = PYPROJECT["project"]
    assert project["dependencies"] == requirements("requirements.txt")
    assert project["optional-dependencies"]["server"] == requirements("requirements-server.txt")
    assert set(project["optional-dependencies"]["deploy"]) <= set(
        requirements("requirements-dev.txt")
    )


def run(*command, cwd=None, timeout=900):
    process = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert process.returncode == 0, f"{command}: {process.stdout}\n{process.stderr}"
    return process.stdout


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The checkout without .git and the venv: what `pip wheel .` sees."""
    target = tmp_path_factory.mktemp("source") / "project"
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "out")
    shutil.copytree(ROOT, target, symlinks=True, ignore=ignore)
    return target


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("wheels")
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--quiet",
        "--wheel-dir",
        out,
        ".",
        cwd=source,
    )
    [built] = out.glob("*.whl")
    return built


def test_the_wheel_holds_the_packages_and_their_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    packages = {
        name.rpartition("/")[0].replace("/", ".") for name in names if name.endswith("/__init__.py")
    }
    assert packages == set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert "tfserving/protos/predict_pb2.py" in names
    with zipfile.ZipFile(wheel) as archive:
        labels = archive.read("object_detection/data/labels.pbtxt")
        manifest = archive.read("deploy/faster_rcnn_resnet_k8s.yaml")
        entrypoint = archive.read("serving/tf_serving_entrypoint.sh")
    # The files themselves, not the links that stand for them in the checkout.
    assert labels == (ROOT / "data" / "labels.pbtxt").read_bytes()
    assert manifest == (ROOT / "faster_rcnn_resnet_k8s.yaml").read_bytes()
    assert entrypoint.startswith(b"#!")


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("venv") / "fresh"
    run(sys.executable, "-m", "venv", folder)
    return folder / "bin"


def test_install_gives_the_client_without_tensorflow_then_the_server(
    venv, wheel, tmp_path, pixel_server
):
    pip = [venv / "python", "-m", "pip", "--disable-pip-version-check", "--quiet"]
    run(*pip, "install", wheel)
    usage = run(venv / "tfs-client", "--help", cwd=tmp_path)
    assert "Usage: tfs-client" in usage and "predict" in usage
    assert "Usage: tfs-build-image" in run(venv / "tfs-build-image", "--help", cwd=tmp_path)
    installed = run(*pip, "list", "--format=freeze").lower()
    assert "tensorflow" not in installed
    # The built-in label map is found from the installed package, not from a checkout.
    label = (
        "from object_detection.label_map import coco_label_map; print(coco_label_map().label(18))"
    )
    assert run(venv / "python", "-c", label, cwd=tmp_path).strip() == "dog"
    # gRPC from the client-only install: grpcio and the project's own protos, no TensorFlow.
    target = ["--server_url", pixel_server.grpc_url, "--model_name", pixel_server.model_name]
    status = run(venv / "tfs-client", "status", *target, cwd=tmp_path)
    assert status == f"{pixel_server.model_name} version 1: AVAILABLE\n"

    run(*pip, "install", f"{wheel}[server]", timeout=1800)
    port = free_port()
    server = subprocess.Popen(
        [
            venv / "tfs-local-server",
            f"--rest_api_port={port}",
            f"--port={free_port()}",
            "--model_name=ssd",
            f"--model_base_path={PIXEL_MODEL}",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        status = None
        for _ in range(240):
            if server.poll() is not None:
                break
            if port_accepts(port):
                status = requests.get(f"http://{HOST}:{port}/v1/models/ssd", timeout=10).json()
                break
            time.sleep(0.5)
        assert status is not None, server.stderr.read().decode() if server.poll() else "no port"
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        server.terminate()
        server.wait(30)
