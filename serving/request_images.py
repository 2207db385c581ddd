"""A request's images: taken from base64 or uploads, checked, decoded and resized into one uint8 NCHW batch
with the pipeline's own `load_rgb`/`resize_square`, in the bounded decoder processes of
pipeline.data.decode_box. The first bad image refuses its request with a 4xx that names it (413 for one
over the box's memory or time); the other requests of a batch are not concerned."""

import asyncio
import binascii
import re
from concurrent.futures import Future
from http import HTTPStatus

import numpy as np
from fastapi import HTTPException, UploadFile

from pipeline.config import ServingConfig
from pipeline.data.decode_box import DecodeBox, DecoderRestarted, OverLimit
from pipeline.data.images import BadImage

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


def check_size(name: str, blob: bytes, max_image_bytes: int) -> None:
    if not blob:
        raise refuse(HTTPStatus.BAD_REQUEST, f"{name} is empty")
    if len(blob) > max_image_bytes:
        raise refuse(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{name} is {len(blob)} bytes, over the limit of {max_image_bytes}"
        )


async def client_gone(receive) -> None:
    """Returns when the client disconnects: once the body is read, an ASGI receive waits only for that."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def decode_batch(
    blobs: list[Blob], image_size: int, settings: ServingConfig, box: DecodeBox, receive
) -> np.ndarray:
    """Image files to a uint8 NCHW batch of `image_size`, decoded in `box`, refusing the request on the first
    bad image (in request order). The files go to the box in one chunk per decoder process, each decoded in
    one child; a chunk whose child was killed (over its limits) is decoded again file by file, to name the
    file that did it."""
    for name, blob in blobs:
        check_size(name, blob, settings.max_image_bytes)
    how = (settings.max_image_pixels, tuple(settings.image_formats), image_size)
    size = -(-len(blobs) // box.workers)
    chunks = [blobs[first : first + size] for first in range(0, len(blobs), size)]
    futures = [box.submit_many([blob for _, blob in chunk], *how) for chunk in chunks]
    await until_decoded(futures, receive)
    squares = []
    for chunk, future in zip(chunks, futures, strict=True):
        try:
            outcomes = box.result(future)
        except BadImage:  # its child was killed on one of the files: decode them alone to name that one
            outcomes = await one_by_one(chunk, how, box, receive)
        except DecoderRestarted as exc:  # the box has retried it already: answered at once, not decoded again
            outcomes = [exc]
        squares += [square_of(name, outcome) for (name, _), outcome in zip(chunk, outcomes, strict=False)]
    return np.stack(squares)


async def one_by_one(chunk: list[Blob], how: tuple, box: DecodeBox, receive) -> list:
    """Each file of `chunk` in a child of its own: its square, or the error the box gives it."""
    futures = [box.submit_many([blob], *how) for _, blob in chunk]
    await until_decoded(futures, receive)
    outcomes = []
    for future in futures:
        try:
            outcomes += box.result(future)
        except (BadImage, DecoderRestarted) as exc:
            outcomes.append(exc)
    return outcomes


async def until_decoded(futures: list[Future], receive) -> None:
    """Waits for the box's futures. A client that disconnects abandons its decodes: their children are killed,
    not left to run to their limit."""
    watcher = asyncio.ensure_future(client_gone(receive))
    decoded = asyncio.gather(*(asyncio.wrap_future(future) for future in futures), return_exceptions=True)
    try:
        await asyncio.wait([watcher, decoded], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        for future in futures:
            future.cancel()  # a running one's child is killed: the client left
    if not decoded.done():
        raise refuse(HTTPStatus.BAD_REQUEST, "the client disconnected before its images were decoded")


def square_of(name: str, outcome: np.ndarray | Exception) -> np.ndarray:
    if isinstance(outcome, np.ndarray):
        return outcome
    if isinstance(outcome, OverLimit):
        raise refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{name} {outcome}")
    if isinstance(outcome, DecoderRestarted):  # the server's trouble, not the file's: a retry will be decoded
        raise refuse(HTTPStatus.SERVICE_UNAVAILABLE, f"{name}: {outcome}")
    raise refuse(HTTPStatus.BAD_REQUEST, f"{name} is not a readable image: {outcome}")
