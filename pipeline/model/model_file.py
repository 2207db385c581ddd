"""The trained model file, models/model.pt (best weights and the model card), and prediction with it."""

from pathlib import Path

import torch

from pipeline.atomic import atomic_path
from pipeline.model.backbones import Classifier, build
from pipeline.model.card import ModelCard, ModelCardError


def save(path: Path, state_dict: dict, card: ModelCard) -> None:
    with atomic_path(path) as partial:
        torch.save({"state_dict": state_dict, "card": card.model_dump(mode="json")}, partial)


def load(path: Path) -> tuple[Classifier, ModelCard]:
    """The fine-tuned model (weights_only: no code runs on load), in eval mode, and its card."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if "card" not in saved:
        raise ModelCardError(f"{path} has no model card: it was written by an older version; run `dvc repro train`")
    card = ModelCard.model_validate(saved["card"])
    backbone = build(card.backbone, "none", len(card.classes), card.image_size)
    model = Classifier(backbone.model.body, backbone.model.head, card.mean, card.std)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), card


@torch.no_grad()
def predict_probabilities(model: Classifier, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Softmax probabilities for a uint8 N x 3 x size x size batch, as the exported graph computes them."""
    return torch.cat([model(images[i : i + batch_size]).softmax(1) for i in range(0, len(images), batch_size)])
