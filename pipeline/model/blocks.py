"""A network's blocks: its own groups of layers, input to output, as names of modules or parameters.

timm models name their groups themselves (`group_matcher(coarse=True)`: the stem, each stage or transformer
block, the final norm with the last); where one has no matcher, its `feature_info` stages are the blocks.
torchvision's families are known by their attributes (ResNet's `layer4`, `features`, ViT's encoder layers).
A block is named by the fewest modules (or parameters) that hold exactly its weights, so that a hook on its
last module sees the block's output and `partial` trains exactly its weights.
"""

from collections.abc import Callable

from timm.models import group_parameters
from torch import nn


def block_label(block: list[str]) -> str:
    """A block's name in reports and params: its first part's, under the body (`layer4`, `blocks.6`)."""
    return block[0].removeprefix("body.")


def parts_of(model: nn.Module, names: list[str]) -> list[nn.Module | nn.Parameter]:
    """The modules or parameters of `model` by name (a block lists both kinds)."""
    parts = []
    for name in names:
        try:
            parts.append(model.get_submodule(name))
        except AttributeError:
            parts.append(model.get_parameter(name))
    return parts


def parameters_of(model: nn.Module, names: list[str]) -> list[nn.Parameter]:
    """Every parameter under the named modules, and the named parameters themselves."""
    parts = parts_of(model, names)
    return [p for part in parts for p in ([part] if isinstance(part, nn.Parameter) else part.parameters())]


def modules_of(model: nn.Module, names: list[str]) -> list[nn.Module]:
    return [part for part in parts_of(model, names) if isinstance(part, nn.Module)]


def covering_names(net: nn.Module, group: set[str]) -> list[str]:
    """The fewest modules or parameters whose weights are exactly `group`'s (parameter names), in order."""
    owned: dict[str, set[str]] = {}  # module name -> the parameter names under it
    for name, _ in net.named_parameters():
        parts = name.split(".")
        for depth in range(len(parts)):
            owned.setdefault(".".join(parts[:depth]), set()).add(name)
    chosen: list[str] = []
    for name, _ in net.named_parameters():
        if name not in group or any(name == c or name.startswith(c + ".") for c in chosen):
            continue
        parts = name.split(".")
        prefixes = [".".join(parts[:depth]) for depth in range(1, len(parts))]
        chosen.append(next((p for p in prefixes if owned[p] <= group), name))
    return chosen


def timm_blocks(net: nn.Module) -> list[list[str]]:
    """timm's own groups (stem first, the final norm with the last block); its feature stages where it has none."""
    named = {name for name, _ in net.named_parameters()}
    if hasattr(net, "group_matcher"):
        ordinal = group_parameters(net, net.group_matcher(coarse=True))
        groups = [set(names) & named for _, names in sorted(ordinal.items())]
        return [covering_names(net, group) for group in groups if group]
    stages = [info["module"] for info in getattr(net, "feature_info", [])]
    if not stages:
        raise ValueError(
            f"model.backbone: timm's {type(net).__name__} has neither group_matcher() nor feature_info: "
            "its blocks cannot be found"
        )
    return [[stage] for stage in stages]


def efficientnet_blocks(net: nn.Module) -> list[list[str]]:
    """timm's EfficientNet family by its own stages, the head convolution a block of its own (timm's coarse
    groups merge it into the last stage): the blocks the verdict's calibration and `partial` were measured on."""
    return [
        ["conv_stem", "bn1"],
        *([f"blocks.{name}"] for name, _ in net.blocks.named_children()),
        ["conv_head", "bn2"],
    ]


def resnet_blocks(net: nn.Module) -> list[list[str]]:
    return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]


def features_blocks(net: nn.Module) -> list[list[str]]:
    return [[f"features.{name}"] for name, _ in net.features.named_children()]


def vision_transformer_blocks(net: nn.Module) -> list[list[str]]:
    """torchvision's ViT: the patch projection with the class token and position embedding, each encoder layer,
    then the final norm."""
    layers = [[f"encoder.layers.{name}"] for name, _ in net.encoder.layers.named_children()]
    return [["conv_proj", "class_token", "encoder.pos_embedding"], *layers, ["encoder.ln"]]


# torchvision's families, by an attribute only they have (first match wins).
TORCHVISION_LAYOUTS: list[tuple[str, Callable[[nn.Module], list[list[str]]]]] = [
    ("layer4", resnet_blocks),  # ResNet, ResNeXt, Wide ResNet
    ("features", features_blocks),  # MobileNet, EfficientNet, ConvNeXt, VGG, Swin, ...
    ("encoder", vision_transformer_blocks),  # ViT
]


def torchvision_blocks(name: str, net: nn.Module) -> list[list[str]]:
    layout = next((fn for attribute, fn in TORCHVISION_LAYOUTS if hasattr(net, attribute)), None)
    if layout is None:
        raise ValueError(
            f"model.backbone: {name} has no known block layout (stages); supported torchvision families have "
            f"one of: {', '.join(attribute for attribute, _ in TORCHVISION_LAYOUTS)}"
        )
    blocks = layout(net)
    # Parts with weights after the last stage (MobileNetV3's extra Linear, ConvNeXt's norm) are one more
    # block, so that `full` and `partial` still train everything behind the stages.
    covered = {part.split(".")[0] for block in blocks for part in block}
    extra = [
        [child]
        for child, module in net.named_children()
        if child not in covered and any(True for _ in module.parameters())
    ]
    return blocks + extra
