"""Which blocks to tune, chosen from the data before the budget is spent (the `auto` strategy).

After Auto-RGN ("Surgical Fine-Tuning Improves Adaptation to Distribution Shifts", Lee et al.
2023): a block whose weights would change most, relative to their size, under the gradient of the
loss is the one the data asks to adapt. Here the gradient is taken of the held-out loss of a
linear probe: the probe is fitted (L-BFGS, on frozen features) to one half of a sample of the
training images, and the relative gradient norm ||grad|| / ||weights|| of each block is measured
on the other half, so it shows what the head alone cannot fix on images it has not seen. If the
probe already classifies that half (accuracy >= `finetune.auto_probe_enough`), the head is
enough and no block is tuned; otherwise the `finetune.unfreeze_blocks` blocks with the highest
relative gradient norm are.
"""

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.model.backbones import Backbone, block_label
from pipeline.model.blocks import parameters_of

BATCH = 64


@dataclass(frozen=True)
class BlockChoice:
    probe_accuracy: float  # of the linear probe on the held-out half of the sample
    relative_gradient_norms: dict[str, float]  # block label -> ||grad|| / ||weights||
    blocks: tuple[str, ...]  # labels of the chosen blocks, input to output; () = the head alone


def fit_probe(features: torch.Tensor, labels: torch.Tensor, classes: int) -> nn.Linear:
    """A multinomial logistic regression on fixed features, to convergence (L2 keeps it finite)."""
    probe = nn.Linear(features.shape[1], classes).to(features.device)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(probe(features), labels) + 1e-3 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


def choose_blocks(
    backbone: Backbone,
    images: torch.Tensor,
    labels: torch.Tensor,
    count: int,
    probe_enough: float,
    samples: int,
    seed: int,
) -> BlockChoice:
    """Probe on `samples` training images, gradients on `samples` others, on the model's device; the
    model is left as it was."""
    model = backbone.model
    device = next(model.parameters()).device
    labels = labels.to(device)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.eval()  # BatchNorm on its running statistics, as the frozen parts will run
    samples = min(samples, len(labels) // 2)  # small data: half to fit the probe, half to score it
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    fit_rows, held_out = order[:samples], order[samples : 2 * samples]
    try:
        with torch.no_grad():
            features = torch.cat(
                [model.features(images[fit_rows[i : i + BATCH]].to(device)) for i in range(0, len(fit_rows), BATCH)]
            )
        probe = fit_probe(features, labels[fit_rows], model.head.out_features)
        model.head.load_state_dict(probe.state_dict())
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            correct = 0
            for i in range(0, len(held_out), BATCH):
                rows = held_out[i : i + BATCH]
                logits = model(images[rows].to(device))
                (nn.functional.cross_entropy(logits, labels[rows], reduction="sum") / len(held_out)).backward()
                correct += (logits.argmax(1) == labels[rows]).sum().item()
        norms = {}
        for block in backbone.blocks:
            weights = [p for p in parameters_of(model, block) if p.grad is not None]
            gradient = torch.sqrt(sum(p.grad.pow(2).sum() for p in weights))
            size = torch.sqrt(sum(p.detach().pow(2).sum() for p in weights))
            norms[block_label(block)] = float(gradient / size)
    finally:
        model.zero_grad(set_to_none=True)
        model.load_state_dict(state)
        model.train(was_training)
    accuracy = correct / len(held_out)
    ranked = sorted(norms, key=norms.get, reverse=True)[:count] if accuracy < probe_enough else []
    blocks = tuple(label for label in norms if label in ranked)
    return BlockChoice(accuracy, norms, blocks)
