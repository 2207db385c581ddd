"""The frozen body's features: one pass over uint8 images, shared by every run that trains only the head, and
the device passes run on."""

import torch

from pipeline.config import Params
from pipeline.finetune import distributed
from pipeline.model.backbones import Classifier
from pipeline.progress import progress


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device: cuda was asked for but no CUDA device is visible")
    return torch.device(setting)


@torch.no_grad()
def extract_features(model: Classifier, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """One pass of the frozen body (eval mode) over uint8 images: the head's cached inputs, kept on `device`.
    Under torchrun each rank passes every N-th batch, so it reads and computes only its share, and the ranks
    assemble the whole: the same batches as one process's, so the same features."""
    model.body.eval()
    features = torch.zeros(len(images), model.head.in_features, device=device)
    starts = range(0, len(images), batch_size)[distributed.rank() :: distributed.size()]
    for start in progress(starts, "frozen features", total=len(images), unit="img", per_item=batch_size):
        features[start : start + batch_size] = model.features(images[start : start + batch_size].to(device)).float()
    return distributed.assemble(features)


class FrozenFeatures:
    """The body's features as built, shared by the runs of a comparison. Pretrained weights make the same body
    in every run (the seed draws the head; strategies differ only in what they train after), so one pass over
    an image tensor serves the `head` strategy and `lp-ft`'s head phase at every seed. A random-init body
    differs by seed: its features are not kept."""

    def __init__(self):
        self._passes: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, params: Params, model: Classifier, images: torch.Tensor, device) -> torch.Tensor:
        batch_size, weights = params.train.batch_size, params.model.weights
        if weights.lower() == "none":
            return extract_features(model, images, batch_size, device)
        key = (params.model.backbone, weights, batch_size, str(device), id(images))
        if key not in self._passes:
            # the images are kept with their features so that no other tensor can take their id
            self._passes[key] = (images, extract_features(model, images, batch_size, device))
        return self._passes[key][1]
