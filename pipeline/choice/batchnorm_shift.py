"""Where a target dataset differs from the pretraining data, block by block, before any training."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from pipeline.model.backbones import Backbone, block_label
from pipeline.model.blocks import modules_of


@contextmanager
def recording_batchnorm_shift(backbone: Backbone) -> Iterator[Callable[[], dict[str, float]]]:
    """While open, every forward pass of `backbone.model` adds the target images' statistics at each
    BatchNorm input; the yielded function returns the shift per block so far (see batchnorm_shift).
    Lets a caller measure the shift in a pass it makes anyway (the verdict's feature extraction)."""
    layers = {
        block_label(block): [
            module
            for part in modules_of(backbone.model, block)
            for module in part.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None
        ]
        for block in backbone.blocks
    }
    totals: dict[nn.Module, tuple[torch.Tensor, int]] = {}

    def accumulate(module, inputs):
        x = inputs[0].double()
        total, count = totals.get(module, (0, 0))
        totals[module] = (total + x.sum(dim=(0, 2, 3)), count + x.numel() // x.shape[1])

    def shifts() -> dict[str, float]:
        found = {}
        for block, modules in layers.items():
            per_layer = [
                (
                    (totals[m][0] / totals[m][1] - m.running_mean.double()).abs()
                    / (m.running_var.double() + m.eps).sqrt()
                ).mean()
                for m in modules
            ]
            if per_layer:
                found[block] = float(torch.stack(per_layer).mean())
        return found

    hooks = [module.register_forward_pre_hook(accumulate) for modules in layers.values() for module in modules]
    try:
        yield shifts
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def batchnorm_shift(backbone: Backbone, images: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Per block: how far the target images' statistics at each BatchNorm input are from the
    running (pretraining) ones: the mean over channels of |target mean - running mean| / running
    std, averaged over the block's BatchNorm layers. 0: the block sees what it saw in pretraining;
    1: its inputs are shifted by a standard deviation."""
    model = backbone.model.eval()
    with recording_batchnorm_shift(backbone) as shifts:
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
        return shifts()
