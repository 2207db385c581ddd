"""LoRA adapters on the body through Hugging Face peft, and their merge into the weights after training, so
that the model file, the ONNX graph, the parity gate and the service see a plain network.

`finetune.lora.targets: auto` adapts every nn.Linear of the body (a ViT's attention qkv and proj, its MLP's fc1
and fc2) and its pointwise convolutions (1 x 1, ungrouped: where a CNN's channel mixing and most of its weights
are); a list names the modules (peft's target_modules: names or suffixes).
"""

import re

from peft import LoraConfig as PeftLoraConfig
from peft.tuners.lora import LoraModel
from torch import nn

from pipeline.config import ConfigError, LoraConfig
from pipeline.model.backbones import Classifier

ADAPTER = "default"


def auto_targets(body: nn.Module) -> list[str]:
    """Every Linear and pointwise Conv2d of the body, by full name."""
    return [
        name
        for name, module in body.named_modules()
        if isinstance(module, nn.Linear)
        or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1)
    ]


def targets_of(body: nn.Module, settings: LoraConfig) -> list[str]:
    if settings.targets == "auto":
        targets = auto_targets(body)
    else:
        names = [name for name, _ in body.named_modules()]
        targets = [
            n for n in names if any(n == t or n.endswith(f".{t}") or re.fullmatch(t, n) for t in settings.targets)
        ]
    if not targets:
        raise ConfigError(
            f"finetune.lora.targets: {settings.targets!r} matches no module of the body (nn.Linear or 1x1 Conv2d)"
        )
    return targets


def add_adapters(model: Classifier, settings: LoraConfig) -> list[str]:
    """Wrap `model.body` with LoRA adapters (rank, alpha, dropout of finetune.lora); the adapters' parameter
    names under `model`, which are all that train in the body."""
    config = PeftLoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets_of(model.body, settings),
    )
    model.body = LoraModel(model.body, config, ADAPTER)
    return [name for name, _ in model.named_parameters() if ".lora_" in name]


def merge_adapters(model: Classifier) -> Classifier:
    """Fold the adapters into the weights they adapt and drop them: the body is the plain network again."""
    if isinstance(model.body, LoraModel):
        model.body = model.body.merge_and_unload()
    return model
