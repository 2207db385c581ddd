"""Any timm or torchvision backbone, ViTs included, and every strategy on each: tiny random-init networks on
synthetic images, through the pipeline's own training entry point."""

import re

import pytest
import timm
import torch
from torch import nn

from pipeline.config import LoraConfig
from pipeline.data.class_folder import prepare
from pipeline.data.manifest import read_manifest
from pipeline.data.splits import load_split
from pipeline.finetune.loop import train_model
from pipeline.finetune.lora import add_adapters, merge_adapters
from pipeline.finetune.strategies import STRATEGIES, Phase, apply_phase
from pipeline.model.backbones import block_label, build
from pipeline.model.blocks import timm_blocks
from pipeline.release.onnx_export import export_checked
from pipeline.release.onnx_runtime import open_session
from tests.conftest import ROOT, data_config, model_card, tiny_params, write_class_images

ARCHITECTURES = ["efficientnet_lite0", "resnet18", "vit_tiny_patch16_224", "convnext_atto"]
CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("architectures")
    write_class_images(folder / "images", per_class=8)
    prepare(data_config(folder / "images"), seed=0, out_dir=folder / "prepared")
    rows = read_manifest(folder / "prepared/manifest.csv")
    return [load_split(rows, split, 32, 10**7, "memory") for split in ("train", "val")]


def trained(backbone: str, strategy: str, splits, **overrides):
    settings = {"model.backbone": backbone, "model.weights": "none", "finetune.strategy": strategy}
    params = tiny_params(**settings | {"train.epochs": 1, "finetune.head_epochs": 1} | overrides)
    return train_model(params, CLASSES, *splits, "test data")


def documented_counts() -> dict[str, dict[str, int]]:
    """docs/strategies.md's table of trained parameters: backbone -> strategy -> count."""
    rows = re.search(r"\| strategy \| `efficientnet_lite0`.*?\n\n", (ROOT / "docs/strategies.md").read_text(), re.S)[0]
    cells = [[cell.strip(" `") for cell in line.strip("|").split("|")] for line in rows.strip().splitlines()]
    header, body = cells[0][1:], cells[2:]
    return {name: {row[0]: int(row[1 + i].replace(",", "")) for row in body} for i, name in enumerate(header)}


@pytest.mark.parametrize("backbone", ARCHITECTURES)
def test_every_strategy_trains_on_every_architecture_and_trains_what_it_says(backbone, splits):
    counts = {strategy: trained(backbone, strategy, splits) for strategy in STRATEGIES}
    trainable = {strategy: result.trainable_params for strategy, result in counts.items()}
    print(backbone, trainable)
    assert {strategy: trainable[strategy] for strategy in documented_counts()[backbone]} == documented_counts()[
        backbone
    ]
    # the tuned parts grow from the head to everything; adapters and biases sit between
    assert trainable["head"] < min(trainable["bitfit"], trainable["norm"])
    assert max(trainable["bitfit"], trainable["norm"]) < trainable["lora"] < trainable["partial"] < trainable["full"]
    if backbone in ("efficientnet_lite0", "resnet18"):  # convolutions without biases: BatchNorm holds them all
        assert trainable["bitfit"] <= trainable["norm"]
    for strategy, result in counts.items():
        assert result.card.strategy == strategy and 0 <= result.best.val_accuracy <= 1
        # what is saved is the plain network: a LoRA run's adapters are merged into it
        names = set(result.model.state_dict())
        assert names == set(build(backbone, "none", len(CLASSES), 32).model.state_dict()), strategy


def test_lora_merged_into_the_weights_answers_as_the_adapters_did():
    torch.manual_seed(0)
    model = build("vit_tiny_patch16_224", "none", 3, 32).model
    names = add_adapters(model, LoraConfig(rank=4, alpha=8, dropout=0.0, targets="auto"))
    assert names and all(".lora_" in name for name in names)
    with torch.no_grad():
        for name in names:
            if "lora_B" in name:  # B starts at zero, which would make any merge look right
                model.get_parameter(name).normal_(0, 0.1)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        adapted = model.eval()(images)
        merged = merge_adapters(model)(images)
    assert not any(".lora_" in name for name in model.state_dict())
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-4)


def test_lora_targets_name_modules_and_refuse_a_name_that_matches_none():
    model = build("vit_tiny_patch16_224", "none", 3, 32).model
    names = add_adapters(model, LoraConfig(rank=2, alpha=2, dropout=0.0, targets=["qkv"]))
    assert {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in names} == {"qkv"}
    with pytest.raises(ValueError, match="finetune.lora.targets: \\['nothing'\\] matches no module"):
        add_adapters(build("resnet18", "none", 3).model, LoraConfig(rank=2, alpha=2, dropout=0.0, targets=["nothing"]))


def test_layer_decay_lowers_the_rate_block_by_block_towards_the_input():
    model = build("vit_tiny_patch16_224", "none", 3, 32).model
    groups = apply_phase(model, Phase("full", 1, ("body", "head"), 1e-3, 1e-3), layer_decay=0.5, weight_decay=0.1)
    rates = sorted({group["lr"] for group in groups})
    assert rates[-1] == 1e-3 and rates[0] == pytest.approx(1e-3 * 0.5**12)  # the stem and 12 blocks: 13 depths
    assert {group["weight_decay"] for group in groups if "weight_decay" in group} == {0.0, 0.1}  # no decay on biases


def test_blocks_come_from_timm_groups_and_torchvision_encoder_layers():
    vit = build("vit_tiny_patch16_224", "none", 3, 32)
    assert vit.blocks[0] == ["body.cls_token", "body.pos_embed", "body.patch_embed"]  # parameters and a module
    assert [block_label(block) for block in vit.blocks[1:3]] == ["blocks.0", "blocks.1"]
    assert vit.blocks[-1] == ["body.blocks.11", "body.norm"]  # the final norm with the last block
    assert (vit.pretrained_size, vit.interpolation) == (224, "bicubic")
    torchvision_vit = build("vit_b_16", "none", 3, 32)
    assert torchvision_vit.blocks[0] == ["body.conv_proj", "body.class_token", "body.encoder.pos_embedding"]
    assert torchvision_vit.blocks[1] == ["body.encoder.layers.encoder_layer_0"]
    assert torchvision_vit.model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    assert build("timm/resnet18", "none", 3).blocks[-1] == ["body.layer4"]  # timm's, by the prefix
    with pytest.raises(ValueError, match="neither group_matcher\\(\\) nor feature_info"):
        timm_blocks(nn.Sequential(nn.Linear(2, 2)))


def test_a_timm_network_loads_weights_from_a_local_file(tmp_path):
    """The online path (a pretrained tag through the Hugging Face Hub) ends in the same loader as a local file."""
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    loaded = build("vit_tiny_patch16_224", str(tmp_path / "vit.pth"), 3, 224).model
    assert torch.equal(loaded.body.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)
    resized = build("vit_tiny_patch16_224", str(tmp_path / "vit.pth"), 3, 64).model  # position embeddings resampled
    assert resized.body.pos_embed.shape == (1, 1 + 4 * 4, 192)
    with pytest.raises(ValueError, match="model.weights: 'no_such_tag' for timm's vit_tiny_patch16_224.no_such_tag"):
        build("vit_tiny_patch16_224", "no_such_tag", 3, 32)


def test_an_unknown_backbone_is_refused_with_suggestions():
    with pytest.raises(ValueError, match="model.backbone: unknown 'vit_tinyy'.*timm model"):
        build("vit_tinyy", "none", 3)


@pytest.mark.parametrize("fp16", [False, True])
def test_a_vit_exports_with_uint8_input_and_passes_the_parity_gate(tmp_path, fp16):
    torch.manual_seed(0)
    model = build("vit_tiny_patch16_224", "none", 3, 32).model.eval()
    card = model_card(image_size=32, backbone="vit_tiny_patch16_224", mean=(0.5,) * 3, std=(0.5,) * 3)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    tolerance = 1e-2 if fp16 else 1e-4
    _, _, _, difference = export_checked(model, card, images, tmp_path / "vit.onnx", 18, tolerance, fp16)
    assert difference < tolerance
    session, loaded = open_session(tmp_path / "vit.onnx", ["CPUExecutionProvider"])
    assert loaded.backbone == "vit_tiny_patch16_224" and session.get_inputs()[0].type == "tensor(uint8)"
