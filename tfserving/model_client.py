"""What a client of one served model offers, whichever protocol it speaks.

`TFServingClient` (REST) and `GrpcClient` (gRPC) both have this shape, so the detection pipeline,
the batch runner and the load tester take either: a request is built once as bytes in the
client's own protocol (`image_request`) and sent as often as needed (`predict`), and every answer
comes back in the form of TF Serving's REST API, which one set of parsers reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from tfserving.client import VersionStatus
    from tfserving.metadata import ModelMetadata


# Input dtypes TF Serving's JSON reader can't fill (json_tensor.cc has no case for them): the
# REST client refuses them, gRPC carries them.
NO_JSON_FORM = ("DT_HALF",)


@dataclass(frozen=True)
class RequestForm:
    """How an image goes to the model. `dtype`: the pixel input's (DT_UINT8, DT_FLOAT, DT_HALF; an
    encoded file is always DT_STRING); `unit_range`: float values v / 255 instead of 0-255;
    `columnar`: TF Serving's columnar request (`inputs`), which keeps outputs that have no
    batch dimension whole in the answer."""

    dtype: str = "DT_UINT8"
    unit_range: bool = False
    columnar: bool = False


DEFAULT_FORM = RequestForm()


class ModelClient(Protocol):
    def status(self) -> list[VersionStatus]:
        """The state of each version of the model that the server knows."""

    def metadata(self) -> ModelMetadata:
        """The model's signatures, parsed and checked (cached after the first call)."""

    def metadata_json(self) -> dict[str, Any]:
        """The metadata as TF Serving's REST API answers it."""

    def image_request(
        self,
        image: bytes | np.ndarray,
        input_name: str,
        signature_name: str,
        form: RequestForm = DEFAULT_FORM,
    ) -> bytes:
        """A predict request for one image: an encoded file's bytes, or (H, W, C) uint8 pixels
        sent as `form` says (the input's dtype and value range, the request form)."""

    def predict(self, body: bytes, columnar: bool = False) -> dict[str, Any]:
        """Send a request from `image_request`; the answer as TF Serving's REST API gives it:
        with `columnar` (a request made with a columnar RequestForm), as it answers `inputs`."""

    def close(self) -> None: ...
