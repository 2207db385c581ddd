"""The bodies of the API's requests and answers (FastAPI validates the one and documents both), and the answer to a
request that does not validate."""

from http import HTTPStatus

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.responses import JSONResponse


class Label(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    predictions: list[Label]  # the top_k classes, most probable first

    @classmethod
    def top(cls, probabilities: np.ndarray, classes: list[str], top_k: int) -> list["Prediction"]:
        """One prediction per row of `probabilities` (in `classes` order): its `top_k` most probable classes."""
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
        return [
            cls(predictions=[Label(label=classes[i], probability=float(row[i])) for i in best])
            for row, best in zip(probabilities, order, strict=True)
        ]


class Base64Request(BaseModel):
    images: list[str]  # base64 (or data: URLs) of image files
    top_k: int | None = None


def error_in_words(error: dict) -> str:
    """One of FastAPI's validation errors (`{"type": "missing", "loc": ["body", "image"], ...}`) as a phrase."""
    location = [str(part) for part in error["loc"] if part != "body"]
    field = ".".join(location)
    if error["type"] == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])})"
    if error["type"] == "missing":
        return f"the request has no field `{field}`"
    given = error.get("input")
    shown = f" (got {given!r:.60})" if isinstance(given, str | int | float) else ""
    return f"field `{field}`: {error['msg'].removeprefix('Value error, ')}{shown}"


async def validation_refusal(_: Request, exc: RequestValidationError) -> JSONResponse:
    """A request FastAPI could not validate, refused in a sentence like every other 4xx (FastAPI's own answer is
    its list of error objects)."""
    sentence = "; ".join(error_in_words(error) for error in exc.errors())
    detail = f"{sentence[0].upper()}{sentence[1:]}; the API is described at /v1/docs"
    return JSONResponse({"detail": detail}, status_code=HTTPStatus.UNPROCESSABLE_ENTITY)
