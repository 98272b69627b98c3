"""The models a local server serves, by name, version and label: TF Serving's ServerCore.

`ModelManager` holds, per model name, its settings (base path, version policy, labels), the
versions loaded and available, and the state of every version it has seen (what GetModelStatus
reports: LOADING, AVAILABLE, END, with a load error if any; kept after a version or a whole model
is unloaded, as TF Serving's ServableStateMonitor keeps them). It follows TF Serving's
server_core.cc and the file system source:

- `configure(models)` takes a model config (the single --model_name/--model_base_path model, or
  a --model_config_file's list): version labels are checked first against the versions
  available now (UpdateModelVersionLabelMap), then new models are loaded, removed models
  unloaded, changed settings applied;
- `poll()` looks at every base path: the versions the policy aspires to are loaded beside those
  served, then the versions no longer aspired to are unloaded (availability preserving: not
  while no aspired version is available, so a broken new version leaves the old one serving);
- `find(name, version, label)` is GetServableHandle: the version asked for, the latest, or the
  one a label names, else NOT_FOUND / INVALID_ARGUMENT in TF Serving's words.

Lookups read immutable snapshots and take no lock; updates (polls, config reloads) run one at a
time, each version loaded once (a version that failed is not tried again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from serving.errors import ServingError, StatusError, invalid_argument, not_found
from serving.model import ServedModel, error_code_of, first_line
from serving.model_config import ModelSettings
from tfserving.conventions import ModelDirError, servable_versions

log = logging.getLogger(__name__)

Loader = Callable[[str, int, Path], ServedModel]


@dataclass(frozen=True)
class VersionState:
    """A ModelVersionStatus: the manager state and the status of its last transition."""

    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: str = "OK"
    error_message: str = ""

    @property
    def failed(self) -> bool:
        return self.error_code != "OK"

    def to_json(self, version: int) -> dict:
        return {
            "version": str(version),
            "state": self.state,
            "status": {"error_code": self.error_code, "error_message": self.error_message},
        }


LOADING, AVAILABLE, END = VersionState("LOADING"), VersionState("AVAILABLE"), VersionState("END")


class ModelManager:
    """Several models, each with versions loaded by `load` (see the module's doc)."""

    def __init__(self, load: Loader, allow_labels_for_unavailable: bool = False) -> None:
        self._load = load
        self._allow_unavailable_labels = allow_labels_for_unavailable
        self._settings: dict[str, ModelSettings] = {}
        self._served: dict[str, dict[int, ServedModel]] = {}  # each dict replaced, not changed
        self._states: dict[str, dict[int, VersionState]] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._update = threading.Lock()

    @classmethod
    def serving(cls, model: ServedModel) -> ModelManager:
        """A manager of one already loaded model version (in-process servers in tests)."""
        manager = cls(load=lambda *_: model)
        manager._settings[model.name] = ModelSettings(model.name, model.path.parent)
        manager._served[model.name] = {model.version: model}
        manager._states[model.name] = {model.version: AVAILABLE}
        return manager

    # ---- lookups (any thread) -----------------------------------------------------------------

    def find(self, name: str, version: int | None = None, label: str | None = None) -> ServedModel:
        """ServerCore::GetServableHandle for a ModelSpec's (name, version or label)."""
        if label is not None:
            version = self._labels.get(name, {}).get(label)
            if version is None:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
        served = self._served.get(name, {})
        if version is None:
            if served:
                return served[max(served)]
            raise not_found(f"Servable not found for request: Latest({name})")
        model = served.get(version)
        if model is None:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return model

    def status(self, name: str, version: int | None = None) -> dict:
        """GetModelStatusResponse: one version's state, or every version's, highest first."""
        states = self._states.get(name, {})
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            states = {version: states[version]}
        if not states:
            raise not_found(f"Could not find any versions of model {name}")
        return {
            "model_version_status": [states[v].to_json(v) for v in sorted(states, reverse=True)]
        }

    # ---- updates (one at a time) --------------------------------------------------------------

    def configure(self, models: Iterable[ModelSettings], startup: bool = False) -> None:
        """Serve exactly `models` (ServerCore::ReloadConfig). A config that can't be taken
        raises and changes nothing; at start-up any model that can't be served raises too."""
        models = {settings.name: settings for settings in models}
        with self._update:
            if models == self._settings:
                return
            labels = self._checked_labels(models.values())
            for name in sorted(self._settings.keys() - models.keys()):
                self._unload_model(name)
            self._settings = models
            self._labels = labels
            for settings in models.values():
                self._sync(settings, startup)

    def poll(self) -> None:
        """Load the versions that appeared, unload those no longer aspired to."""
        with self._update:
            for settings in self._settings.values():
                self._sync(settings, startup=False)

    def _checked_labels(self, models: Iterable[ModelSettings]) -> dict[str, dict[str, int]]:
        """UpdateModelVersionLabelMap: a label may only name an available version, unless
        --allow_version_labels_for_unavailable_models (then not to move an existing label)."""
        labels: dict[str, dict[str, int]] = {}
        for settings in models:
            available = self._served.get(settings.name, {})
            for label, version in settings.labels.items():
                existing = self._labels.get(settings.name, {}).get(label)
                allowed = self._allow_unavailable_labels and existing in (None, version)
                if not allowed and version not in available:
                    raise StatusError(
                        "FAILED_PRECONDITION",
                        f"Request to assign label to version {version} of model "
                        f"{settings.name}, which is not currently available for inference",
                    )
                labels.setdefault(settings.name, {})[label] = version
        return labels

    def _sync(self, settings: ModelSettings, startup: bool) -> None:
        name = settings.name
        try:
            present = servable_versions(settings.base_path)
        except ModelDirError as e:
            if startup:
                raise
            log.warning("No versions of servable %s found: %s", name, e)
            return  # the base path is being rewritten: keep serving what is loaded
        aspired = settings.policy.choose(set(present))
        if not aspired and startup:
            raise ServingError(
                f"no version of model {name} under {settings.base_path} matches its version "
                f"policy (present: {', '.join(map(str, sorted(present)))})"
            )
        states = self._states.get(name, {})
        for version in sorted(aspired - self._served.get(name, {}).keys(), reverse=True):
            if version in states and states[version].failed:
                continue  # tried and failed: not again until the server restarts
            self._load_version(name, version, present[version], startup)
        served = self._served.get(name, {})
        if aspired & served.keys() or not aspired:
            for version in sorted(served.keys() - aspired):
                self._unload_version(name, version)

    def _load_version(self, name: str, version: int, path: Path, startup: bool) -> None:
        log.info("Loading servable version {name: %s version: %d}", name, version)
        self._set_state(name, version, LOADING)
        start = time.perf_counter()
        try:
            model = self._load(name, version, path)
        except Exception as e:  # any broken SavedModel: one line, the rest keeps serving
            code = error_code_of(e)
            message = e.message if isinstance(e, StatusError) else first_line(str(e))
            message = message or type(e).__name__
            self._set_state(name, version, VersionState("END", code, message))
            if startup:
                raise ServingError(
                    f"1 model(s) did not become available: {{name: {name} version: "
                    f"{version}}} due to error: {code}: {message}"
                ) from None
            served = sorted(self._served.get(name, {}))
            log.error(
                "Loading servable version {name: %s version: %d} failed: %s; still serving "
                "versions %s",
                name,
                version,
                message,
                served,
            )
            return
        seconds = time.perf_counter() - start
        self._served[name] = {**self._served.get(name, {}), version: model}
        self._set_state(name, version, AVAILABLE)
        log.info(
            "Successfully loaded servable version {name: %s version: %d} from %s in %.1f s",
            name,
            version,
            path,
            seconds,
        )

    def _unload_version(self, name: str, version: int) -> None:
        served = dict(self._served.get(name, {}))
        served.pop(version, None)
        self._served[name] = served  # requests in flight keep their model object
        self._set_state(name, version, END)
        log.info("Unloaded servable version {name: %s version: %d}", name, version)

    def _unload_model(self, name: str) -> None:
        for version in sorted(self._served.get(name, {})):
            self._unload_version(name, version)
        self._served.pop(name, None)
        log.info("Model %s removed from the config: unloaded", name)

    def _set_state(self, name: str, version: int, state: VersionState) -> None:
        self._states[name] = {**self._states.get(name, {}), version: state}
