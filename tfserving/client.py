"""A small TF Serving REST client: one keep-alive session, safe retries, clear errors.

One `TFServingClient` is meant to be shared: its connection pool is reused across requests
(and threads), and the model metadata is fetched once and cached.

Retries are limited to what cannot run a request twice: a refused connection (the server is
still starting, the request was never sent) and HTTP 503 (the server said it did not take
the request). A timeout or a dropped connection after the request went out is not retried.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from tfserving.errors import (
    ConnectionDropped,
    NotTFServing,
    ServerError,
    ServerTimeout,
    ServerUnreachable,
)
from tfserving.metadata import ModelMetadata, parse_metadata
from tfserving.spec import ServerSpec

DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3


@dataclass(frozen=True)
class VersionStatus:
    version: str
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: str
    error_message: str

    @property
    def available(self) -> bool:
        return self.state == "AVAILABLE"


class TFServingClient:
    """Talks to one model (a `ServerSpec`) over REST; close it, or use it as a context manager."""

    def __init__(
        self,
        spec: ServerSpec,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.5,
        pool_size: int = 10,
    ) -> None:
        self.spec = spec
        self.timeout = timeout
        retry = Retry(
            total=None,
            connect=retries,
            status=retries,
            status_forcelist=(503,),
            read=False,  # re-raise read errors as they are: a timeout stays a timeout
            other=0,
            allowed_methods=None,  # 503 means "not processed", safe for POST :predict too
            backoff_factor=backoff,
            raise_on_status=False,  # hand back the last 503 so its body can be shown
        )
        adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=pool_size)
        self.session = requests.Session()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._metadata: ModelMetadata | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> TFServingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def status(self) -> list[VersionStatus]:
        """GET /v1/models/NAME[/versions/N]: the state of each version the server knows."""
        body = self.get_json(self.spec.model_url)
        return [
            VersionStatus(
                version=str(entry.get("version", "")),
                state=entry.get("state", "UNKNOWN"),
                error_code=entry.get("status", {}).get("error_code", ""),
                error_message=entry.get("status", {}).get("error_message", ""),
            )
            for entry in body.get("model_version_status", [])
        ]

    def metadata(self) -> ModelMetadata:
        """The model's signatures, fetched on first use and then cached (thread-safe)."""
        with self._lock:
            if self._metadata is None:
                self._metadata = parse_metadata(self.get_json(self.spec.metadata_url))
            return self._metadata

    def predict(self, body: bytes) -> dict[str, Any]:
        """POST an already-encoded JSON body to :predict and return the decoded answer."""
        return self._request("POST", self.spec.predict_url, body)

    def get_json(self, url: str) -> dict[str, Any]:
        return self._request("GET", url)

    def _request(self, method: str, url: str, body: bytes | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            response = self.session.request(
                method, url, data=body, headers=headers, timeout=self.timeout
            )
        except requests.ConnectTimeout as exc:
            raise ServerUnreachable(url, "connection timed out") from exc
        except requests.Timeout as exc:
            raise ServerTimeout(url, self.timeout) from exc
        except requests.ConnectionError as exc:
            if _dropped(exc):
                raise ConnectionDropped(url) from exc
            raise ServerUnreachable(url, _reason(exc)) from exc
        return _decode(url, response)


def _decode(url: str, response: requests.Response) -> dict[str, Any]:
    """TF Serving always answers JSON; errors come as {"error": "..."} with a 4xx/5xx status."""
    try:
        body = response.json()
    except ValueError:  # HTML from a proxy, plain text, an empty body...
        body = None
    if not isinstance(body, dict):
        raise NotTFServing(
            url, response.status_code, response.headers.get("Content-Type", ""), response.content
        )
    if response.status_code >= 400 or "error" in body:
        raise ServerError(url, response.status_code, str(body.get("error", response.text)))
    return body


def _reason(exc: requests.ConnectionError) -> str:
    """'Connection refused' rather than urllib3's three nested exception reprs."""
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if match:
        return match.group(1).strip()
    return text


def _dropped(exc: requests.ConnectionError) -> bool:
    """The request went out but the connection closed before an answer (not a refusal)."""
    return "Connection aborted" in str(exc) or "RemoteDisconnected" in str(exc)
