"""Fine-tuning strategies: a registry of planners that turn the config into a `Plan` of phases.

A `Phase` says which modules (or parameters) train, at which learning rates, for how many epochs; the
training loop runs phases and knows nothing of strategy names. With `finetune.batchnorm: frozen` every
module whose weights are all frozen runs in eval mode, so BatchNorm statistics of frozen parts keep their
pretrained values (and dropout in them is off), the same as in the feature cache. What each strategy trains
on which architecture: docs/strategies.md#the-strategies-finetunestrategy.
"""

from collections.abc import Callable
from dataclasses import dataclass

from timm.optim import param_groups_layer_decay
from torch import nn

from pipeline.config import ConfigError, Params
from pipeline.data.splits import Split
from pipeline.finetune.block_choice import BlockChoice, choose_blocks
from pipeline.finetune.lora import add_adapters, merge_adapters
from pipeline.model.backbones import Backbone, Classifier, block_label
from pipeline.model.blocks import parts_of


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    trainable: tuple[str, ...]  # module or parameter names of the Classifier: "head", "body", "body.layer4", ...
    head_lr: float
    body_lr: float

    @property
    def head_only(self) -> bool:
        return self.trainable == ("head",)


def unchanged(model: Classifier) -> Classifier:
    return model


@dataclass(frozen=True)
class Plan:
    phases: tuple[Phase, ...]
    block_choice: BlockChoice | None = None  # `auto`: what its probe measured and chose
    # the trained model as it is saved and exported: `lora` merges its adapters into the weights
    finalize: Callable[[Classifier], Classifier] = unchanged

    @property
    def trained_modules(self) -> set[str]:
        return {name for phase in self.phases for name in phase.trainable}


def head_phase(params: Params) -> Phase:
    return Phase("head", params.finetune.head_epochs, ("head",), params.train.lr, 0.0)


def head(params: Params, backbone: Backbone, train: Split) -> Plan:
    return Plan((head_phase(params),))


def full(params: Params, backbone: Backbone, train: Split) -> Plan:
    lr = params.train.lr
    return Plan((Phase("full", params.train.epochs, ("body", "head"), lr, lr * params.finetune.backbone_lr_mult),))


def checked_block_count(params: Params, backbone: Backbone) -> int:
    count = params.finetune.unfreeze_blocks
    if count > len(backbone.blocks):
        raise ConfigError(
            f"finetune.unfreeze_blocks: {count} is more than the {len(backbone.blocks)} blocks "
            f"of {params.model.backbone} (allowed: 1..{len(backbone.blocks)})"
        )
    return count


def partial(params: Params, backbone: Backbone, train: Split) -> Plan:
    count = checked_block_count(params, backbone)
    names = tuple(name for block in backbone.blocks[-count:] for name in block)
    lr = params.train.lr
    return Plan((Phase("partial", params.train.epochs, (*names, "head"), lr, lr * params.finetune.backbone_lr_mult),))


NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def norm(params: Params, backbone: Backbone, train: Split) -> Plan:
    """Only the normalisation layers' scale and shift, plus the head (under `batchnorm: frozen` they
    also re-estimate their statistics):
    "Training BatchNorm and only BatchNorm" (Frankle et al. 2021), BitFit (Ben Zaken et al. 2022)
    for networks whose biases live in BatchNorm. About 1% of the weights; nothing is added to the
    network, so it exports like any other. Tuned at the full rate: these few parameters need it."""
    names = tuple(
        f"body.{name}"
        for name, module in backbone.model.body.named_modules()
        if isinstance(module, NORM_LAYERS) and any(True for _ in module.parameters(recurse=False))
    )
    lr = params.train.lr
    return Plan((Phase("norm", params.train.epochs, (*names, "head"), lr, lr),))


def bitfit(params: Params, backbone: Backbone, train: Split) -> Plan:
    """Only the body's biases, plus the head (BitFit, Ben Zaken et al. 2022), at the full rate as `norm`. A
    network whose convolutions have no bias (ResNet) keeps its biases in BatchNorm: they train here too."""
    names = tuple(f"body.{name}" for name, _ in backbone.model.body.named_parameters() if name.endswith("bias"))
    lr = params.train.lr
    return Plan((Phase("bitfit", params.train.epochs, (*names, "head"), lr, lr),))


def lora(params: Params, backbone: Backbone, train: Split) -> Plan:
    """Low-rank adapters beside the body's linear layers and pointwise convolutions (pipeline.finetune.lora,
    Hu et al. 2022), plus the head; the adapters train at the full rate, and are merged into the weights once
    trained, so what is saved and exported is the plain network."""
    names = add_adapters(backbone.model, params.finetune.lora)
    lr = params.train.lr
    return Plan((Phase("lora", params.train.epochs, (*names, "head"), lr, lr),), finalize=merge_adapters)


def lp_ft(params: Params, backbone: Backbone, train: Split) -> Plan:
    """Linear probe, then everything at the lower rate (Kumar et al. 2022): a trained head
    sends small gradients into the backbone, so the pretrained features are not distorted."""
    low = params.train.lr * params.finetune.backbone_lr_mult
    return Plan((head_phase(params), Phase("fine-tune", params.train.epochs, ("body", "head"), low, low)))


def auto(params: Params, backbone: Backbone, train: Split) -> Plan:
    """The blocks the data asks for (pipeline.finetune.block_choice), tuned like `partial`; the head alone
    when a linear probe already classifies held-out images. The probe runs on the model's device."""
    tune = params.finetune
    choice = choose_blocks(
        backbone,
        train.images,
        train.labels,
        checked_block_count(params, backbone),
        tune.auto_probe_enough,
        tune.auto_samples,
        params.seed,
    )
    if not choice.blocks:
        return Plan((head_phase(params),), choice)
    names = tuple(name for block in backbone.blocks if block_label(block) in choice.blocks for name in block)
    lr = params.train.lr
    return Plan((Phase("auto", params.train.epochs, (*names, "head"), lr, lr * tune.backbone_lr_mult),), choice)


STRATEGIES: dict[str, Callable[[Params, Backbone, Split], Plan]] = {
    "head": head,
    "full": full,
    "partial": partial,
    "lp-ft": lp_ft,
    "norm": norm,
    "bitfit": bitfit,
    "lora": lora,
    "auto": auto,
}


def apply_phase(model: Classifier, phase: Phase, layer_decay: float | None = None, weight_decay: float = 0.0):
    """Set requires_grad for the phase; return optimizer parameter groups: the head's, and the body's (with
    `layer_decay`, one per depth, each block at that times the rate of the one above: timm's
    param_groups_layer_decay, which also leaves biases and norm weights out of `weight_decay`)."""
    model.requires_grad_(False)
    for part in parts_of(model, list(phase.trainable)):
        part.requires_grad_(True)
    head = {"params": [p for p in model.head.parameters() if p.requires_grad], "lr": phase.head_lr}
    if layer_decay is None:
        body = [{"params": [p for p in model.body.parameters() if p.requires_grad], "lr": phase.body_lr}]
    else:
        body = param_groups_layer_decay(model.body, weight_decay=weight_decay, layer_decay=layer_decay)
        for group in body:
            group["lr"] = phase.body_lr * group.pop("lr_scale")
    return [group for group in (head, *body) if group["params"]]


def set_train_mode(model: nn.Module, batchnorm: str) -> None:
    """model.train(), then eval mode where the BatchNorm policy keeps statistics: every module whose
    weights are all frozen ('frozen'), and every BatchNorm layer too ('pretrained')."""
    model.train()
    if batchnorm == "train":
        return
    for module in model.modules():
        weights = list(module.parameters())
        frozen = weights and not any(p.requires_grad for p in weights)
        if frozen or (batchnorm == "pretrained" and isinstance(module, nn.modules.batchnorm._BatchNorm)):
            module.eval()


def count_parameters(model: nn.Module, names: set[str]) -> int:
    """Parameters under any of the module names `names` (each counted once)."""
    return sum(p.numel() for n, p in model.named_parameters() if any(n == m or n.startswith(m + ".") for m in names))
