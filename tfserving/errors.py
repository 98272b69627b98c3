"""Exceptions whose messages tell the user what happened and what to try next.

The CLI prints `str(error)` and exits non-zero, adding the option to change where one exists
(the messages here speak of the library, not of flags); library users catch TFServingError,
or SidecarError for anything the project raises.
"""

from __future__ import annotations

import re


class SidecarError(Exception):
    """The root of every error this project raises: catch it to catch them all.

    Each package has its own root below it (TFServingError here, DetectionError, ServingError,
    BuildError, DeployError), and every message is one line a user can act on.
    """


class TFServingError(SidecarError):
    """Base class for everything that can go wrong talking to TF Serving."""


class ServerUnreachable(TFServingError):
    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        ports = (
            "gRPC is port 8500 by default; 8501 is REST"
            if url.startswith("grpc")
            else "REST is port 8501 by default; 8500 is gRPC"
        )
        super().__init__(
            f"cannot reach TF Serving at {url} ({reason}). Is the server running and are the "
            f"host and port right? ({ports}.)"
        )


class ConnectionDropped(TFServingError):
    """The connection closed before the whole answer came; `cut_off` says how much came."""

    def __init__(self, url: str, cut_off: str | None = None) -> None:
        self.url = url
        what = f"the answer was cut off {cut_off}" if cut_off else "closed before an answer came"
        super().__init__(
            f"the connection to {url} {what}: the server (or a proxy in between) dropped the "
            "request; its log should say why"
        )


class ServerTimeout(TFServingError):
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        super().__init__(
            f"no answer from {url} within {timeout:g} s (the client's timeout for a whole "
            "request). The server may be overloaded or the model slow on this input."
        )
        self.timeout = timeout


class ResponseTooLarge(TFServingError):
    """The answer (decompressed) is larger than the client accepts."""

    def __init__(self, url: str, limit: int) -> None:
        self.url = url
        self.limit = limit
        super().__init__(
            f"the answer from {url} is larger than {limit / 2**20:g} MiB, the client's limit "
            "(decompressed); a detection model's answer is far smaller, unless it returns "
            "every raw output of a large batch"
        )


class ServerError(TFServingError):
    """TF Serving answered with an error; `message` is its `{"error": ...}` text as sent."""

    def __init__(self, url: str, status: int, message: str) -> None:
        self.url = url
        self.status = status
        self.message = message
        super().__init__(f"TF Serving returned HTTP {status} for {url}: {message}")


class GrpcStatusError(TFServingError):
    """TF Serving answered a call with an error status; `code` is its canonical name
    (NOT_FOUND, INVALID_ARGUMENT, ...) and `message` its text, as the REST API words it too."""

    def __init__(self, url: str, method: str, code: str, message: str) -> None:
        self.url = url
        self.code = code
        self.message = message
        super().__init__(f"TF Serving at {url} answered {method} with {code}: {one_line(message)}")


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


class SignatureNotFound(UnsupportedSignature):
    """The model has no signature of the name asked for; the message lists those it has."""


class UnfeedableInput(UnsupportedSignature):
    """The signature's image input has a dtype no image encoding fits."""


class RestUnfeedable(UnsupportedSignature):
    """The input's dtype has no JSON form in TF Serving's REST API (DT_HALF): gRPC carries it."""


def one_line(message: str) -> str:
    """A server's message as one line: gRPC's and TensorFlow's run to several."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


# Control characters (C0, DEL, C1): ESC starts the sequences that move the cursor or recolor.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """`text` with its control characters written as escapes (ESC as \\x1b, a newline as \\x0a):
    what servers, clients and files send is printed and logged this way, so that none of it
    can move a terminal's cursor or fake a line."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)
