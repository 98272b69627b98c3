"""tensorflow_model_server's config files: --model_config_file and --monitoring_config_file.

Both are protobuf text format, read with the project's own messages (tfserving/protos, TF
Serving's field numbers), and checked as TF Serving's ServerCore checks a ModelServerConfig
(server_core.cc: ValidateModelConfigList, GetPlatform) with its wording, so a file that TF
Serving refuses is refused here with the same message, and one it takes is taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from serving.errors import ServingError, invalid_argument
from tfserving.protos import model_server_config_pb2, monitoring_config_pb2

TENSORFLOW_PLATFORM = "tensorflow"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath


@dataclass(frozen=True)
class VersionPolicy:
    """ServableVersionPolicy: which versions present under a base path are to be served."""

    kind: str = "latest"  # "latest", "all" or "specific"
    num_versions: int = 1  # latest
    versions: frozenset[int] = frozenset()  # specific

    def choose(self, present: set[int]) -> set[int]:
        """The aspired versions among those present (file_system_storage_path_source.cc)."""
        if self.kind == "all":
            return set(present)
        if self.kind == "specific":
            return present & self.versions
        return set(sorted(present, reverse=True)[: self.num_versions])


@dataclass(frozen=True)
class ModelSettings:
    """One model of the config: what to serve under which name, and its version labels."""

    name: str
    base_path: Path
    policy: VersionPolicy = VersionPolicy()
    labels: dict[str, int] = field(default_factory=dict, hash=False)


def read_text_proto(path: Path, message):
    """ParseProtoTextFile: the file's message, or TF Serving's one-line refusal (with
    protobuf's reason, which TF Serving only logs)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ServingError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise invalid_argument(f"Invalid protobuf file: '{path}': {e}") from None


def read_model_config(path: Path) -> list[ModelSettings]:
    """The models of a --model_config_file, validated as ServerCore::ReloadConfig does."""
    config = read_text_proto(path, model_server_config_pb2.ModelServerConfig())
    if config.WhichOneof("config") == "custom_model_config":
        raise ServingError("ModelServer does not yet support custom model config.")
    return model_list(config.model_config_list)


def model_list(config_list: model_server_config_pb2.ModelConfigList) -> list[ModelSettings]:
    """A ModelConfigList's models (ValidateModelConfigList: each name once, absolute base
    paths, the TensorFlow platform)."""
    names: set[str] = set()
    models = []
    for model in config_list.config:
        if model.name in names:
            raise invalid_argument(
                f"Illegal to list model {model.name} multiple times in config list"
            )
        names.add(model.name)
        models.append(_settings(model))
    return models


def _settings(model: model_server_config_pb2.ModelConfig) -> ModelSettings:
    if not model.model_platform:
        raise invalid_argument(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            f"ModelServerConfig::model_platform, model name is {model.name}"
        )
    if model.model_platform != TENSORFLOW_PLATFORM:
        raise invalid_argument(
            f"Model {model.name} requests unsupported platform {model.model_platform}"
        )
    if not model.base_path.startswith("/"):
        raise invalid_argument(
            f"Expected model {model.name} to have an absolute path or URI; got "
            f"base_path()={model.base_path}"
        )
    return ModelSettings(
        model.name,
        Path(model.base_path),
        _policy(model.model_version_policy),
        dict(model.version_labels),
    )


def _policy(policy) -> VersionPolicy:
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        return VersionPolicy("specific", versions=frozenset(policy.specific.versions))
    if choice == "latest" and policy.latest.num_versions > 0:
        return VersionPolicy("latest", num_versions=policy.latest.num_versions)
    return VersionPolicy()  # unset, or latest {} (num_versions 0): TF Serving serves 1


def read_prometheus_path(path: Path) -> str | None:
    """The metrics path of a --monitoring_config_file, or None when Prometheus is not enabled."""
    config = read_text_proto(path, monitoring_config_pb2.MonitoringConfig())
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    return prometheus.path or PROMETHEUS_PATH
