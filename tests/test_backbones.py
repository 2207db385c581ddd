import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from torchvision.models import ResNet18_Weights

from pipeline.data.images import resize_square
from pipeline.model import model_file
from pipeline.model.backbones import Classifier, build
from pipeline.model.card import ModelCardError
from pipeline.model.sources import lite0_imagenet
from tests.conftest import model_card

IMAGENET_CLASSES = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]


def top5(net, image, mean, std) -> list[str]:
    """The network's top classes, through the pipeline's own preprocessing (a Classifier normalises)."""
    classifier = Classifier(net, torch.nn.Identity(), mean, std).eval()
    batch = torch.from_numpy(resize_square(Image.fromarray(image), 224))[None]
    with torch.no_grad():
        return [IMAGENET_CLASSES[i] for i in classifier(batch).topk(5).indices[0]]


def test_offline_lite0_weights_load_strictly_and_recognise_photos():
    net = lite0_imagenet("DEFAULT").eval()
    mean, std = net.pretrained_cfg["mean"], net.pretrained_cfg["std"]
    assert mean == std == (0.5, 0.5, 0.5)  # the normalisation Google trained these weights with
    photos = dict(
        zip((p.split("/")[-1] for p in load_sample_images().filenames), load_sample_images().images, strict=True)
    )
    china = top5(net, photos["china.jpg"], mean, std)
    assert china[0] == "palace"
    assert {"bell cote", "monastery", "church"} & set(china)
    assert "daisy" in top5(net, photos["flower.jpg"], mean, std)[:2]


def test_head_is_replaced_and_blocks_are_the_architecture_stages():
    backbone = build("resnet18", "none", num_classes=3)
    assert backbone.model.head.out_features == 3
    assert isinstance(backbone.model.body.fc, torch.nn.Identity)
    assert backbone.blocks == [
        ["body.conv1", "body.bn1"],
        ["body.layer1"],
        ["body.layer2"],
        ["body.layer3"],
        ["body.layer4"],
    ]
    assert backbone.model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0", "convnext_tiny"])
def test_other_torchvision_families_have_heads_and_blocks(name):
    backbone = build(name, "none", num_classes=4)
    covered = {n for block in backbone.blocks for n in block}
    for param_name, _ in backbone.model.body.named_parameters():
        assert any(("body." + param_name).startswith(c + ".") for c in covered), param_name
    assert backbone.model(torch.zeros(1, 3, 64, 64)).shape == (1, 4)


def test_local_checkpoint_loads_with_weights_only(tmp_path):
    source = build("resnet18", "none", num_classes=5).model
    path = tmp_path / "resnet18.pth"
    torch.save({f"{k}": v for k, v in source.body.state_dict().items()}, path)
    loaded = build("resnet18", str(path), num_classes=2).model
    assert torch.equal(loaded.body.layer4[1].conv2.weight, source.body.layer4[1].conv2.weight)


CARD = model_card(classes=["a", "b"])


def test_trained_model_file_roundtrip_carries_the_card_and_normalises_with_it(tmp_path):
    backbone = build("resnet18", "none", num_classes=2)
    model_file.save(tmp_path / "model.pt", backbone.model.state_dict(), CARD)
    model, card = model_file.load(tmp_path / "model.pt")
    assert card == CARD and not model.training
    assert torch.equal(model.head.weight, backbone.model.head.weight)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    normalised = (images.float() / 255 - torch.tensor(CARD.mean).view(1, 3, 1, 1)) / torch.tensor(CARD.std).view(
        1, 3, 1, 1
    )
    backbone.model.eval()
    torch.testing.assert_close(
        model(images), backbone.model.head(backbone.model.body(normalised)), atol=1e-5, rtol=1e-4
    )


def test_a_model_file_without_a_card_is_refused_by_name(tmp_path):
    torch.save({"state_dict": {}, "meta": {}}, tmp_path / "model.pt")
    with pytest.raises(ModelCardError, match="model.pt has no model card"):
        model_file.load(tmp_path / "model.pt")


def test_bad_backbone_and_weights_are_named():
    with pytest.raises(ValueError, match="model.backbone: unknown 'resnet19'"):
        build("resnet19", "none", 2)
    with pytest.raises(ValueError, match="model.weights: 'IMAGENET_V9'.*IMAGENET1K_V1"):
        build("resnet18", "IMAGENET_V9", 2)
    with pytest.raises(FileNotFoundError, match="model.weights"):
        build("resnet18", "missing/weights.pth", 2)
