"""TF Serving's error model: a canonical status code plus a message, mapped to HTTP like TF Serving.

The mapping mirrors tensorflow_serving/model_servers/http_server.cc (ToHTTPStatusCode), so a client
sees the same status code here as from the real server for the same mistake.
"""

from __future__ import annotations

from tfserving.errors import SidecarError

HTTP_STATUS = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


class ServingError(SidecarError):
    """The root of the serving package's errors (the local server and its base image)."""


class StatusError(ServingError):
    """An error answered as `{"error": message}` with the HTTP status of its canonical `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def __str__(self) -> str:
        # absl::Status::ToString(), which TF Serving embeds in some nested messages.
        return f"{self.code}: {self.message}"


def invalid_argument(message: str) -> StatusError:
    return StatusError("INVALID_ARGUMENT", message)


def not_found(message: str) -> StatusError:
    return StatusError("NOT_FOUND", message)
