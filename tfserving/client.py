"""A small TF Serving REST client: one keep-alive pool, safe retries, bounded requests.

One `TFServingClient` is meant to be shared: its connection pool is reused across requests
(and threads), and the model metadata is fetched once and cached.

Each request is bounded, whatever the server does:
- in time: `timeout` is a deadline for the whole request (connecting, sending, every byte of
  the answer, and the retries). Socket timeouts alone bound each read, so a server dripping one
  byte every half second would hold a client for ever; a watchdog closes the socket instead.
- in size: the answer, after decompression, may not exceed `max_response_bytes`; a larger
  `Content-Length` is refused before anything is read, and a gzip bomb stops at the limit.

Retries are limited to what cannot run a request twice: a refused connection (the server is
still starting, the request was never sent) and HTTP 503 (the server said it did not take
the request). A timeout or a dropped connection after the request went out is not retried.

Credentials in the server's URL (`http://user:secret@host`) are sent as basic auth and never
appear in a URL this client reports: `ServerSpec` keeps them apart from its URLs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util import parse_url

from tfserving.errors import (
    ConnectionDropped,
    NotTFServing,
    ResponseTooLarge,
    RestUnfeedable,
    ServerError,
    ServerTimeout,
    ServerUnreachable,
)
from tfserving.metadata import ModelMetadata, field, parse_metadata
from tfserving.model_client import DEFAULT_FORM, NO_JSON_FORM, RequestForm
from tfserving.spec import ServerSpec

if TYPE_CHECKING:
    import numpy as np

DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
DEFAULT_MAX_RESPONSE_BYTES = 256 * 2**20  # 10x a 100-detection answer with every raw output
_CHUNK = 2**16
_HEADERS = {"Accept-Encoding": "gzip, deflate", "User-Agent": "tensorflow-serving-sidecar"}


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
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        ca_file: str | Path | None = None,
        authorization: str | None = None,
    ) -> None:
        self.spec = spec
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_response_bytes = max_response_bytes
        self._pool = _pool(spec.base_url, pool_size, ca_file)
        self._headers = dict(_HEADERS)
        authorization = spec.authorization(authorization)
        if authorization:
            self._headers["Authorization"] = authorization
        self._metadata: ModelMetadata | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> TFServingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()

    def status(self) -> list[VersionStatus]:
        """GET /v1/models/NAME[/versions/N]: the state of each version the server knows."""
        return parse_status(self.get_json(self.spec.model_url))

    def metadata(self) -> ModelMetadata:
        """The model's signatures, fetched on first use and then cached (thread-safe)."""
        with self._lock:
            if self._metadata is None:
                self._metadata = parse_metadata(self.get_json(self.spec.metadata_url))
            return self._metadata

    def metadata_json(self) -> dict[str, Any]:
        """GET .../metadata: TF Serving's answer as it is."""
        return self.get_json(self.spec.metadata_url)

    def image_request(
        self,
        image: bytes | np.ndarray,
        input_name: str,
        signature_name: str,
        form: RequestForm = DEFAULT_FORM,
    ) -> bytes:
        """The predict body for one image: an encoded file's bytes as `{"b64": ...}` for a
        DT_STRING input, or an (H, W, C) uint8 array as pixels (integers, which TF Serving
        reads into any numeric input, or floats v / 255 with `form.unit_range`). The row
        format names no input: a detection signature has one."""
        from tfserving.encoding import b64_request, pixels_request  # numpy: not for --help

        if form.dtype in NO_JSON_FORM and not isinstance(image, bytes):
            raise RestUnfeedable(
                f"input {input_name!r} is {form.dtype}, which TF Serving's REST API cannot take "
                "(its JSON reader converts no value to it)"
            )
        name = input_name if form.columnar else None
        if isinstance(image, bytes):
            return b64_request(image, signature_name, name)
        return pixels_request(image, signature_name, form.unit_range, name)

    def predict(self, body: bytes, columnar: bool = False) -> dict[str, Any]:
        """POST an already-encoded JSON body to :predict and return the decoded answer (its
        form follows the body's: `columnar` is for the gRPC client's sake)."""
        return self._request("POST", self.spec.predict_url, body)

    def get_json(self, url: str) -> dict[str, Any]:
        return self._request("GET", url)

    def _request(self, method: str, url: str, body: bytes | None = None) -> dict[str, Any]:
        deadline = _Deadline(self.timeout)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                status, content_type, data = self._attempt(method, url, body, deadline)
            except NewConnectionError as exc:  # refused, or no such host: never sent
                if last or not deadline.sleep(self._backoff(attempt)):
                    raise ServerUnreachable(url, _reason(exc)) from None
                continue
            if status == 503 and not last and deadline.sleep(self._backoff(attempt)):
                continue  # "not taken": safe to send again, even a POST
            return _decode(url, status, content_type, data)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _backoff(self, attempt: int) -> float:
        """0, then backoff x 2, x 4, ...: urllib3's schedule (0, 1, 2 s with the default)."""
        return 0.0 if attempt == 0 else self.backoff * 2**attempt

    def _attempt(
        self, method: str, url: str, body: bytes | None, deadline: _Deadline
    ) -> tuple[int, str, bytearray]:
        """One request: status, Content-Type and the decoded body, all within the deadline."""
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        remaining = deadline.remaining()
        if remaining <= 0:
            raise ServerTimeout(url, self.timeout)
        _watched.deadline = deadline
        response = None
        try:
            response = self._pool.urlopen(
                method,
                parse_url(url).request_uri,  # the pool knows the origin
                body=body,
                headers=headers,
                retries=False,
                redirect=False,
                timeout=urllib3.Timeout(connect=remaining, read=remaining),
                preload_content=False,
            )
            data = self._read(url, response)
        except NewConnectionError:  # a ConnectTimeoutError too; _request retries it
            raise
        except ConnectTimeoutError:
            raise ServerUnreachable(url, "connection timed out") from None
        except (ReadTimeoutError, ProtocolError, DecodeError, OSError) as exc:
            if deadline.expired or isinstance(exc, ReadTimeoutError):
                raise ServerTimeout(url, self.timeout) from None
            if isinstance(exc, DecodeError):
                raise NotTFServing(url, response.status if response else 0, "", b"") from None
            raise ConnectionDropped(url, _cut_off(exc)) from None
        except SSLError as exc:
            raise ServerUnreachable(url, f"TLS: {exc.args[0] if exc.args else exc}") from None
        except HTTPError as exc:
            raise ServerUnreachable(url, type(exc).__name__) from None
        finally:
            deadline.cancel()
            _watched.deadline = None
            if response is not None:
                response.release_conn()
        if deadline.expired:  # it struck as the last byte came: the connection is closed
            raise ServerTimeout(url, self.timeout)
        return response.status, response.headers.get("Content-Type", ""), data

    def _read(self, url: str, response: urllib3.BaseHTTPResponse) -> bytearray:
        """The whole (decompressed) answer, refused as soon as it passes the size limit."""
        limit = self.max_response_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            response.close()
            raise ResponseTooLarge(url, limit)
        data = bytearray()
        while chunk := response.read(_CHUNK, decode_content=True):
            data += chunk
            if len(data) > limit:
                response.close()
                raise ResponseTooLarge(url, limit)
        return data


def parse_status(body: dict[str, Any]) -> list[VersionStatus]:
    """TF Serving's model status answer, each field read checked (MalformedAnswer otherwise)."""
    status = functools.partial(field, what="model status")
    versions = []
    for i, entry in enumerate(status(body, "model_version_status", list, "", [])):
        where = f"model_version_status[{i}]"
        error = status(entry, "status", dict, where, {})
        versions.append(
            VersionStatus(
                version=str(status(entry, "version", str | int, where, "")),
                state=status(entry, "state", str, where, "UNKNOWN"),
                error_code=str(status(error, "error_code", str | int, f"{where}.status", "")),
                error_message=status(error, "error_message", str, f"{where}.status", ""),
            )
        )
    return versions


def _decode(url: str, status: int, content_type: str, data: bytearray) -> dict[str, Any]:
    """TF Serving always answers JSON; errors come as {"error": "..."} with a 4xx/5xx status."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # HTML from a proxy, plain text, "[[[[..." a mile deep
        body = None
    if not isinstance(body, dict):
        raise NotTFServing(url, status, content_type, bytes(data[:200]))
    if status >= 400 or "error" in body:
        message = body.get("error", data[:500].decode("utf-8", "replace"))
        raise ServerError(url, status, str(message))
    return body


class _Deadline:
    """The end of one request's time, and the watchdog that enforces it.

    Armed by `_WatchedConnection.request` on the connection that carries the request: at the
    deadline it shuts the socket down, so whatever read or write is pending returns at once and
    the client reports a timeout. Cancelled when the answer is in.
    """

    def __init__(self, seconds: float) -> None:
        self.expires = time.monotonic() + seconds
        self.expired = False
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return self.expires - time.monotonic()

    def sleep(self, seconds: float) -> bool:
        """Sleep before a retry if the retry still has time after it; False if it would not."""
        if self.remaining() <= seconds:
            return False
        time.sleep(seconds)
        return True

    def watch(self, connection: HTTPConnection) -> None:
        self.cancel()
        timer = threading.Timer(max(self.remaining(), 0.0), self._expire, (connection,))
        timer.daemon = True
        with self._lock:
            self._timer = timer
        timer.start()

    def cancel(self) -> None:
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _expire(self, connection: HTTPConnection) -> None:
        with self._lock:
            if self._timer is None:  # cancelled while the timer was firing
                return
            self.expired = True
            sock = connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)


# The deadline of the request the current thread is making, for its connection to pick up.
_watched = threading.local()


class _WatchedConnection(HTTPConnection):
    """An HTTP connection that arms the current request's deadline when it sends one."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        deadline = getattr(_watched, "deadline", None)
        if deadline is not None:
            deadline.watch(self)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    request = _WatchedConnection.request


class _Pool(HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def _pool(base_url: str, size: int, ca_file: str | Path | None = None) -> HTTPConnectionPool:
    """One keep-alive pool for the server's origin; connections beyond `size` are not kept.
    HTTPS checks the server against `ca_file` when given, else the system's roots."""
    url = parse_url(base_url)
    options: dict[str, Any] = {"maxsize": size, "block": False, "retries": False}
    if url.scheme != "https":
        return _Pool(url.host, url.port, **options)
    if ca_file is not None:
        options["ca_certs"] = str(ca_file)
    return _HTTPSPool(url.host, url.port, **options)


def _reason(exc: NewConnectionError) -> str:
    """'Connection refused' rather than urllib3's nested message."""
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(exc).rpartition(": ")[2] or type(exc).__name__


def _cut_off(exc: Exception) -> str | None:
    """'after 10 of 250 bytes' when the answer was cut short, from urllib3's IncompleteRead."""
    for arg in (exc, *getattr(exc, "args", ())):
        partial, expected = getattr(arg, "partial", None), getattr(arg, "expected", None)
        if isinstance(partial, int) and isinstance(expected, int):
            return f"after {partial} of {partial + expected} bytes"
    return None
