"""The bodies of the API's requests and answers (FastAPI validates the one and documents both)."""

import numpy as np
from pydantic import BaseModel


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
