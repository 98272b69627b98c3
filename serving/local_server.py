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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from serving.errors import ServingError
from serving.http_server import Limits, RestServer
from serving.memory import reuse_freed_memory
from tfserving.conventions import GRPC_PORT, SERVE_TAGS
from tfserving.errors import SidecarError

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


class Poller(threading.Thread):
    """Calls `poll` every `interval_s` seconds until stopped: the file system's new versions
    (--file_system_poll_wait_seconds) and the model config file (its own poll wait)."""

    def __init__(self, name: str, poll: Callable[[], None], interval_s: float) -> None:
        super().__init__(name=name, daemon=True)
        self.poll, self.interval_s = poll, interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.poll()
            except Exception as e:  # an unreadable directory, say: the next poll tries again
                log.error("%s: %s: %s", self.name, type(e).__name__, e)


def add_bool_flag(
    parser: argparse._ActionsContainer, flag: str, default: bool, meaning: str
) -> None:
    """A tensorflow::Flag bool: `--flag` alone is true, `--flag=true/false/1/0` sets it. (The
    container is a parser or one of its argument groups.)"""
    parser.add_argument(flag, type=parse_bool, nargs="?", const=True, default=default, help=meaning)


def parse_bool(text: str) -> bool:
    """A tensorflow::Flag bool: --flag, --flag=true/false, --flag=1/0."""
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.local_server",
        description="Serve a SavedModel over TensorFlow Serving's REST API (a local stand-in "
        "for tensorflow_model_server, with the same flags).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model_name",
        default="default",
        help="name in the URLs (/v1/models/NAME); ignored with --model_config_file",
    )
    parser.add_argument(
        "--model_base_path",
        type=Path,
        help="directory of numeric version subdirectories; the highest is served (required "
        "unless --model_config_file is given, ignored if it is)",
    )
    add_model_config_flags(parser)
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
    add_bool_flag(
        parser,
        "--rest_api_enable_cors_support",
        False,
        "send TF Serving's Access-Control-* headers with every REST answer",
    )
    add_runtime_flags(parser)
    add_batching_flags(parser)
    add_limit_flags(parser)
    return parser


def add_model_config_flags(parser: argparse.ArgumentParser) -> None:
    """Several models, version policies and labels, metrics: TF Serving's config files."""
    parser.add_argument(
        "--model_config_file",
        type=Path,
        help="a ModelServerConfig in protobuf text format: the models to serve, their version "
        "policies and labels (then --model_name and --model_base_path are ignored)",
    )
    parser.add_argument(
        "--model_config_file_poll_wait_seconds",
        type=int,
        default=0,
        help="how often to re-read --model_config_file (<= 0: read once, at start-up)",
    )
    add_bool_flag(
        parser,
        "--allow_version_labels_for_unavailable_models",
        False,
        "let a version label name a version that is not loaded (yet)",
    )
    parser.add_argument(
        "--monitoring_config_file",
        type=Path,
        help="a MonitoringConfig in protobuf text format; with prometheus_config { enable: "
        "true }, Prometheus metrics on the REST port (/monitoring/prometheus/metrics)",
    )


def add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    """How models are loaded and run: TensorFlow's threads, MetaGraph tags, warm-up."""
    for name, meaning in [
        ("intra_op", "threads that run one op (0: TensorFlow's choice)"),
        ("inter_op", "ops run at the same time (0: TensorFlow's choice)"),
        ("session", "both of the above at once (0: unset)"),
    ]:
        parser.add_argument(f"--tensorflow_{name}_parallelism", type=int, default=0, help=meaning)
    parser.add_argument(
        "--saved_model_tags",
        default=",".join(SERVE_TAGS),
        help="comma-separated tags of the MetaGraph to load (default: %(default)s)",
    )
    add_bool_flag(
        parser,
        "--enable_model_warmup",
        True,
        "replay assets.extra/tf_serving_warmup_requests before serving a version",
    )
    parser.add_argument(
        "--num_request_iterations_for_warmup",
        type=int,
        default=0,
        help="times each warm-up request is run (<= 0: once)",
    )


def add_batching_flags(parser: argparse.ArgumentParser) -> None:
    """tensorflow_model_server's request batching flags (serving/batching.py)."""
    group = parser.add_argument_group("batching (tensorflow_model_server's flags)")
    add_bool_flag(
        group,
        "--enable_batching",
        False,
        "merge concurrent predict calls of a model version and signature into one call",
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


def check_flags(args: argparse.Namespace) -> None:
    """The combinations tensorflow_model_server refuses (server.cc), in its words."""
    if args.model_base_path is None and args.model_config_file is None:
        raise ServingError(
            "Both server_options.model_base_path and server_options.model_config_file are empty!"
        )
    if (
        min(
            args.tensorflow_intra_op_parallelism,
            args.tensorflow_inter_op_parallelism,
            args.tensorflow_session_parallelism,
        )
        > 0
    ):
        raise ServingError(
            "Either configure server_options.tensorflow_session_parallelism or "
            "(server_options.tensorflow_intra_op_parallelism, "
            "server_options.tensorflow_inter_op_parallelism) separately. You cannot "
            "configure both."
        )


def set_tensorflow_threads(args: argparse.Namespace) -> None:
    """TensorFlow's thread pools, sized before any op runs (they can't change afterwards)."""
    import tensorflow as tf

    session = args.tensorflow_session_parallelism
    intra = args.tensorflow_intra_op_parallelism or session
    inter = args.tensorflow_inter_op_parallelism or session
    if intra > 0:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter > 0:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    if intra > 0 or inter > 0:
        log.info(
            "TensorFlow threads: intra-op %d, inter-op %d (0: TensorFlow's choice)",
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        )


def model_settings(args: argparse.Namespace) -> list:
    """The models to serve: the config file's, or the one of --model_name/--model_base_path."""
    from serving.model_config import ModelSettings, read_model_config

    if args.model_config_file is not None:
        if args.model_base_path is not None:
            log.warning("--model_config_file is set: --model_name and --model_base_path ignored")
        return read_model_config(args.model_config_file)
    log.info(
        "Building single TensorFlow model file config: model_name: %s model_base_path: %s",
        args.model_name,
        args.model_base_path,
    )
    return [ModelSettings(args.model_name, args.model_base_path)]


def model_loader(args: argparse.Namespace, metrics) -> Callable:
    """What loads one version: the SavedModel with --saved_model_tags, counted in the load
    metrics, then warmed up with its recorded requests (--enable_model_warmup)."""
    from serving.model import ServedModel
    from serving.warmup import warm_up

    tags = tuple(tag for tag in args.saved_model_tags.split(",") if tag)
    iterations = max(args.num_request_iterations_for_warmup, 1)

    def load(name: str, version: int, path: Path) -> ServedModel:
        start = time.perf_counter()
        try:
            model = ServedModel.load_version(name, version, path, tags)
        except Exception:
            metrics.record_load(path, False, time.perf_counter() - start)
            raise
        metrics.record_load(path, True, time.perf_counter() - start)
        if args.enable_model_warmup:
            warm_up(model, iterations, metrics)
        return model

    return load


def start_models(args: argparse.Namespace, settings: list, metrics) -> tuple:
    """The model manager with every model loaded, and the pollers that keep it current."""
    from serving.model_manager import ModelManager

    models = ModelManager(
        model_loader(args, metrics),
        allow_labels_for_unavailable=args.allow_version_labels_for_unavailable_models,
    )
    models.configure(settings, startup=True)
    pollers = []
    if args.file_system_poll_wait_seconds > 0:
        pollers.append(Poller("version-poller", models.poll, args.file_system_poll_wait_seconds))
    if args.model_config_file is not None and args.model_config_file_poll_wait_seconds > 0:
        pollers.append(
            Poller(
                "config-poller",
                lambda: reload_model_config(models, args.model_config_file),
                args.model_config_file_poll_wait_seconds,
            )
        )
    return models, pollers


def reload_model_config(models, path: Path) -> None:
    """Server::PollFilesystemAndReloadConfig: a file that can't be taken is logged, and the
    models keep being served as they are."""
    from serving.model_config import read_model_config

    try:
        settings = read_model_config(path)
    except ServingError as e:
        log.error("Failed to read ModelServerConfig file: %s", e)
        return
    try:
        models.configure(settings)
    except ServingError as e:
        log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", e)


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
    from serving.metrics import ServingMetrics
    from serving.model_config import read_prometheus_path
    from serving.rest_api import RestApi

    try:  # every flag and file checked before a model loads
        check_flags(args)
        channel_arguments = parse_channel_arguments(args.grpc_channel_arguments)
        metrics_path = args.monitoring_config_file and read_prometheus_path(
            args.monitoring_config_file
        )
        settings = model_settings(args)
    except ServingError as e:
        print(f"local_server: error: {e}", file=sys.stderr)
        return 2

    set_tensorflow_threads(args)
    metrics = ServingMetrics()
    try:
        models, pollers = start_models(args, settings, metrics)
    except SidecarError as e:  # the config, a base path, a version that fails to load
        print(f"local_server: error: {e}", file=sys.stderr)
        return 1

    executor = ThreadPoolExecutor(args.rest_api_num_threads, thread_name_prefix="model")
    batching = None
    if batching_options is not None:
        log.info("Batching enabled: %s", batching_options)
        batching = BatchScheduler(batching_options)
    api = RestApi(
        models,
        executor,
        timeout_ms=args.rest_api_timeout_in_ms,
        metrics=metrics,
        metrics_path=metrics_path or None,
        batching=batching,
    )
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
        server = RestServer(
            (args.rest_api_host, args.rest_api_port),
            api,
            limits_from(args),
            cors=args.rest_api_enable_cors_support,
        )
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

    for poller in pollers:
        poller.start()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("Exporting HTTP/REST API at:%s:%d ...", args.rest_api_host, server.server_address[1])
    server.serve_forever()
    for poller in pollers:
        poller.stopped.set()
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
