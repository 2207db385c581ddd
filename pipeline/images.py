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


class BadImage(ValueError):
    """A file that is not a decodable image; the message says why."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: 16-bit scaled down (not clipped), alpha composited on white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in WIDE_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if pixels.max() > 255 else 255.0
        image = Image.fromarray(np.clip(pixels * 255.0 / top, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def load_rgb(source: Path | str | BinaryIO, max_pixels: int) -> Image.Image:
    """Decode the whole file (so truncation shows up here, not mid-training) into RGB."""
    try:
        with Image.open(source) as image:
            if image.width * image.height > max_pixels:
                raise BadImage(f"{image.width}x{image.height} pixels is over the limit of {max_pixels}")
            image.load()
            return to_rgb(image)
    except BadImage:
        raise
    except Image.UnidentifiedImageError:
        raise BadImage("not in an image format Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImage(f"{type(exc).__name__}: {exc}") from None


def resize_square(image: Image.Image, size: int) -> np.ndarray:
    """Resize the short side to `size` (bilinear, antialiased) and centre-crop: uint8 3 x size x size."""
    width, height = image.size
    # the long side as torchvision computes it (truncated), so the crop matches its Resize + CenterCrop
    scaled = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
    image = image.resize(scaled, Image.Resampling.BILINEAR)
    left, top = round((scaled[0] - size) / 2), round((scaled[1] - size) / 2)
    return np.ascontiguousarray(np.asarray(image.crop((left, top, left + size, top + size))).transpose(2, 0, 1))
