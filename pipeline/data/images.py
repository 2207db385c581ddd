"""Decoding any image file a user may have into the uint8 pixels the model takes; Pillow and numpy only,
so the service needs no torch.

`load_rgb` and `resize_square` are the single place where files become model input: prepare
validates with them, training, evaluation, export and the service read with them, so an image is
the same array everywhere.
"""

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# Formats Pillow names apart that are a variant of an accepted one: MPO is a JPEG carrying more pictures
# (a phone's depth map or a stereo pair, in its MPF segment), and reads as its first picture, the JPEG.
VARIANT_OF = {"MPO": "JPEG"}


class BadImage(ValueError):
    """A file that is not a decodable image; the message says why."""


def to_8_bit(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit single-channel image scaled down to 8 bits (not clipped: 65535 -> 255) when it
    uses more than 8 bits, a block of rows at a time, so no image-sized wide copy is ever made."""
    top = 65535 if image.getextrema()[1] > 255 else 255
    out = np.empty((image.height, image.width), dtype=np.uint8)
    for start in range(0, image.height, 256):
        rows = (0, start, image.width, min(start + 256, image.height))
        block = np.clip(np.asarray(image.crop(rows)), 0, top)
        # floor(x * 255 / top) in integers, as the float64 computation it replaces; mode F stays float
        out[start : start + 256] = (
            block.astype(np.uint32) * 255 // top if block.dtype.kind in "iu" else block * 255 / top
        )
    return Image.fromarray(out)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: 16-bit scaled down (not clipped), alpha composited on white. Changes
    `image` (EXIF rotation, in place) and copies only where a mode must change: at the pixel limit
    every image-sized copy costs up to 160 MB."""
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode in WIDE_MODES:
        image = to_8_bit(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


def load_rgb(source: Path | str | BinaryIO, max_pixels: int, formats: tuple[str, ...] | None = None) -> Image.Image:
    """Decode the whole file (so truncation shows up here, not mid-training) into RGB. The header is
    checked first: over `max_pixels`, or not one of `formats` (Pillow's names; None: any), nothing
    is decoded."""
    try:
        with Image.open(source) as image:
            if formats is not None and VARIANT_OF.get(image.format, image.format) not in formats:
                raise BadImage(f"{image.format} is not one of the accepted formats: {', '.join(formats)}")
            if image.width * image.height > max_pixels:
                raise BadImage(f"{image.width}x{image.height} pixels is over the limit of {max_pixels}")
            image.load()
            return to_rgb(image)
    except BadImage:
        raise
    except Image.UnidentifiedImageError:
        raise BadImage("not in an image format Pillow can read") from None
    except MemoryError:  # the process's own limit, not the file's fault: whoever set the limit reports it
        raise
    except Exception as exc:  # noqa: BLE001
        # Pillow's plugins, libtiff and the EXIF code raise what their parsing hits, not only OSError: a
        # malformed EXIF block raises TypeError or struct.error from exif_transpose, a bad tile IndexError
        raise BadImage(f"{error_name(exc)}: {exc}") from None


def error_name(exc: Exception) -> str:
    """`ValueError`, `struct.error`: the exception's type as its module would be imported to name it."""
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def resize_square(image: Image.Image, size: int) -> np.ndarray:
    """The centre square of the image, resized to `size` (bilinear, antialiased): uint8 3 x size x size.
    Pillow resamples only the box of the source that the square covers, so the memory is size x size
    whatever the aspect ratio (resizing the short side first made 9.6 million x 96 pixels of a
    200000 x 2 image); the pixels are those of resizing the short side to `size` and centre-cropping,
    within rounding."""
    width, height = image.size
    # the long side as torchvision's Resize computes it (truncated), and CenterCrop's offset
    scaled = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
    left, top = round((scaled[0] - size) / 2), round((scaled[1] - size) / 2)
    x_scale, y_scale = width / scaled[0], height / scaled[1]
    box = (left * x_scale, top * y_scale, (left + size) * x_scale, (top + size) * y_scale)
    square = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.ascontiguousarray(np.asarray(square).transpose(2, 0, 1))
