"""Fine-tuning strategies: each is a registry entry that turns the config into training phases.

A `Phase` says which modules train, at which learning rates, for how many epochs; the training
loop runs phases and knows nothing of strategy names. With `finetune.batchnorm: frozen` every
module whose weights are all frozen runs in eval mode, so BatchNorm statistics of frozen parts
keep their pretrained values (and dropout in them is off), the same as in the feature cache.
"""

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from pipeline.backbones import Backbone
from pipeline.config import ConfigError, Params


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    trainable: tuple[str, ...]  # module names of the Classifier: "head", "body", "body.layer4", ...
    head_lr: float
    body_lr: float

    @property
    def head_only(self) -> bool:
        return self.trainable == ("head",)


def head(params: Params, backbone: Backbone) -> list[Phase]:
    return [Phase("head", params.finetune.head_epochs, ("head",), params.train.lr, 0.0)]


def full(params: Params, backbone: Backbone) -> list[Phase]:
    lr = params.train.lr
    return [Phase("full", params.train.epochs, ("body", "head"), lr, lr * params.finetune.backbone_lr_mult)]


def partial(params: Params, backbone: Backbone) -> list[Phase]:
    count = params.finetune.unfreeze_blocks
    if count > len(backbone.blocks):
        raise ConfigError(
            f"finetune.unfreeze_blocks: {count} is more than the {len(backbone.blocks)} blocks "
            f"of {params.model.backbone} (allowed: 1..{len(backbone.blocks)})"
        )
    names = tuple(name for block in backbone.blocks[-count:] for name in block)
    lr = params.train.lr
    return [Phase("partial", params.train.epochs, (*names, "head"), lr, lr * params.finetune.backbone_lr_mult)]


def lp_ft(params: Params, backbone: Backbone) -> list[Phase]:
    """Linear probe, then everything at the lower rate (Kumar et al. 2022): a trained head
    sends small gradients into the backbone, so the pretrained features are not distorted."""
    low = params.train.lr * params.finetune.backbone_lr_mult
    return [*head(params, backbone), Phase("fine-tune", params.train.epochs, ("body", "head"), low, low)]


STRATEGIES: dict[str, Callable[[Params, Backbone], list[Phase]]] = {
    "head": head,
    "full": full,
    "partial": partial,
    "lp-ft": lp_ft,
}


def apply_phase(model: nn.Module, phase: Phase) -> list[dict]:
    """Set requires_grad for the phase; return optimizer parameter groups (head, body)."""
    model.requires_grad_(False)
    for name in phase.trainable:
        model.get_submodule(name).requires_grad_(True)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if n.startswith("head.")], "lr": phase.head_lr},
        {"params": [p for n, p in trainable if not n.startswith("head.")], "lr": phase.body_lr},
    ]
    return [g for g in groups if g["params"]]


def set_train_mode(model: nn.Module, batchnorm: str) -> None:
    """model.train(), then eval mode for every module with weights, all frozen ('frozen' policy)."""
    model.train()
    if batchnorm == "frozen":
        for module in model.modules():
            weights = list(module.parameters())
            if weights and not any(p.requires_grad for p in weights):
                module.eval()


def count_parameters(model: nn.Module, names: set[str]) -> int:
    """Parameters under any of the module names `names` (each counted once)."""
    return sum(p.numel() for n, p in model.named_parameters() if any(n == m or n.startswith(m + ".") for m in names))
