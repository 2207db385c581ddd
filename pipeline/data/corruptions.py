"""A shifted copy of the test split: each image corrupted once, offline, reproducibly from a seed.

Kumar et al. (2022) found full fine-tuning below a linear probe out of distribution and LP-FT above
full; this copy measures that on the user's own data. Each image gets one of four corruptions of
ImageNet-C (Hendrycks & Dietterich 2019) at its middle severity (3 of 5), drawn by the seed, so the
copy is as large as the test split and every corruption scores about a quarter of it.
"""

import math

import torch
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms.v2 import functional

CORRUPTIONS = ("gaussian noise", "blur", "contrast", "jpeg")
NOISE_STD = 0.18  # of the [0, 1] range
BLUR_SIGMA_AT_224 = 3.0  # pixels at ImageNet-C's 224 px, scaled to the image size
CONTRAST = 0.2  # distance from the image's mean grey kept
JPEG_QUALITY = 15


def corrupt(image: torch.Tensor, corruption: str, generator: torch.Generator) -> torch.Tensor:
    """One uint8 3 x S x S image with `corruption` applied."""
    if corruption == "gaussian noise":
        noise = torch.randn(image.shape, generator=generator) * NOISE_STD * 255
        return (image.float() + noise).round().clamp(0, 255).to(torch.uint8)
    if corruption == "blur":
        sigma = BLUR_SIGMA_AT_224 * image.shape[-1] / 224
        kernel = 2 * math.ceil(3 * sigma) + 1
        return functional.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
    if corruption == "contrast":
        mean = image.float().mean()
        return ((image.float() - mean) * CONTRAST + mean).round().clamp(0, 255).to(torch.uint8)
    if corruption == "jpeg":
        return decode_jpeg(encode_jpeg(image, quality=JPEG_QUALITY))
    raise ValueError(f"unknown corruption {corruption!r}; known: {', '.join(CORRUPTIONS)}")


def shifted_copy(images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted uint8 images, index into CORRUPTIONS of each one's corruption): the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    kinds = torch.randint(len(CORRUPTIONS), (len(images),), generator=generator)
    corrupted = torch.stack(
        [corrupt(image, CORRUPTIONS[kind], generator) for image, kind in zip(images, kinds.tolist(), strict=True)]
    )
    return corrupted, kinds


def accuracies(predicted: torch.Tensor, labels: torch.Tensor, kinds: torch.Tensor) -> dict[str, float]:
    """Accuracy on the whole shifted copy (`all`) and on each corruption's share of it."""
    correct = (predicted == labels).float()
    scores = {"all": correct.mean().item()}
    for index, name in enumerate(CORRUPTIONS):
        chosen = kinds == index
        if chosen.any():
            scores[name] = correct[chosen].mean().item()
    return scores
