"""A local stand-in for tensorflow_model_server: TF Serving's REST API over a real SavedModel.

Same flags as tensorflow_model_server (so the serving image's command line works unchanged):

    python -m serving.local_server --model_name=ssd --model_base_path=data/ssd --rest_api_port=8501
    curl localhost:8501/v1/models/ssd
    curl -d '{"instances": [[[[0, 0, 0]]]]}' localhost:8501/v1/models/ssd:predict

It loads the highest numeric version under the base path, opens the port only once the model is
loaded (as TF Serving does), serves requests concurrently and stops cleanly on SIGINT/SIGTERM,
finishing the requests in flight. The gRPC API (PredictionService, ModelService) is served on
--port (8500, as tensorflow_model_server; 0 turns it off) over the same loaded model.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from serving.errors import ServingError
from tfserving.conventions import GRPC_PORT

log = logging.getLogger("serving.local_server")

# How long gRPC calls in flight get to finish after SIGTERM (Kubernetes' grace period is 30 s).
STOP_GRACE_S = 25.0
DEFAULT_GRPC_THREADS = 16

EPILOG = """examples:
  python -m serving.local_server --model_name=ssd_mobilenet_v1_coco \\
      --model_base_path=../shared/models/ssd_mobilenet_v1_coco --rest_api_port=8501
  # the tensorflow/serving image's command line also works: gRPC on 8500, REST on 8501
  python -m serving.local_server --port=8500 --rest_api_port=8501 \\
      --model_name=my_model --model_base_path=data/my_model
  # gRPC connections closed after 5 minutes, so that clients spread over new replicas
  python -m serving.local_server --model_name=m --model_base_path=data/m \\
      --grpc_channel_arguments=grpc.max_connection_age_ms=300000
"""


class RestServer(ThreadingHTTPServer):
    """HTTP/1.1 keep-alive server, a thread per connection, that can stop without losing requests.

    Stopping closes idle keep-alive connections at once; connections in the middle of a request
    answer it (with "Connection: close") before their threads are joined.
    """

    daemon_threads = False  # server_close() joins handler threads: in-flight requests finish
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api) -> None:
        self.api = api
        self.stopping = False
        self._lock = threading.Lock()
        self._idle: dict[socket.socket, bool] = {}  # open connections -> waiting for a request?
        super().__init__(address, _Handler)

    def set_idle(self, connection: socket.socket, idle: bool | None) -> bool:
        """Record a connection's state (None: closed); False when the server is stopping."""
        with self._lock:
            if idle is None:
                self._idle.pop(connection, None)
            else:
                self._idle[connection] = idle
            return not self.stopping

    def stop(self) -> None:
        """Stop accepting, then wake idle keep-alive connections so their threads end."""
        self.shutdown()
        with self._lock:
            self.stopping = True
            idle = [conn for conn, is_idle in self._idle.items() if is_idle]
        for conn in idle:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RD)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle's algorithm the body can wait ~40 ms for
    # the client's delayed ACK.
    disable_nagle_algorithm = True
    server: RestServer

    def finish(self) -> None:
        self.server.set_idle(self.connection, None)
        super().finish()

    def handle_one_request(self) -> None:
        if not self.server.set_idle(self.connection, True):
            self.close_connection = True
            return
        super().handle_one_request()

    def parse_request(self) -> bool:
        # A request line has arrived: from here on this connection is busy.
        if not self.server.set_idle(self.connection, False):
            self.close_connection = True
        return super().parse_request()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        start = time.perf_counter()
        try:
            body = self._read_body()
        except ValueError:  # a Content-Length or chunk size that is not a number
            status, payload = 400, b'{"error": "Malformed request: bad body length"}'
            self.close_connection = True  # where the next request starts is unknown
        else:
            status, payload = self.server.api.handle(self.command, self.path, body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if self.server.stopping:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has the headers of the body, not the body
            self.wfile.write(payload)
        log.info(
            "%s %s %d %.1f ms", self.command, self.path, status, (time.perf_counter() - start) * 1e3
        )

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _serve

    def log_request(self, code="-", size="-") -> None:
        pass  # _serve logs one line per request, with its duration

    def log_message(self, template: str, *args) -> None:
        log.warning("%s: %s", self.address_string(), template % args)  # e.g. a garbled request


class VersionWatcher(threading.Thread):
    """Serves a new latest version once it appears under the base path, like TF Serving's file
    system polling: the new version is loaded beside the old, then takes over for new requests
    (requests in flight finish on the old one)."""

    def __init__(self, api, base_path: Path, interval_s: float) -> None:
        super().__init__(name="version-watcher", daemon=True)
        self.api, self.base_path, self.interval_s = api, base_path, interval_s
        self.stopped = threading.Event()
        self._failed_version: int | None = None

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        from serving.model import ServedModel
        from tfserving.conventions import ModelDirError, latest_version

        current = self.api.model
        try:
            version, path = latest_version(self.base_path)
        except ModelDirError:
            return  # the base path is being rewritten: keep serving what is loaded
        if version in (current.version, self._failed_version):
            return
        log.info("Loading servable version {name: %s version: %d}", current.name, version)
        try:
            model = ServedModel.load_version(current.name, version, path)
        except Exception:  # any broken SavedModel: say so once, keep serving the old version
            log.exception(
                "Loading servable version %d failed; still serving version %d",
                version,
                current.version,
            )
            self._failed_version = version
            return
        self.api.model = model
        log.info(
            "Successfully loaded servable version {name: %s version: %d}; unloaded version %d",
            model.name,
            model.version,
            current.version,
        )


def reuse_freed_memory() -> None:
    """Let big request buffers reuse freed memory instead of fresh pages from the kernel.

    A 20 MB pixel body goes through ~100 MB of short-lived buffers. glibc gives each from its own
    mmap and returns it on free, so every request page-faults through all of it again (~50 ms,
    a third of the parse). Raising the mmap and trim thresholds keeps them in the reused heap.
    No-op where malloc isn't glibc's.
    """
    libc_path = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(libc_path), "mallopt", None) if libc_path else None
    if mallopt is not None:
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h> constants
        mallopt(m_mmap_threshold, 1 << 30)
        mallopt(m_trim_threshold, 1 << 30)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.local_server",
        description="Serve a SavedModel over TensorFlow Serving's REST API (a local stand-in "
        "for tensorflow_model_server, with the same flags).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model_name", default="default", help="name in the URLs (/v1/models/NAME)"
    )
    parser.add_argument(
        "--model_base_path",
        required=True,
        type=Path,
        help="directory of numeric version subdirectories; the highest is served",
    )
    parser.add_argument("--rest_api_port", type=int, default=8501, help="HTTP/REST port")
    parser.add_argument(
        "--rest_api_timeout_in_ms",
        type=int,
        default=30000,
        help="deadline of a model call; past it the request gets 504 (<= 0: no deadline)",
    )
    parser.add_argument(
        "--file_system_poll_wait_seconds",
        type=int,
        default=1,
        help="how often to look for a new version under the base path (<= 0: never)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=GRPC_PORT,
        help="gRPC port (0: no gRPC), as tensorflow_model_server",
    )
    parser.add_argument(
        "--grpc_channel_arguments",
        default="",
        help="gRPC server options, KEY=VALUE,... as tensorflow_model_server takes them (e.g. "
        "grpc.max_connection_age_ms=300000 makes clients reconnect, and so spread over replicas)",
    )
    parser.add_argument(
        "--grpc_max_threads",
        type=int,
        default=DEFAULT_GRPC_THREADS,
        help="gRPC calls handled at the same time",
    )
    parser.add_argument(
        "--rest_api_host",
        default="0.0.0.0",
        help="address to listen on (tensorflow_model_server listens on all interfaces)",
    )
    parser.add_argument(
        "--rest_api_num_threads",
        type=int,
        default=max(4, 2 * (os.cpu_count() or 1)),
        help="model calls run at the same time",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    reuse_freed_memory()
    # Imported here so that --help is instant: TensorFlow takes seconds to import.
    from serving.grpc_api import GrpcServer, parse_channel_arguments
    from serving.model import ModelDirError, ServedModel
    from serving.rest_api import RestApi

    try:
        channel_arguments = parse_channel_arguments(args.grpc_channel_arguments)
    except ServingError as e:
        print(f"local_server: error: {e}", file=sys.stderr)
        return 2

    start = time.perf_counter()
    try:
        model = ServedModel.load(args.model_name, args.model_base_path)
    except ModelDirError as e:
        print(f"local_server: error: {e}", file=sys.stderr)
        return 1
    log.info(
        "Successfully loaded servable version {name: %s version: %d} from %s in %.1f s",
        model.name,
        model.version,
        model.path,
        time.perf_counter() - start,
    )

    executor = ThreadPoolExecutor(args.rest_api_num_threads, thread_name_prefix="model")
    api = RestApi(model, executor, timeout_ms=args.rest_api_timeout_in_ms)
    grpc_server = None
    if args.port:
        grpc_server = GrpcServer(
            api,
            args.port,
            args.rest_api_host,
            max_workers=args.grpc_max_threads,
            channel_arguments=channel_arguments,
        )
        try:
            grpc_server.start()
        except ServingError as e:
            print(f"local_server: error: {e}", file=sys.stderr)
            return 1
    try:
        server = RestServer((args.rest_api_host, args.rest_api_port), api)
    except OSError as e:
        if grpc_server is not None:
            grpc_server.stop(grace_s=0)
        print(f"local_server: error: cannot listen on {args.rest_api_port}: {e}", file=sys.stderr)
        return 1

    def on_signal(signum: int, _frame) -> None:
        log.info("%s: finishing the requests in flight, then exiting", signal.Signals(signum).name)
        # shutdown() waits for serve_forever() to return, so it can't run in this (main) thread.
        threading.Thread(target=server.stop, name="stop").start()
        if grpc_server is not None:  # GOAWAY now; the calls in flight finish meanwhile
            threading.Thread(
                target=grpc_server.stop, args=(STOP_GRACE_S,), name="stop-grpc"
            ).start()

    watcher = None
    if args.file_system_poll_wait_seconds > 0:
        watcher = VersionWatcher(api, args.model_base_path, args.file_system_poll_wait_seconds)
        watcher.start()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("Exporting HTTP/REST API at:%s:%d ...", args.rest_api_host, server.server_address[1])
    server.serve_forever()
    if watcher is not None:
        watcher.stopped.set()
    server.server_close()  # joins the connection threads
    if grpc_server is not None:
        grpc_server.stop(STOP_GRACE_S)  # returns once its calls in flight have ended
    executor.shutdown(wait=True)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
