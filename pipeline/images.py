"""Decoding any image file a user may have into an RGB picture, and the tensors the model sees.

`load_rgb` is the single place where files become pixels: prepare validates with it, training,
evaluation and export read with it, so a file that passed prepare decodes the same everywhere.
"""

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

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


def resize_square(image: Image.Image, size: int) -> torch.Tensor:
    """Resize the short side to `size` and centre-crop: the uint8 CHW tensor of eval and serving."""
    tensor = v2.functional.pil_to_tensor(image)
    tensor = v2.functional.resize(tensor, size, antialias=True)
    return v2.functional.center_crop(tensor, [size, size])


def normalize(batch: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """uint8 NCHW batch to the float input of the network, on the batch's device."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1) * 255.0
    std_t = torch.tensor(std, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1) * 255.0
    return (batch.float() - mean_t) / std_t
