"""Where a served model lives: one object that builds every TF Serving REST URL for it.

Users name a server either by the predict URL the seed used
(`http://HOST:8501/v1/models/NAME[/versions/N|/labels/L]:predict`) or by host/port/model
name/version/label. Both end up here, so status, metadata and predict always address the
same model version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORT = 8501  # TF Serving's REST port (gRPC is 8500)

_MODEL_PATH = re.compile(
    r"^(?P<prefix>.*?)/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:/metadata|:(?:predict|classify|regress))?/?$"
)


class ServerSpecError(ValueError):
    """The server was named in a way we cannot turn into TF Serving URLs."""


@dataclass(frozen=True)
class ServerSpec:
    """A model on a TF Serving REST endpoint; `base_url` may carry a proxy path prefix."""

    base_url: str
    model_name: str
    version: int | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if self.version is not None and self.label is not None:
            raise ServerSpecError("give a model version or a version label, not both")
        if not self.model_name:
            raise ServerSpecError("the model name is empty")

    @classmethod
    def from_url(
        cls,
        url: str,
        model_name: str | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> ServerSpec:
        """Parse a predict/status/metadata URL, or a bare `http://host:port` plus model_name.

        Version/label given explicitly override what the URL says.
        """
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerSpecError(f"not an http(s) URL: {url!r}")
        origin = f"{parts.scheme}://{parts.netloc}"
        match = _MODEL_PATH.match(parts.path)
        if match:
            url_version = int(match["version"]) if match["version"] else None
            if version is None and label is None:
                version, label = url_version, match["label"]
            return cls(origin + match["prefix"], model_name or match["name"], version, label)
        if not model_name:
            raise ServerSpecError(
                f"{url!r} does not name a model: use "
                "http://HOST:PORT/v1/models/NAME:predict or add --model_name"
            )
        return cls(origin + parts.path.rstrip("/"), model_name, version, label)

    @classmethod
    def from_parts(
        cls,
        host: str,
        port: int,
        model_name: str,
        version: int | None = None,
        label: str | None = None,
    ) -> ServerSpec:
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host  # IPv6
        return cls(f"http://{host}:{port}", model_name, version, label)

    @property
    def model_url(self) -> str:
        """The status URL; also the stem of the predict and metadata URLs."""
        url = f"{self.base_url}/v1/models/{self.model_name}"
        if self.version is not None:
            return f"{url}/versions/{self.version}"
        if self.label is not None:
            return f"{url}/labels/{self.label}"
        return url

    @property
    def predict_url(self) -> str:
        return f"{self.model_url}:predict"

    @property
    def metadata_url(self) -> str:
        return f"{self.model_url}/metadata"
