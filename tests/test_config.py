import pytest

from pipeline.config import ConfigError, load_params, load_serving_config, parse_params
from tests.conftest import ROOT, default_params


def test_project_params_are_valid_and_every_key_is_there():
    params = load_params(ROOT / "params.yaml")
    assert params.model_dump(mode="json") == default_params()  # nothing filled in from elsewhere


def test_params_yaml_is_the_only_home_of_defaults():
    """The typed config has no default of its own to drift from params.yaml: a missing key is an error."""
    raw = default_params()
    del raw["train"]["lr"], raw["serving"]
    with pytest.raises(ConfigError) as error:
        parse_params(raw)
    assert "train.lr: required" in str(error.value) and "serving: required" in str(error.value)


def test_unknown_key_is_named_with_the_allowed_keys():
    raw = default_params()
    raw["finetune"]["stratgy"] = "head"
    with pytest.raises(ConfigError) as error:
        parse_params(raw)
    assert "finetune.stratgy: unknown key" in str(error.value)
    assert "strategy, head_epochs" in str(error.value)


def test_unknown_verdict_key_is_named_with_the_allowed_keys():
    raw = default_params()
    raw["verdict"]["fold"] = 5
    with pytest.raises(ConfigError, match=r"verdict\.fold: unknown key; allowed keys here: folds, knn_neighbors"):
        parse_params(raw)


def test_misspelled_strategy_lists_the_allowed_values():
    with pytest.raises(ConfigError) as error:
        parse_params(default_params(**{"finetune.strategy": "fulll"}))
    message = str(error.value)
    assert "finetune.strategy" in message and "'fulll'" in message
    for allowed in ("'head'", "'full'", "'partial'", "'lp-ft'", "'norm'", "'auto'"):
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
        ("verdict.folds", 1),
        ("verdict.worth_it", -1.0),
        ("verdict.shift_threshold", 0),
        ("verdict.gallery", 0),
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


def test_serving_defaults_to_the_champion_of_the_registered_model():
    settings = load_serving_config(ROOT / "params.yaml", environ={})
    assert settings.model == "models:/animal-shape-classifier@champion"


def test_the_registered_model_is_named_after_the_data_unless_params_name_it():
    def name(source, registered=None):
        return parse_params(default_params(**{"data.source": source, "mlflow.registered_model": registered}))

    assert name("data/builtin/digits").registered_model() == "digits-classifier"
    assert name("/home/me/My Photos/flowers 2024/").registered_model() == "flowers-2024-classifier"
    assert name("data/builtin/digits", "mnist-like").registered_model() == "mnist-like"
    with pytest.raises(ConfigError, match=r"mlflow.registered_model: String should match pattern"):
        name("data/builtin/digits", "a name/with slash")


def test_serving_env_vars_override_params_and_bad_ones_are_named(tmp_path):
    settings = load_serving_config(
        ROOT / "params.yaml", environ={"SERVING_MODEL": "models/model.onnx", "SERVING_ADAPTIVE_BATCHING": "false"}
    )
    assert (settings.model, settings.adaptive_batching) == ("models/model.onnx", False)
    with pytest.raises(ConfigError, match=r"SERVING_MAX_BATCH_SIZE: .*greater than or equal to 1 \(got '0'\)"):
        load_serving_config(ROOT / "params.yaml", environ={"SERVING_MAX_BATCH_SIZE": "0"})
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text().replace("top_k: 3", "top_k: lots"))
    with pytest.raises(ConfigError, match=r"serving.top_k: Input should be a valid integer"):
        load_serving_config(params, environ={})
