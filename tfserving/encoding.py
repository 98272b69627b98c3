"""Predict request bodies, built as bytes without going through Python lists.

TF Serving's REST API wants a uint8 image as a nested JSON array. The seed built it with
`array.tolist()` + `json.dumps`: millions of Python ints, about a second per photo.
`pixels_json` makes the same text with numpy in a few tens of milliseconds: every value is
looked up in a table of fixed-width tokens (its digits right-aligned, then `,` or `]`), the
tokens are laid out in a fixed-width text array with the brackets around them, and
the padding spaces are dropped at the end. An encoded (JPEG/PNG) image goes as
`{"b64": ...}`, which TF Serving decodes into a DT_STRING tensor.
"""

from __future__ import annotations

import base64
import json

import numpy as np


def _tokens(texts: list[str]) -> np.ndarray:
    """Table of fixed-width tokens: entry v is texts[v] right-aligned then `,`; entry
    len(texts) + v the same closed by `]` (a pixel's last value)."""
    width = max(map(len, texts))
    text = "".join(f"{value:>{width}}{end}" for end in ",]" for value in texts)
    # 4-byte tokens as uint32: numpy gathers those faster than opaque 4-byte records.
    return np.frombuffer(text.encode(), np.uint32 if width == 3 else f"V{width + 1}")


# The values as JSON numbers: 0..255 (uint8, and float inputs that take 0-255: TF Serving reads
# an integer for a float), and v / 255 as the shortest text that reads back as that float32
# (float inputs in [0, 1], TF Hub's convention).
_TOKENS = _tokens([str(value) for value in range(256)])
_UNIT_TOKENS = _tokens([str(np.float32(value / 255)) for value in range(256)])


def pixels_json(pixels: np.ndarray, unit_range: bool = False) -> bytes:
    """JSON text of an (H, W, C) uint8 array: `json.dumps(pixels.tolist())` without spaces;
    with `unit_range`, each value v written as the float v / 255."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or 0 in pixels.shape:
        raise ValueError(
            f"expected a non-empty (H, W, C) uint8 array, got {pixels.dtype} {pixels.shape}"
        )
    table = _UNIT_TOKENS if unit_range else _TOKENS
    token = table.dtype.itemsize
    height, width, channels = pixels.shape
    index = pixels.astype(np.uint16)
    index[..., -1] += 256  # a pixel's last value closes its bracket
    tokens = np.take(table, index).view(np.uint8).reshape(height, width, token * channels)

    # "[" + rows + "]"; a row is "[" + pixels + "],"; a pixel is "[" + tokens + ",".
    pixel_width = token * channels + 2
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


def _body(signature_name: str, input_name: str | None, *instance: bytes) -> bytes:
    """TF Serving's row format, `{"signature_name": ..., "instances": [instance]}`, or with an
    `input_name` the columnar one, `{..., "inputs": {input_name: [instance]}}`: its answer keeps
    each output whole, which a model whose outputs have no batch dimension needs. The instance
    comes in parts, joined once: a photo's body is megabytes, each copy counts."""
    name = json.dumps(signature_name).encode()
    if input_name is None:
        return b"".join([b'{"signature_name":', name, b',"instances":[', *instance, b"]}"])
    key = json.dumps(input_name).encode()
    return b"".join([b'{"signature_name":', name, b',"inputs":{', key, b":[", *instance, b"]}}"])


def pixels_request(
    pixels: np.ndarray,
    signature_name: str,
    unit_range: bool = False,
    input_name: str | None = None,
) -> bytes:
    """Predict body for a pixel input: `{"instances": [H x W x C array]}` (see _body)."""
    return _body(signature_name, input_name, pixels_json(pixels, unit_range))


def b64_request(encoded_image: bytes, signature_name: str, input_name: str | None = None) -> bytes:
    """Predict body for a DT_STRING input: `{"instances": [{"b64": ...}]}` (see _body)."""
    return _body(signature_name, input_name, b'{"b64":"', base64.b64encode(encoded_image), b'"}')
