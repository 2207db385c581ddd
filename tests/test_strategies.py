import pytest
from torch import nn

from pipeline.config import ConfigError
from pipeline.finetune.strategies import STRATEGIES, apply_phase, count_parameters, set_train_mode
from pipeline.model.backbones import build
from tests.conftest import tiny_params


def trainable_prefixes(model: nn.Module) -> set[str]:
    return {".".join(n.split(".")[:2]) for n, p in model.named_parameters() if p.requires_grad}


def batchnorm_modes(model: nn.Module) -> dict[str, bool]:
    return {n: m.training for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def phases(strategy: str, **overrides):
    params = tiny_params(
        **{"model.backbone": "resnet18", "model.weights": "none", "finetune.strategy": strategy} | overrides
    )
    backbone = build("resnet18", "none", 3)
    return params, backbone, STRATEGIES[strategy](params, backbone, None).phases  # only auto reads data


def test_head_trains_only_the_head_with_the_whole_body_in_eval_mode():
    params, backbone, [phase] = phases("head")
    apply_phase(backbone.model, phase)
    set_train_mode(backbone.model, "frozen")
    assert trainable_prefixes(backbone.model) == {"head.weight", "head.bias"}
    assert not any(batchnorm_modes(backbone.model).values())
    assert not backbone.model.body.training


def test_partial_trains_the_last_stages_and_freezes_the_rest():
    params, backbone, [phase] = phases("partial", **{"finetune.unfreeze_blocks": 2})
    apply_phase(backbone.model, phase)
    set_train_mode(backbone.model, "frozen")
    assert trainable_prefixes(backbone.model) == {"body.layer3", "body.layer4", "head.weight", "head.bias"}
    modes = batchnorm_modes(backbone.model)
    assert all(modes[n] for n in modes if n.startswith(("body.layer3", "body.layer4")))
    assert not any(modes[n] for n in modes if n.startswith(("body.bn1", "body.layer1", "body.layer2")))


def test_batchnorm_train_policy_leaves_frozen_statistics_updating():
    params, backbone, [phase] = phases("partial", **{"finetune.unfreeze_blocks": 1, "finetune.batchnorm": "train"})
    apply_phase(backbone.model, phase)
    set_train_mode(backbone.model, "train")
    assert all(batchnorm_modes(backbone.model).values())


def test_pretrained_policy_keeps_every_batchnorm_on_its_statistics_while_tuning_it():
    _params, backbone, [phase] = phases("full", **{"finetune.batchnorm": "pretrained"})
    apply_phase(backbone.model, phase)
    set_train_mode(backbone.model, "pretrained")
    assert not any(batchnorm_modes(backbone.model).values())
    assert all(p.requires_grad for p in backbone.model.parameters()) and backbone.model.training


def test_full_uses_a_lower_backbone_learning_rate():
    params, backbone, [phase] = phases("full", **{"train.lr": 0.01, "finetune.backbone_lr_mult": 0.1})
    groups = apply_phase(backbone.model, phase)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.001)]
    assert all(p.requires_grad for p in backbone.model.parameters())


def test_lp_ft_probes_then_tunes_everything_at_the_low_rate():
    params, backbone, (probe, tune) = phases("lp-ft", **{"train.lr": 0.01, "finetune.backbone_lr_mult": 0.1})
    assert probe.head_only and probe.epochs == params.finetune.head_epochs
    assert tune.trainable == ("body", "head") and tune.head_lr == tune.body_lr == pytest.approx(0.001)


def test_norm_trains_only_normalisation_layers_and_the_head_with_their_statistics():
    _params, backbone, [phase] = phases("norm")
    apply_phase(backbone.model, phase)
    set_train_mode(backbone.model, "frozen")
    trainable = {n for n, p in backbone.model.named_parameters() if p.requires_grad}
    batchnorms = {n for n, m in backbone.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert trainable == {f"{m}.{p}" for m in batchnorms for p in ("weight", "bias")} | {"head.weight", "head.bias"}
    assert all(batchnorm_modes(backbone.model).values())  # tuned layers re-estimate their statistics
    assert not any(m.training for m in backbone.model.modules() if isinstance(m, nn.Conv2d))


def test_trainable_counts_are_ordered_head_partial_full():
    counts = {}
    for strategy in set(STRATEGIES) - {"auto"}:  # auto's count depends on its data: test_block_choice
        _params, backbone, strategy_phases = phases(strategy)
        counts[strategy] = count_parameters(backbone.model, {name for p in strategy_phases for name in p.trainable})
    total = sum(p.numel() for p in backbone.model.parameters())
    assert counts["head"] == 512 * 3 + 3
    assert counts["head"] < counts["norm"] < counts["partial"] < counts["full"] == counts["lp-ft"] == total
    assert counts["norm"] == counts["head"] + 2 * 4800  # ResNet-18: 4,800 BatchNorm channels


def test_too_many_unfrozen_blocks_names_the_key():
    with pytest.raises(ConfigError, match=r"finetune.unfreeze_blocks: 9 .*\(allowed: 1..5\)"):
        phases("partial", **{"finetune.unfreeze_blocks": 9})
