"""Where a served model lives: one object that builds every TF Serving REST URL for it.

Users name a server either by the predict URL the seed used
(`http://HOST:8501/v1/models/NAME[/versions/N|/labels/L]:predict`) or by host/port/model
name/version/label. Both end up here, so status, metadata and predict always address the
same model version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from tfserving.conventions import GRPC_PORT
from tfserving.errors import TFServingError

# gRPC URLs name the same server as http(s) ones (grpcs: with TLS); their port is gRPC's.
GRPC_SCHEMES = {"grpc": "http", "grpcs": "https"}
TLS_PORT = 443

_MODEL_PATH = re.compile(
    r"^(?P<prefix>.*?)/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:/metadata|:(?:predict|classify|regress))?/?$"
)


class ServerSpecError(TFServingError):
    """The server was named in a way we cannot turn into TF Serving URLs."""


@dataclass(frozen=True)
class ServerSpec:
    """A model on a TF Serving REST endpoint; `base_url` may carry a proxy path prefix.

    `credentials` ("user:password", from a URL's user info) are kept out of `base_url` and
    of the repr, so no URL built here, printed or written to a file, carries a password.
    """

    base_url: str
    model_name: str
    version: int | None = None
    label: str | None = None
    credentials: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.version is not None and self.label is not None:
            raise ServerSpecError("give a model version or a version label, not both")
        if not self.model_name:
            raise ServerSpecError("the model name is empty")

    def authorization(self, given: str | None = None) -> str | None:
        """The Authorization header value both clients send: the one `given` (a token), else
        basic auth from the URL's credentials (urllib3's encoding), else none."""
        if given:
            return given
        if not self.credentials:
            return None
        from urllib3 import make_headers

        return make_headers(basic_auth=self.credentials)["authorization"]

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
        userinfo, _, host = parts.netloc.rpartition("@")
        shown = redact_url(url)
        try:
            valid_host = bool(parts.hostname) and parts.port != 0
        except ValueError:  # a port that is not a number, or beyond 65535
            valid_host = False
        if parts.scheme not in ("http", "https") or not valid_host:
            raise ServerSpecError(f"not an http(s) URL: {shown!r}")
        origin = f"{parts.scheme}://{host}"
        credentials = unquote(userinfo) if userinfo else None
        match = _MODEL_PATH.match(parts.path)
        if match:
            url_version = int(match["version"]) if match["version"] else None
            if version is None and label is None:
                version, label = url_version, match["label"]
            name = model_name or match["name"]
            return cls(origin + match["prefix"], name, version, label, credentials)
        if not model_name:
            raise ServerSpecError(
                f"{shown!r} does not name a model: use http://HOST:PORT/v1/models/NAME:predict "
                "or give the model name"
            )
        return cls(origin + parts.path.rstrip("/"), model_name, version, label, credentials)

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


def redact_url(url: str) -> str:
    """`url` with the password of its user info (`user:secret@`) replaced by `***`."""
    scheme, sep, rest = url.rpartition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{host}{slash}{path}"


def grpc_address(url: str) -> tuple[str, int] | None:
    """For `grpc://HOST[:PORT][/v1/models/NAME...]` (`grpcs://` with TLS): the same address as an
    http(s) URL, which `ServerSpec.from_url` reads (the model, version and credentials in it),
    and the gRPC port: the URL's, else 8500 (443 with TLS). None for any other URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in GRPC_SCHEMES:
        return None
    http_url = f"{GRPC_SCHEMES[scheme.lower()]}://{rest}"
    try:
        port = urlsplit(http_url).port
    except ValueError:  # not a number, or beyond 65535
        raise ServerSpecError(f"not a gRPC URL: {redact_url(url)!r}") from None
    if port is None:
        port = GRPC_PORT if scheme.lower() == "grpc" else TLS_PORT
    return http_url, port
