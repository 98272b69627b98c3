"""Model preparation from a URL, a tarball and a directory, with tarballs built from the shared
model, a real HTTP server on loopback for the download, and the result served for real."""

from __future__ import annotations

import functools
import io
import subprocess
import sys
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from model_tools.prepare_model import main
from sidecar_testing.data import PIXEL_MODEL, ROOT
from sidecar_testing.servers import HOST, LocalServer

SHARED_VERSION = PIXEL_MODEL / "1"


def zoo_tarball(path: Path) -> Path:
    """A tarball laid out like a TF model zoo release: MODEL/saved_model/ among other files."""
    with tarfile.open(path, "w:gz") as archive:
        archive.add(SHARED_VERSION, arcname="ssd_2018_06_29/saved_model")
        for name in ("frozen_inference_graph.pb", "pipeline.config"):
            info = tarfile.TarInfo(f"ssd_2018_06_29/{name}")
            info.size = 4
            archive.addfile(info, io.BytesIO(b"junk"))
    return path


def same_files(left: Path, right: Path) -> bool:
    def listing(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    return listing(left) == listing(right)


@pytest.fixture
def file_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www (stands in for the model zoo)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(www))
    server = ThreadingHTTPServer((HOST, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://{HOST}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_is_downloaded_unpacked_and_laid_out_then_served(tmp_path, file_server, capsys):
    www, url = file_server
    zoo_tarball(www / "ssd_2018_06_29.tar.gz")
    data = tmp_path / "data"

    assert (
        main([f"{url}/ssd_2018_06_29.tar.gz", "--model_name", "ssd", "--data_dir", str(data)]) == 0
    )

    assert same_files(data / "ssd" / "1", SHARED_VERSION)
    assert (
        "serve it with: python -m serving.local_server --model_name=ssd" in capsys.readouterr().out
    )
    assert sorted(p.name for p in data.iterdir()) == ["ssd"]  # no download or staging left over
    with LocalServer(data / "ssd", model_name="ssd") as server:
        status = requests.get(server.model_url).json()
        assert status["model_version_status"][0]["state"] == "AVAILABLE"


def test_a_missing_url_is_a_clear_error(tmp_path, file_server, capsys):
    _, url = file_server
    assert main([f"{url}/nope.tar.gz", "--model_name", "m", "--data_dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "could not download" in error
    assert "404" in error


def test_local_tarball_then_next_version(tmp_path):
    tarball = zoo_tarball(tmp_path / "model.tar.gz")
    data = tmp_path / "data"
    assert main([str(tarball), "--model_name", "ssd", "--data_dir", str(data)]) == 0
    assert main([str(tarball), "--model_name", "ssd", "--data_dir", str(data)]) == 0
    assert (
        main([str(tarball), "--model_name", "ssd", "--data_dir", str(data), "--version", "7"]) == 0
    )
    assert sorted(p.name for p in (data / "ssd").iterdir()) == ["1", "2", "7"]
    assert same_files(data / "ssd" / "7", SHARED_VERSION)


def test_directory_source_and_existing_version_refused(tmp_path, capsys):
    data = tmp_path / "data"
    assert main([str(SHARED_VERSION), "--model_name", "m", "--data_dir", str(data)]) == 0
    assert (
        main([str(SHARED_VERSION), "--model_name", "m", "--data_dir", str(data), "--version", "1"])
        == 1
    )
    assert "version 1 already exists" in capsys.readouterr().err


def test_source_without_saved_model_says_what_it_found(tmp_path, capsys):
    source = tmp_path / "export"
    (source / "checkpoint").mkdir(parents=True)
    (source / "frozen_inference_graph.pb").write_bytes(b"junk")
    data = tmp_path / "data"
    assert main([str(source), "--model_name", "m", "--data_dir", str(data)]) == 1
    error = capsys.readouterr().err
    assert "no saved_model.pb in" in error
    assert "frozen_inference_graph.pb" in error
    assert not (data / "m").exists() or not any((data / "m").iterdir())


def test_several_saved_models_are_ambiguous(tmp_path, capsys):
    source = tmp_path / "two"
    for name in ("a", "b"):
        (source / name).mkdir(parents=True)
        (source / name / "saved_model.pb").write_bytes(b"")
    assert main([str(source), "--model_name", "m", "--data_dir", str(tmp_path / "data")]) == 1
    assert "several SavedModels" in capsys.readouterr().err


def test_tarball_escaping_its_directory_is_refused(tmp_path, capsys):
    tarball = tmp_path / "evil.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"evil"))
    data = tmp_path / "data"
    assert main([str(tarball), "--model_name", "m", "--data_dir", str(data)]) == 1
    assert "unsafe member" in capsys.readouterr().err
    assert not list(tmp_path.rglob("escaped.txt"))


def test_runs_as_a_module_without_tensorflow(tmp_path):
    """`python -m serving.prepare_model` works, and never imports TensorFlow (client machines)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.prepare_model",
            str(SHARED_VERSION),
            "--model_name=m",
            f"--data_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "1" / "saved_model.pb").is_file()
    no_tf = "import sys, serving.prepare_model; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", no_tf], cwd=ROOT, timeout=60).returncode == 0
