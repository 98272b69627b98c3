"""A local stand-in for tensorflow_model_server: TF Serving's REST API over a real SavedModel.

Same flags as tensorflow_model_server (so the serving image's command line works unchanged):

    python -m serving.local_server --model_name=ssd --model_base_path=data/ssd --rest_api_port=8501
    curl localhost:8501/v1/models/ssd
    curl -d '{"instances": [[[[0, 0, 0]]]]}' localhost:8501/v1/models/ssd:predict

It loads the highest numeric version under the base path, opens the port only once the model is
loaded (as TF Serving does), serves requests concurrently and stops cleanly on SIGINT/SIGTERM,
finishing the requests in flight. The gRPC API (PredictionService, ModelService) is served on
--port (8500, as tensorflow_model_server; 0 turns it off) over the same loaded model.
The HTTP layer, with its limits (the --rest_api_max_* and *_timeout_s flags, not
tensorflow_model_server's), is serving/http_server.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from serving.errors import ServingError
from serving.http_server import Limits, RestServer
from serving.memory import reuse_freed_memory
from tfserving.conventions import GRPC_PORT

if TYPE_CHECKING:
    from serving.batching import BatchingOptions

log = logging.getLogger("serving.local_server")

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
    add_batching_flags(parser)
    add_limit_flags(parser)
    return parser


def add_batching_flags(parser: argparse.ArgumentParser) -> None:
    """tensorflow_model_server's request batching flags (serving/batching.py)."""
    group = parser.add_argument_group("batching (tensorflow_model_server's flags)")
    group.add_argument(
        "--enable_batching",
        action="store_true",
        help="merge concurrent predict calls of a model version and signature into one call",
    )
    group.add_argument(
        "--batching_parameters_file",
        type=Path,
        help="BatchingParameters in text format (max_batch_size, batch_timeout_micros, ...); "
        "without it, TF Serving's defaults",
    )


def batching_from(args: argparse.Namespace) -> BatchingOptions | None:
    """The batching the flags ask for (None: none); raises ServingError for a bad parameters
    file, or a file without --enable_batching (TF Serving's wording)."""
    from serving.batching import read_batching_parameters  # numpy, protobuf: not for --help

    if not args.enable_batching:
        if args.batching_parameters_file is not None:
            raise ServingError(
                "server_options.batching_parameters_file is set without setting "
                "server_options.enable_batching to true."
            )
        return None
    return read_batching_parameters(args.batching_parameters_file)


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """The HTTP layer's limits (serving/http_server.py). tensorflow_model_server has none of
    these flags: the serving image and the Kubernetes manifest must not pass them."""
    defaults = Limits()
    group = parser.add_argument_group("limits (this stand-in only, not tensorflow_model_server)")
    flags = [
        ("max_body_bytes", int, "a larger request body gets 413, before it is read"),
        ("max_in_flight", int, "requests past their headers at once; more get 503 (retry)"),
        ("max_connections", int, "open connections; more are closed at once"),
        ("backlog", int, "listen backlog: connections waiting to be accepted"),
        ("header_timeout_s", float, "from a request's first byte to its complete headers"),
        ("body_timeout_s", float, "to receive a whole request body (else 408)"),
        ("idle_timeout_s", float, "a keep-alive connection with no request is closed"),
        ("shutdown_deadline_s", float, "on SIGTERM: the longest wait for requests in flight"),
    ]
    for name, kind, meaning in flags:
        group.add_argument(
            f"--rest_api_{name}",
            dest=name,
            type=kind,
            default=getattr(defaults, name),
            help=f"{meaning} (default: %(default)s)",
        )


def limits_from(args: argparse.Namespace) -> Limits:
    return Limits(**{name: getattr(args, name) for name in Limits.__dataclass_fields__})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    reuse_freed_memory()
    try:  # before TensorFlow is imported: a bad file is reported at once
        batching_options = batching_from(args)
    except ServingError as e:
        print(f"local_server: error: {e}", file=sys.stderr)
        return 2
    # Imported here so that --help is instant: TensorFlow takes seconds to import.
    from serving.batching import BatchScheduler
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
    batching = None
    if batching_options is not None:
        log.info("Batching enabled: %s", batching_options)
        batching = BatchScheduler(batching_options)
    api = RestApi(model, executor, timeout_ms=args.rest_api_timeout_in_ms, batching=batching)
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
        server = RestServer((args.rest_api_host, args.rest_api_port), api, limits_from(args))
    except OSError as e:
        if grpc_server is not None:
            grpc_server.stop(grace_s=0)
        print(f"local_server: error: cannot listen on {args.rest_api_port}: {e}", file=sys.stderr)
        return 1

    grpc_stopped: list[threading.Event] = []

    def on_signal(signum: int, _frame) -> None:
        log.info("%s: finishing the requests in flight, then exiting", signal.Signals(signum).name)
        server.stop()  # serve_forever() returns once they are answered, or at the deadline
        if grpc_server is not None:  # GOAWAY now; the calls in flight finish meanwhile
            grpc_stopped.append(grpc_server.stop(args.shutdown_deadline_s))

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
    for stopped in grpc_stopped:
        stopped.wait()  # its calls in flight have ended, or the deadline cancelled them
    if server.unfinished:
        # Model calls past the deadline can't be cancelled: exit without waiting for them.
        log.warning("stopped with %d requests unfinished", server.unfinished)
        logging.shutdown()
        os._exit(0)
    executor.shutdown(wait=True)
    if batching is not None:
        batching.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
