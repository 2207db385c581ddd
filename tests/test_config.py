import pytest

from pipeline.config import ConfigError, load_params, parse_params
from tests.conftest import ROOT, default_params


def test_project_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.finetune.strategy in ("head", "full", "partial", "lp-ft")


def test_unknown_key_is_named_with_the_allowed_keys():
    raw = default_params()
    raw["finetune"]["stratgy"] = "head"
    with pytest.raises(ConfigError) as error:
        parse_params(raw)
    assert "finetune.stratgy: unknown key" in str(error.value)
    assert "strategy, head_epochs" in str(error.value)


def test_misspelled_strategy_lists_the_allowed_values():
    with pytest.raises(ConfigError) as error:
        parse_params(default_params(**{"finetune.strategy": "fulll"}))
    message = str(error.value)
    assert "finetune.strategy" in message and "'fulll'" in message
    for allowed in ("'head'", "'full'", "'partial'", "'lp-ft'"):
        assert allowed in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train.lr", 0),
        ("train.lr", 5.0),
        ("finetune.backbone_lr_mult", 2.0),
        ("data.val_fraction", 1.5),
        ("train.batch_size", 0),
        ("finetune.batchnorm", "sometimes"),
    ],
)
def test_out_of_range_values_name_their_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_params(default_params(**{key: value}))


def test_split_fractions_must_leave_training_data():
    with pytest.raises(ConfigError, match="val_fraction \\+ test_fraction"):
        parse_params(default_params(**{"data.val_fraction": 0.5, "data.test_fraction": 0.45}))


def test_missing_params_file_says_where_to_run(tmp_path):
    with pytest.raises(ConfigError, match="project root"):
        load_params(tmp_path / "params.yaml")
