"""Exceptions whose messages tell the user what happened and what to try next.

The CLI prints `str(error)` and exits non-zero; library users can catch TFServingError.
"""

from __future__ import annotations


class TFServingError(Exception):
    """Base class for everything that can go wrong talking to TF Serving."""


class ServerUnreachable(TFServingError):
    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        super().__init__(
            f"cannot reach TF Serving at {url} ({reason}). Is the server running and are the "
            "host and port right? (REST is port 8501 by default; 8500 is gRPC.)"
        )


class ConnectionDropped(TFServingError):
    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(
            f"the connection to {url} closed before an answer came: the server (or a proxy in "
            "between) dropped the request; its log should say why"
        )


class ServerTimeout(TFServingError):
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        super().__init__(
            f"no answer from {url} within {timeout:g} s. The server may be overloaded or the "
            "model slow on this input: raise --timeout, or check the server's load."
        )


class ServerError(TFServingError):
    """TF Serving answered with an error; `message` is its `{"error": ...}` text as sent."""

    def __init__(self, url: str, status: int, message: str) -> None:
        self.url = url
        self.status = status
        self.message = message
        super().__init__(f"TF Serving returned HTTP {status} for {url}: {message}")


class NotTFServing(TFServingError):
    """The answer is not TF Serving's JSON (a proxy's HTML page, a different service...)."""

    def __init__(self, url: str, status: int, content_type: str, body: bytes) -> None:
        self.url = url
        self.status = status
        snippet = body[:200].decode("utf-8", "replace").strip()
        super().__init__(
            f"HTTP {status} from {url} is not TF Serving's JSON (Content-Type: "
            f"{content_type or 'none'}): {snippet!r}. Check that the URL points at TF Serving's "
            "REST port, not at a proxy or load balancer that has no healthy backend."
        )


class UnsupportedSignature(TFServingError):
    """The model's signature is not one this client knows how to feed."""
