"""Load an image the way a person sees it, and choose the bytes to send for it.

Boxes come back normalized to the image the model saw, and are drawn on the image as
displayed. So the model must see the displayed image: EXIF orientation applied, any mode
(grayscale, palette, RGBA, CMYK, 16-bit) turned into 8-bit RGB, original size kept.
For models that take encoded bytes the file goes as it is whenever the server's decoder
would produce exactly those pixels; otherwise (EXIF-rotated, CMYK, 16-bit, transparency,
formats other than JPEG/PNG) our RGB image is re-encoded, so boxes still land right.
Such a file need not even be decoded here (`load_image(..., decode=False)`): its pixels are
decoded only if something asks for them (drawing the boxes), which saves the client most of
its work per photo when many photos go to a model that takes encoded bytes.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from object_detection.errors import ImageError

# Files the server decodes to the same RGB pixels as Pillow + our conversion does.
_SENT_AS_IS = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L")}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_JPEG_QUALITY = 95
# The format plugins Image.open needs for a file, by its first bytes. Pillow's first Image.open
# imports five (Image.preinit: BMP, GIF, JPEG, PPM, PNG; about 10 ms of a one-photo run, more
# than reading the photo's header). A JPEG needs its own only; a PNG its own and JPEG's, in
# which annotated pictures are saved. Anything else gets preinit's five, as before.
_JPEG = "JpegImagePlugin"
_PREINIT = ("BmpImagePlugin", "GifImagePlugin", _JPEG, "PpmImagePlugin", "PngImagePlugin")
_PLUGINS = {b"\xff\xd8\xff": (_JPEG,), b"\x89PNG\r\n\x1a\n": (_JPEG, "PngImagePlugin")}


@dataclass(frozen=True)
class LoadedImage:
    path: Path
    file_bytes: bytes
    file_format: str  # JPEG, PNG, ... as Pillow names it
    file_mode: str  # the file's own mode: RGB, L, P, RGBA, CMYK, I;16...
    orientation: int  # EXIF orientation tag; 1 means upright
    size: tuple[int, int]  # (width, height) as displayed
    decoded: Image.Image | None = field(default=None, repr=False, compare=False)

    @cached_property
    def image(self) -> Image.Image:
        """8-bit RGB, upright (EXIF orientation applied); decoded on first use if need be."""
        return self.decoded if self.decoded is not None else _decode(self.path, self.file_bytes)

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

    def pixels(self) -> np.ndarray:
        """(height, width, 3) uint8 array, for models that take pixels."""
        return np.asarray(self.image)

    @property
    def sent_as_is(self) -> bool:
        """True when the file's own bytes decode (on the server) to exactly `image`."""
        return self.orientation == 1 and (self.file_format, self.file_mode) in _SENT_AS_IS

    def encoded(self) -> bytes:
        """Bytes for a DT_STRING (encoded image) input: the file, or a re-encoding of `image`."""
        if self.sent_as_is:
            return self.file_bytes
        buffer = io.BytesIO()
        if self.file_format == "JPEG":  # a photo: keep it small
            self.image.save(buffer, "JPEG", quality=_JPEG_QUALITY, subsampling=0)
        else:  # lossless source: stay lossless
            self.image.save(buffer, "PNG")
        return buffer.getvalue()


def load_image(path: str | Path, decode: bool = True) -> LoadedImage:
    """Read and normalize an image file; raises ImageError with a reason a user can act on.

    decode=False reads only the header of a file that can be sent as it is (its pixels are
    decoded on first use): broken image data then shows only when the pixels are needed, or
    as the server's error.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror or exc}") from None
    with _opened(path, data) as opened:
        orientation = int(opened.getexif().get(ExifTags.Base.Orientation, 1) or 1)
        header = (path, data, opened.format or "", opened.mode, orientation)
        undecoded = LoadedImage(*header, opened.size)
        if not decode and undecoded.sent_as_is:
            return undecoded
    rgb = _decode(path, data)
    return LoadedImage(*header, rgb.size, rgb)


@contextmanager
def _opened(path: Path, data: bytes) -> Iterator[Image.Image]:
    """Image.open with Pillow's errors turned into ImageErrors that name the file."""
    _import_plugins(data)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            yield opened
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image (JPEG, PNG, ... expected)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: broken or truncated image data ({exc})") from None


def _import_plugins(data: bytes) -> None:
    """Import the plugins `data` needs (_PLUGINS), then mark Pillow's preinit as done so that
    Image.open does not import the others. Any file still opens as it did: a JPEG or PNG by the
    plugin it would have found first anyway (the five accept disjoint magic numbers); any other
    file after preinit's five, here; one that none of them takes (WebP, TIFF...) through
    Image.open's fallback, which imports every plugin (Image.init), as before. The mark is
    Pillow's private flag: should a release drop it, only the 10 ms come back."""
    magic = next((magic for magic in _PLUGINS if data.startswith(magic)), None)
    for plugin in _PLUGINS[magic] if magic else _PREINIT:
        importlib.import_module(f"PIL.{plugin}")
    if getattr(Image, "_initialized", None) == 0:  # 0: preinit() has not run
        Image._initialized = 1


def _decode(path: Path, data: bytes) -> Image.Image:
    with _opened(path, data) as opened:
        opened.load()
        return to_rgb(ImageOps.exif_transpose(opened))


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit scaled down (not clipped), transparency composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT:
        values = np.clip(np.asarray(image, np.int64), 0, 65535) >> 8
        return Image.fromarray(values.astype(np.uint8), "L").convert("RGB")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
