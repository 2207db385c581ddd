"""A request's images: taken from base64 or uploads, checked, decoded and resized into one uint8 NCHW batch
with the pipeline's own `load_rgb`/`resize_square`. The first bad image refuses its request with a 4xx
that names it; the other requests of a batch are not concerned."""

import base64
import binascii
import io
from http import HTTPStatus

import numpy as np
from fastapi import HTTPException, UploadFile

from pipeline.config import ServingConfig
from pipeline.data.images import BadImage, load_rgb, resize_square

Blob = tuple[str, bytes]  # an image file as sent, and how the answer names it


def refuse(status: HTTPStatus, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


async def read_uploads(uploads: list[UploadFile]) -> list[Blob]:
    return [(f"image {i} ({upload.filename})", await upload.read()) for i, upload in enumerate(uploads)]


def from_base64(texts: list[str], max_image_bytes: int) -> list[Blob]:
    """Base64 texts (or data: URLs) to image files, refusing one over `max_image_bytes` before decoding it."""
    blobs = []
    for i, text in enumerate(texts):
        encoded = text.split(",", 1)[1] if text.startswith("data:") else text  # data URLs too
        encoded = "".join(encoded.split())  # lines of 76, as `base64` and MIME wrap them
        if len(encoded) * 3 // 4 > max_image_bytes:
            raise refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"image {i} is over the limit of {max_image_bytes} bytes")
        try:
            blobs.append((f"image {i}", base64.b64decode(encoded, validate=True)))
        except (binascii.Error, ValueError) as exc:
            raise refuse(HTTPStatus.BAD_REQUEST, f"image {i} is not valid base64: {exc}") from None
    return blobs


def decode_batch(blobs: list[Blob], image_size: int, settings: ServingConfig) -> np.ndarray:
    """Image files to a uint8 NCHW batch of `image_size`, refusing the request on the first bad image."""
    arrays = []
    for name, blob in blobs:
        if not blob:
            raise refuse(HTTPStatus.BAD_REQUEST, f"{name} is empty")
        if len(blob) > settings.max_image_bytes:
            raise refuse(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{name} is {len(blob)} bytes, over the limit of {settings.max_image_bytes}",
            )
        try:
            image = load_rgb(io.BytesIO(blob), settings.max_image_pixels, tuple(settings.image_formats))
        except BadImage as exc:
            raise refuse(HTTPStatus.BAD_REQUEST, f"{name} is not a readable image: {exc}") from None
        arrays.append(resize_square(image, image_size))
    return np.stack(arrays)
