"""What a client of one served model offers, whichever protocol it speaks.

`TFServingClient` (REST) and `GrpcClient` (gRPC) both have this shape, so the detection pipeline,
the batch runner and the load tester take either: a request is built once as bytes in the
client's own protocol (`image_request`) and sent as often as needed (`predict`), and every answer
comes back in the form of TF Serving's REST API, which one set of parsers reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from tfserving.client import VersionStatus
    from tfserving.metadata import ModelMetadata


class ModelClient(Protocol):
    def status(self) -> list[VersionStatus]:
        """The state of each version of the model that the server knows."""

    def metadata(self) -> ModelMetadata:
        """The model's signatures, parsed and checked (cached after the first call)."""

    def metadata_json(self) -> dict[str, Any]:
        """The metadata as TF Serving's REST API answers it."""

    def image_request(
        self, image: bytes | np.ndarray, input_name: str, signature_name: str
    ) -> bytes:
        """A predict request for one image: an encoded file's bytes or (H, W, C) uint8 pixels."""

    def predict(self, body: bytes) -> dict[str, Any]:
        """Send a request from `image_request`; the answer as TF Serving's REST API gives it."""

    def close(self) -> None: ...
