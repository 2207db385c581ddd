"""The model card: what a trained model is and what it expects, written once by train and carried in
models/model.pt and in the exported ONNX graph's metadata (key `model_card`), so every reader, the
service included, gets it from one function and the same validation. Needs only pydantic."""

import json
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ONNX_METADATA_KEY = "model_card"


class ModelCardError(ValueError):
    """A model card that is missing or does not describe a usable model; the message says what."""


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    classes: list[str] = Field(min_length=2)  # output index -> class name
    image_size: int = Field(ge=16, le=1024)  # the model takes uint8 RGB N x 3 x size x size
    mean: tuple[float, float, float]  # per channel, of pixel / 255; the exported graph applies them
    std: tuple[float, float, float]
    backbone: str
    weights: str  # the pretrained weights fine-tuning started from
    strategy: str
    strategy_chosen_by: str = "params.yaml"  # or "the verdict: <its decision>" (finetune.strategy: verdict)
    data_source: str
    data_fingerprint: str  # SHA-256 of the prepared manifest: which images, labels and splits
    # what the pretrained weights were trained at (timm's pretrained_cfg, torchvision's transforms), where known:
    # for the record only, the pipeline resizes bilinearly to image_size everywhere
    pretrained_size: int | None = None
    pretrained_interpolation: str | None = None

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: list[str]) -> list[str]:
        if len(set(classes)) != len(classes):
            raise ValueError("class names must be distinct")
        return classes

    @field_validator("std")
    @classmethod
    def _positive(cls, std: tuple[float, ...]) -> tuple[float, ...]:
        if min(std) <= 0:
            raise ValueError("std must be positive")
        return std

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str, origin: str) -> "ModelCard":
        try:
            return cls.model_validate(json.loads(text))
        except (ValidationError, json.JSONDecodeError) as exc:
            raise ModelCardError(f"{origin}: the model card is invalid: {exc}") from None


def from_onnx_metadata(metadata: Mapping[str, str], origin: str) -> ModelCard:
    """The card of an exported model, from its metadata (onnx `metadata_props` or ONNX Runtime's
    `custom_metadata_map`)."""
    if ONNX_METADATA_KEY not in metadata:
        raise ModelCardError(
            f"{origin} has no `{ONNX_METADATA_KEY}` metadata: export it with `python -m pipeline.stages.export`"
        )
    return ModelCard.from_json(metadata[ONNX_METADATA_KEY], origin)
