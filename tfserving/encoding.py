"""Predict request bodies, built as bytes without going through Python lists.

TF Serving's REST API wants a uint8 image as a nested JSON array. The seed built it with
`array.tolist()` + `json.dumps`: millions of Python ints, about a second per photo.
`pixels_json` makes the same text with numpy in a few tens of milliseconds: every value is
looked up in a table of 4-byte tokens (its digits right-aligned in 3 characters, then `,` or
`]`), the tokens are laid out in a fixed-width text array with the brackets around them, and
the padding spaces are dropped at the end. An encoded (JPEG/PNG) image goes as
`{"b64": ...}`, which TF Serving decodes into a DT_STRING tensor.
"""

from __future__ import annotations

import base64
import json

import numpy as np


def _value_tokens() -> np.ndarray:
    """uint32 table: entry v is "  v," (v < 256), entry 256 + v is "  v]" (a pixel's last value)."""
    text = "".join(f"{value:>3}{end}" for end in ",]" for value in range(256))
    return np.frombuffer(text.encode(), np.uint32)


_TOKENS = _value_tokens()


def pixels_json(pixels: np.ndarray) -> bytes:
    """JSON text of an (H, W, C) uint8 array: `json.dumps(pixels.tolist())` without spaces."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or 0 in pixels.shape:
        raise ValueError(
            f"expected a non-empty (H, W, C) uint8 array, got {pixels.dtype} {pixels.shape}"
        )
    height, width, channels = pixels.shape
    index = pixels.astype(np.uint16)
    index[..., -1] += 256  # a pixel's last value closes its bracket
    tokens = np.take(_TOKENS, index).view(np.uint8).reshape(height, width, 4 * channels)

    # "[" + rows + "]"; a row is "[" + pixels + "],"; a pixel is "[" + tokens + ",".
    pixel_width = 4 * channels + 2
    row_width = width * pixel_width + 3
    text = np.empty(height * row_width + 2, np.uint8)
    text[0], text[-1] = ord("["), ord("]")
    rows = text[1:-1].reshape(height, row_width)  # views into `text`, filled in place
    pixel_text = rows[:, 1:-2].reshape(height, width, pixel_width)
    pixel_text[:, :, 0] = ord("[")
    pixel_text[:, :, 1:-1] = tokens
    pixel_text[:, :, -1] = ord(",")
    rows[:, 0] = ord("[")
    rows[:, -2:] = np.frombuffer(b"],", np.uint8)
    rows[:, -3] = ord(" ")  # no comma after a row's last pixel...
    rows[-1, -1] = ord(" ")  # ...nor after the last row
    return text.tobytes().replace(b" ", b"")


def _body(signature_name: str, *instance: bytes) -> bytes:
    """`{"signature_name": ..., "instances": [instance]}`: TF Serving's row format, one image.
    The instance comes in parts, joined once: a photo's body is megabytes, each copy counts."""
    name = json.dumps(signature_name).encode()
    return b"".join([b'{"signature_name":', name, b',"instances":[', *instance, b"]}"])


def pixels_request(pixels: np.ndarray, signature_name: str) -> bytes:
    """Predict body for a uint8 image input: `{"instances": [H x W x C array]}`."""
    return _body(signature_name, pixels_json(pixels))


def b64_request(encoded_image: bytes, signature_name: str) -> bytes:
    """Predict body for a DT_STRING input: `{"instances": [{"b64": ...}]}`."""
    return _body(signature_name, b'{"b64":"', base64.b64encode(encoded_image), b'"}')
