"""Start the local TF Serving stand-in as a real process for tests and benchmarks.

    with LocalServer(PIXEL_MODEL, model_name="ssd") as server:
        requests.post(server.predict_url, json={"instances": [...]})

The server gets a free loopback port, is waited for until its port accepts connections (it opens
the port only once the model is loaded), and is always terminated on exit.

Requests are counted at the server: the local server logs one line per request to stderr
(`POST /v1/models/NAME:predict 200 ... ms`), which `LocalServer.stderr()` reads. That is the
server's own account of what arrived, so no proxy is needed between client and server.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from object_detection.images import LoadedImage
from object_detection.pipeline import request_body
from object_detection.plan import plan_for
from sidecar_testing.data import ROOT
from tfserving.client import TFServingClient
from tfserving.conventions import DEFAULT_SIGNATURE
from tfserving.metadata import Signature, TensorSpec
from tfserving.spec import ServerSpec

HOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick for an ephemeral bind)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_accepts(port: int, host: str = HOST) -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class LocalServer:
    """`python -m serving.local_server` on 127.0.0.1:port, as a context manager."""

    def __init__(
        self,
        model_base_path: str | os.PathLike | None,
        model_name: str = "model",
        port: int | None = None,
        extra_args: Sequence[str] = (),
        grpc_port: int | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        # None: the models come from --model_config_file in extra_args.
        self.model_base_path = None if model_base_path is None else Path(model_base_path)
        self.model_name = model_name
        self.port = port or free_port()
        self.grpc_port = grpc_port or free_port()  # served too, on a port of its own
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        # A file, not a pipe: nobody reads the log while the server runs, and a full pipe blocks.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__)

    @property
    def spec(self) -> ServerSpec:
        """The served model as the client library names it (and builds its URLs)."""
        return ServerSpec.from_parts(HOST, self.port, self.model_name)

    @property
    def grpc_target(self) -> str:
        """host:port of the gRPC API."""
        return f"{HOST}:{self.grpc_port}"

    @property
    def grpc_url(self) -> str:
        """The gRPC API as client.py's --server_url names it."""
        return f"grpc://{self.grpc_target}"

    @property
    def base_url(self) -> str:
        return self.spec.base_url

    @property
    def model_url(self) -> str:
        return self.spec.model_url

    @property
    def predict_url(self) -> str:
        return self.spec.predict_url

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "serving.local_server",
            *self._model_flags(),
            f"--rest_api_port={self.port}",
            f"--rest_api_host={HOST}",
            f"--port={self.grpc_port}",
            *self.extra_args,
        ]

    def serving(self, model_name: str) -> LocalServer:
        """This same server process named by another model it serves (--model_config_file):
        its URLs and request counts are that model's. The original keeps the process's life."""
        view = copy.copy(self)
        view.model_name = model_name
        return view

    def _model_flags(self) -> list[str]:
        if self.model_base_path is None:
            return []
        return [f"--model_name={self.model_name}", f"--model_base_path={self.model_base_path}"]

    def start(self) -> LocalServer:
        """Start the process; return once its port accepts connections."""
        self.launch()
        return self.wait_until_listening()

    def launch(self) -> subprocess.Popen:
        """Start the process without waiting for it (to watch it load)."""
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self._stderr
        )
        return self.process

    def wait_until_listening(self) -> LocalServer:
        """Wait until the port accepts connections; fail with the server's log if it dies."""
        deadline = time.monotonic() + self.start_timeout
        while not port_accepts(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"local server exited with {self.process.returncode} before listening:\n"
                    f"{self.stderr()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"local server not listening on {self.port} after {self.start_timeout} s:\n"
                    f"{self.stderr()}"
                )
            time.sleep(0.1)
        return self

    def stderr(self) -> str:
        """Everything the server wrote to stderr so far (its log: one line per request)."""
        # pread: the server shares this file's offset, so reading must not move it.
        fd = self._stderr.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def _status_mb(self, field: str) -> float:
        """A memory figure of the server process from /proc (Linux), in MB."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} in /proc/{self.process.pid}/status")

    def rss_mb(self) -> float:
        """The server's resident memory now."""
        return self._status_mb("VmRSS")

    def peak_rss_mb(self) -> float:
        """The server's highest resident memory since it started or `reset_peak_rss()`."""
        return self._status_mb("VmHWM")

    def reset_peak_rss(self) -> None:
        """Start peak_rss_mb() afresh from the current RSS (Linux's clear_refs)."""
        with open(f"/proc/{self.process.pid}/clear_refs", "w") as clear_refs:
            clear_refs.write("5")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal the process and wait for it; kill it if it doesn't exit. Returns its exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        try:
            self.stop()
        finally:
            self._stderr.close()


def run_local_server(*args: str) -> subprocess.CompletedProcess:
    """`python -m serving.local_server ARGS` run to its end, for what ends it (--help, start-up
    errors): its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "serving.local_server", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_without_ports(*args: str) -> subprocess.CompletedProcess:
    """run_local_server with both ports 0: a start-up error must come before any port opens."""
    return run_local_server("--rest_api_port=0", "--port=0", *args)


def predict_requests(server: LocalServer) -> int:
    """How many predict requests the server has answered so far (its log: one line per request).

    A request whose client went away before the answer (a killed client's last ones) is logged
    too, with that said: it isn't counted, since nobody received its answer.
    """
    request = f"POST /v1/models/{server.model_name}:predict "
    return sum(
        request in line and "the client went away" not in line
        for line in server.stderr().splitlines()
    )


def wait_for_requests(server: LocalServer, expected: int, timeout: float = 10.0) -> int:
    """The server logs a request just after answering it: give the last lines a moment."""
    deadline = time.monotonic() + timeout
    while predict_requests(server) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return predict_requests(server)


def rest_request_body(
    image: LoadedImage, encoding: str, max_side: int | None = None
) -> tuple[bytes, tuple[int, int]]:
    """What client.py sends over REST for `image` to a one-input serving_default signature (the
    body is built without a server: no request goes out)."""
    signature = Signature(
        DEFAULT_SIGNATURE,
        "tensorflow/serving/predict",
        (TensorSpec("inputs", "DT_STRING" if encoding == "b64" else "DT_UINT8", (-1,)),),
        (),
    )
    with TFServingClient(ServerSpec.from_parts(HOST, 1, "model")) as client:
        return request_body(client, image, plan_for(signature), max_side)
