"""`auto`: the blocks to tune, chosen by the relative gradient norms of a linear probe's held-out loss."""

import torch

from pipeline.data.splits import Split
from pipeline.finetune.block_choice import choose_blocks
from pipeline.finetune.strategies import STRATEGIES, count_parameters
from pipeline.model.backbones import build
from tests.conftest import tiny_params


def checkerboard_task(amplitude: float, count: int = 512, size: int = 32) -> Split:
    """Noisy grey images with a one-pixel checkerboard of +-amplitude grey levels; its phase is the label.

    At 40 levels any network's first filters see the phase, and the features of a random-init
    ResNet already separate it linearly: the head suffices. At 3 levels the pattern drowns in the
    noise of each pixel (60..196): only filters tuned to it, in the first blocks, can recover it.
    """
    generator = torch.Generator().manual_seed(1)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    checker = ((rows + cols) % 2 * 2 - 1).float()
    labels = torch.randint(0, 2, (count,), generator=generator)
    base = torch.randint(60, 196, (count, 3, size, size), generator=generator).float()
    sign = (labels * 2 - 1).float().view(count, 1, 1, 1)
    images = (base + amplitude * sign * checker).clamp(0, 255).to(torch.uint8)
    return Split([f"{i}.png" for i in range(count)], images, labels)


def auto_plan(task: Split):
    params = tiny_params(**{"model.backbone": "resnet18", "model.weights": "none", "finetune.strategy": "auto"})
    torch.manual_seed(0)
    backbone = build("resnet18", "none", 2)
    return backbone, STRATEGIES["auto"](params, backbone, task)


def test_auto_trains_the_head_alone_when_a_probe_already_solves_the_task():
    _backbone, plan = auto_plan(checkerboard_task(amplitude=40))
    assert [(p.name, p.trainable) for p in plan.phases] == [("head", ("head",))]
    assert plan.block_choice.blocks == () and plan.block_choice.probe_accuracy >= 0.98


def test_auto_tunes_the_first_blocks_when_the_signal_is_only_there_at_the_input():
    backbone, plan = auto_plan(checkerboard_task(amplitude=3))
    assert [p.name for p in plan.phases] == ["auto"]
    assert plan.phases[0].trainable == ("body.conv1", "body.bn1", "body.layer1", "head")
    assert plan.block_choice.blocks == ("conv1", "layer1") and plan.block_choice.probe_accuracy < 0.98
    stem_and_layer1 = sum(
        p.numel()
        for n, p in backbone.model.named_parameters()
        if n.startswith(("body.conv1.", "body.bn1.", "body.layer1."))
    )
    assert count_parameters(backbone.model, plan.trained_modules) == stem_and_layer1 + 512 * 2 + 2


def test_the_choice_leaves_the_model_untouched_and_reports_each_block():
    torch.manual_seed(0)
    backbone = build("resnet18", "none", 2)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    task = checkerboard_task(amplitude=3, count=64)
    choice = choose_blocks(backbone, task.images, task.labels, count=1, probe_enough=0.98, samples=1000, seed=0)
    assert all(torch.equal(before[k], v) for k, v in backbone.model.state_dict().items())
    assert all(p.grad is None for p in backbone.model.parameters())
    assert list(choice.relative_gradient_norms) == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    assert all(value > 0 for value in choice.relative_gradient_norms.values())
    top = max(choice.relative_gradient_norms, key=choice.relative_gradient_norms.get)
    assert choice.blocks == (top,) and choice.probe_accuracy < 0.98  # it chose a block: the probe fell short
