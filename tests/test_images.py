"""Image loading: every kind of file becomes the upright 8-bit RGB image a viewer shows.

All images are made here, so each test knows the exact pixels to expect.
"""

import hashlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from object_detection.images import ImageError, load_image
from sidecar_testing.data import IMAGE1, ROOT

# An asymmetric 3-colour picture: any flip or rotation of it is visible in the pixels.
UPRIGHT = np.zeros((40, 60, 3), np.uint8)
UPRIGHT[:10, :20] = (255, 0, 0)
UPRIGHT[30:, 45:] = (0, 0, 255)
UPRIGHT[15:25, 5:15] = (0, 200, 0)

# For each EXIF orientation, how to store the picture so that a viewer shows it upright.
STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def save_with_orientation(path, orientation, image_format="PNG"):
    stored = Image.fromarray(UPRIGHT)
    if STORED_AS[orientation] is not None:
        stored = stored.transpose(STORED_AS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, image_format, exif=exif, quality=100)  # quality: ignored by PNG
    return path


@pytest.mark.parametrize("orientation", sorted(STORED_AS))
def test_exif_orientation_is_applied(tmp_path, orientation):
    loaded = load_image(save_with_orientation(tmp_path / "photo.png", orientation))
    assert loaded.orientation == orientation
    assert np.array_equal(loaded.pixels(), UPRIGHT)
    assert loaded.sent_as_is == (orientation == 1)


def test_rotated_jpeg_is_reencoded_upright_for_the_server(tmp_path):
    loaded = load_image(save_with_orientation(tmp_path / "photo.jpg", 6, "JPEG"))
    assert (loaded.width, loaded.height) == (60, 40)
    assert not loaded.sent_as_is
    sent = Image.open(io.BytesIO(loaded.encoded()))
    assert sent.format == "JPEG" and sent.size == (60, 40)
    assert 0x0112 not in sent.getexif()  # no orientation left for a server to misread
    assert np.abs(np.asarray(sent, np.int16) - UPRIGHT).mean() < 4


def test_plain_jpeg_goes_as_its_own_bytes():
    loaded = load_image(IMAGE1)
    assert (loaded.width, loaded.height) == (1024, 636)
    assert loaded.sent_as_is
    assert loaded.encoded() == IMAGE1.read_bytes()


def _gray(value_range=255):
    return (np.arange(40 * 60).reshape(40, 60) * value_range // (40 * 60 - 1)).astype(np.int64)


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("gray.png", lambda: Image.fromarray(_gray().astype(np.uint8), "L"), lambda: _gray()),
        (
            "gray16.png",
            lambda: Image.fromarray(_gray(65535).astype(np.uint16)),
            lambda: _gray(65535) >> 8,  # scaled down, not clipped at 255
        ),
        ("bilevel.png", lambda: Image.fromarray(_gray().astype(np.uint8)).convert("1"), None),
    ],
)
def test_gray_kinds_become_rgb(tmp_path, name, make, expected):
    make().save(tmp_path / name)
    loaded = load_image(tmp_path / name)
    pixels = loaded.pixels()
    assert pixels.shape == (40, 60, 3) and pixels.dtype == np.uint8
    assert np.array_equal(pixels[..., 0], pixels[..., 1])
    if expected is not None:
        assert np.array_equal(pixels[..., 0], expected())
    else:
        assert set(np.unique(pixels)) <= {0, 255}


def test_palette_image(tmp_path):
    Image.fromarray(UPRIGHT).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(
        tmp_path / "palette.png"
    )
    loaded = load_image(tmp_path / "palette.png")
    assert loaded.file_mode == "P" and not loaded.sent_as_is
    assert np.array_equal(loaded.pixels(), UPRIGHT)


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.dstack([UPRIGHT, np.full((40, 60), 255, np.uint8)])
    rgba[:, :30, 3] = 0  # left half fully transparent
    rgba[:, 30:40, 3] = 128  # a half-transparent band
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    pixels = load_image(tmp_path / "rgba.png").pixels()
    assert (pixels[:, :30] == 255).all()
    assert np.array_equal(pixels[:, 40:], UPRIGHT[:, 40:])
    band = UPRIGHT[:, 30:40].astype(int) * 128 / 255 + 255 * 127 / 255
    assert np.abs(pixels[:, 30:40] - band).max() <= 1

    Image.fromarray(rgba, "RGBA").convert("LA").save(tmp_path / "la.png")
    assert (load_image(tmp_path / "la.png").pixels()[:, :30] == 255).all()


def test_cmyk_jpeg(tmp_path):
    Image.fromarray(UPRIGHT).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    loaded = load_image(tmp_path / "cmyk.jpg")
    assert loaded.file_mode == "CMYK" and not loaded.sent_as_is
    assert np.abs(loaded.pixels().astype(int) - UPRIGHT).mean() < 4
    sent = Image.open(io.BytesIO(loaded.encoded()))
    assert sent.mode == "RGB"  # the server gets a plain RGB JPEG


@pytest.mark.parametrize("image_format", ["BMP", "GIF", "WEBP", "TIFF"])
def test_other_formats_are_resent_as_png(tmp_path, image_format):
    path = tmp_path / f"picture.{image_format.lower()}"
    Image.fromarray(UPRIGHT).save(path, image_format, lossless=True)  # only WebP reads it
    loaded = load_image(path)
    assert (loaded.width, loaded.height) == (60, 40)
    sent = Image.open(io.BytesIO(loaded.encoded()))
    assert sent.format == "PNG"
    assert np.array_equal(np.asarray(sent.convert("RGB")), loaded.pixels())


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="image not found"):
        load_image(tmp_path / "nope.jpg")


def test_unreadable_path(tmp_path):
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(tmp_path)


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(ImageError, match="is not an image"):
        load_image(tmp_path / "notes.jpg")


def test_truncated_jpeg(tmp_path):
    (tmp_path / "cut.jpg").write_bytes(IMAGE1.read_bytes()[:4000])
    with pytest.raises(ImageError, match="broken or truncated"):
        load_image(tmp_path / "cut.jpg")


# In a fresh interpreter, as client.py runs: load each image named, say what it was and which
# of Pillow's format plugins got imported.
LOAD_FRESH = """
import hashlib, json, sys
from object_detection.images import load_image
images = [load_image(path) for path in sys.argv[1:]]
plugins = sorted(name[4:] for name in sys.modules if name.startswith("PIL.") and "Plugin" in name)
print(json.dumps({
    "images": [[i.file_format, i.size, hashlib.sha256(i.encoded()).hexdigest()] for i in images],
    "plugins": plugins,
}))
"""


def load_fresh(*paths):
    command = [sys.executable, "-c", LOAD_FRESH, *map(str, paths)]
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    return json.loads(process.stdout)


def test_a_photo_imports_only_the_pillow_plugins_it_needs(tmp_path):
    """Pillow's first Image.open would import five format plugins; a JPEG needs one."""
    assert load_fresh(IMAGE1)["plugins"] == ["JpegImagePlugin"]
    Image.fromarray(UPRIGHT).save(tmp_path / "photo.png")
    assert load_fresh(tmp_path / "photo.png")["plugins"] == ["JpegImagePlugin", "PngImagePlugin"]


def test_every_format_opens_after_a_jpeg_in_a_fresh_process(tmp_path):
    """After a JPEG (only its plugin imported), any other format still opens, and loads as in
    a process where Pillow imported its plugins itself."""
    paths = [IMAGE1, save_with_orientation(tmp_path / "rotated.jpg", 6, "JPEG")]
    for image_format in ("PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM"):
        paths.append(tmp_path / f"picture.{image_format.lower()}")
        Image.fromarray(UPRIGHT).save(paths[-1], image_format, lossless=True)
    expected = [
        [loaded.file_format, list(loaded.size), hashlib.sha256(loaded.encoded()).hexdigest()]
        for loaded in map(load_image, paths)
    ]
    assert load_fresh(*paths)["images"] == expected
