"""A request's images: taken from base64 or uploads, checked, decoded and resized into one uint8 NCHW batch
with the pipeline's own `load_rgb`/`resize_square`. The first bad image refuses its request with a 4xx
that names it; the other requests of a batch are not concerned."""

import binascii
import io
import re
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


# The header of a data: URL, `data:[<mediatype>][;base64],`, is short: the comma is looked for this far only.
DATA_URL_HEADER_CHARS = 256
DATA_URL_FORM = "data:[<mediatype>];base64,<data>"
BASE64_TEXT = re.compile(r"[A-Za-z0-9+/=\r\n\t ]*")  # the alphabet, padding, and the whitespace of wrapped lines


def base64_payload(text: str, name: str) -> int:
    """Where the base64 of `text` starts: 0, or after the header of a data: URL (only base64 ones are accepted)."""
    if not text.startswith("data:"):
        return 0
    comma = text.find(",", 0, DATA_URL_HEADER_CHARS)
    if comma < 0:
        raise refuse(HTTPStatus.BAD_REQUEST, f"{name} is a data: URL without a comma: send {DATA_URL_FORM}")
    if not text[:comma].endswith(";base64"):
        raise refuse(HTTPStatus.BAD_REQUEST, f"{name} is a data: URL that is not base64: send {DATA_URL_FORM}")
    return comma + 1


def max_base64_chars(max_bytes: int) -> int:
    """The most characters the base64 of `max_bytes` bytes takes, wrapped in lines of 64 or more with CRLFs."""
    encoded = 4 * -(-max_bytes // 3)
    return encoded + 2 * -(-encoded // 64)


def decode_base64(text: str, name: str, max_bytes: int) -> bytes:
    """The bytes of a base64 text or data: URL, refused by its length before anything is copied."""
    start = base64_payload(text, name)
    if len(text) - start > max_base64_chars(max_bytes):  # each 4 characters decode to at most 3 bytes
        raise refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{name} is over the limit of {max_bytes} bytes")
    encoded = text[start:] if start else text
    if not encoded.isascii() or not BASE64_TEXT.fullmatch(encoded):
        raise refuse(
            HTTPStatus.BAD_REQUEST,
            f"{name} is not valid base64: only A-Z, a-z, 0-9, +, / and = may appear (and line breaks)",
        )
    try:  # one pass, skipping the whitespace of wrapped lines (the only other characters left)
        return binascii.a2b_base64(encoded, strict_mode=False)
    except binascii.Error as exc:
        raise refuse(HTTPStatus.BAD_REQUEST, f"{name} is not valid base64: {exc}") from None


def from_base64(texts: list[str], max_image_bytes: int) -> list[Blob]:
    """Base64 texts (or data: URLs) to image files, refusing one over `max_image_bytes` before decoding it."""
    return [(f"image {i}", decode_base64(text, f"image {i}", max_image_bytes)) for i, text in enumerate(texts)]


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
