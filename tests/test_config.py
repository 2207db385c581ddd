import pytest

from pipeline.config import (
    ConfigError,
    load_params,
    load_serving_config,
    parse_params,
    served_model_origin,
    set_param,
    with_verdict_strategy,
)
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
        ("serving.workers", 0),
    ],
)
def test_out_of_range_values_name_their_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_params(default_params(**{key: value}))


def test_serving_workers_null_is_derived_from_the_machine_and_model_workers_is_gone():
    from serving.workers import derived_workers, front_workers

    settings = load_serving_config(ROOT / "params.yaml", environ={})
    assert settings.workers is None and front_workers(settings) >= 1
    assert front_workers(load_serving_config(ROOT / "params.yaml", environ={"SERVING_WORKERS": "3"})) == 3
    cpus_and_gpus = [(2, 0), (64, 0), (16, 1), (64, 8)]
    assert [derived_workers(cpus, gpus) for cpus, gpus in cpus_and_gpus] == [1, 1, 8, 8]
    with pytest.raises(ConfigError, match="serving.model_workers"):
        parse_params(default_params(**{"serving.model_workers": 2}))


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
    one_lane = load_serving_config(ROOT / "params.yaml", environ={"SERVING_DECODE_QUICK_SECONDS": "null"})
    assert one_lane.decode_quick_seconds is None  # as params.yaml would spell it
    with pytest.raises(ConfigError, match=r"SERVING_MAX_BATCH_SIZE: .*greater than or equal to 1 \(got '0'\)"):
        load_serving_config(ROOT / "params.yaml", environ={"SERVING_MAX_BATCH_SIZE": "0"})
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text().replace("top_k: 3", "top_k: lots"))
    with pytest.raises(ConfigError, match=r"serving.top_k: Input should be a valid integer"):
        load_serving_config(params, environ={})


def test_the_quick_decode_lane_may_not_exceed_the_box_it_tries_first():
    with pytest.raises(
        ConfigError, match=r"serving.decode_quick_seconds is more than serving.decode_seconds \(6 > 5\)"
    ):
        parse_params(default_params(**{"serving.decode_quick_seconds": 6}))
    with pytest.raises(ConfigError, match=r"serving.decode_quick_memory_mb is more than serving.decode_memory_mb"):
        parse_params(default_params(**{"serving.decode_quick_memory_mb": 1024}))
    one_lane = parse_params(
        default_params(**{"serving.decode_quick_seconds": None, "serving.decode_quick_memory_mb": 1024})
    )
    assert one_lane.serving.decode_quick_seconds is None  # its memory is not read then


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.epochs", True, r"train\.epochs: Input should be a valid integer \(got True\)"),
        ("data.max_per_class", "300", r"data\.max_per_class: Input should be a valid integer \(got '300'\)"),
        ("train.lr", "0.003", r"train\.lr: Input should be a valid number \(got '0.003'\)"),
        ("train.deterministic", "yes", r"train\.deterministic: Input should be a valid boolean \(got 'yes'\)"),
        ("train.augment.hflip", 1, r"train\.augment\.hflip: Input should be a valid boolean \(got 1\)"),
        ("compare.seeds", [0, "1"], r"compare\.seeds\.1: Input should be a valid integer \(got '1'\)"),
        ("data.source", 42, r"data\.source: Input should be a valid string \(got 42\)"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_not_converted(key, value, message):
    """`epochs: true` trained 1 epoch and `max_per_class: '300'` passed as 300: YAML's types are kept as written."""
    with pytest.raises(ConfigError, match=message):
        parse_params(default_params(**{key: value}))


def test_an_integer_is_still_a_number_and_env_vars_are_still_text(tmp_path):
    assert parse_params(default_params(**{"train.lr": 1, "verdict.worth_it": 2})).train.lr == 1.0
    settings = load_serving_config(ROOT / "params.yaml", environ={"SERVING_TOP_K": "5", "SERVING_TENSORRT": "true"})
    assert (settings.top_k, settings.tensorrt) == (5, True)


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    first = text.splitlines().index("train:") + 1
    params = tmp_path / "params.yaml"
    params.write_text(text + "\ntrain:\n  epochs: 1\n")
    second = len(text.splitlines()) + 2
    with pytest.raises(ConfigError) as error:
        load_params(params)
    assert str(error.value) == (
        f"{params}:{second}:1: key 'train' is given twice in one mapping, at line {first} and line {second}; "
        "keep one (YAML would silently use the last)"
    )
    params.write_text("seed: 1\ncompare:\n  halving:\n    confidence: 0.9\n    first_epochs: 2\n    confidence: 0.8\n")
    with pytest.raises(ConfigError, match=r"params.yaml:6:5: key 'confidence' is given twice .* at line 4 and line 6"):
        load_params(params)


def test_a_bad_decoded_mode_names_the_key():
    with pytest.raises(ConfigError, match=r"data\.decoded: .*'memory', 'disk', 'shards' or 'auto' \(got 'ram'\)"):
        parse_params(default_params(**{"data.decoded": "ram"}))


def test_bad_shard_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"data\.decoded: .*'memory', 'disk', 'shards' or 'auto' \(got 'shard'\)"):
        parse_params(default_params(**{"data.decoded": "shard"}))
    with pytest.raises(ConfigError, match=r"data\.shards: .*at least 1 character"):
        parse_params(default_params(**{"data.shards": ""}))


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("compare.worth_it", -1.0, r"compare\.worth_it"),
        ("compare.halving.confidence", 1.0, r"compare\.halving\.confidence"),
        ("compare.halving.first_epochs", 0, r"compare\.halving\.first_epochs"),
        ("compare.halving.first_epochs", 7, r"compare\.halving\.first_epochs \(7\) is more than compare\.epochs"),
        ("compare.halving.first_train_per_class", 200, r"compare\.halving\.first_train_per_class \(200\)"),
        ("compare.halving.verdict_drop", 0.3, r"compare\.halving\.verdict_drop"),
        ("compare.halving.first_seeds", 0, r"compare\.halving\.first_seeds"),
    ],
)
def test_invalid_halving_settings_name_their_key(key, value, named):
    with pytest.raises(ConfigError, match=named):
        parse_params(default_params(**{"compare.method": "halving", key: value}))


def test_the_grid_ignores_the_halving_budget():
    parse_params(default_params(**{"compare.epochs": 1, "compare.train_per_class": 10}))  # first rung: 2 / 50


def test_an_unknown_method_lists_the_methods():
    with pytest.raises(ConfigError, match=r"compare\.method: Input should be 'grid' or 'halving'"):
        parse_params(default_params(**{"compare.method": "random"}))


def test_halving_needs_the_head_as_its_reference():
    raw = default_params(**{"compare.method": "halving", "compare.strategies": ["full", "lp-ft"]})
    with pytest.raises(ConfigError, match="compare.strategies must hold head and another strategy"):
        parse_params(raw)


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("seed: 42\ndata:\n  source: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{params}:4:1: .*"):
        load_params(params)


def test_a_param_that_would_not_validate_is_refused_and_the_file_left_alone(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    with pytest.raises(ConfigError, match="finetune.strategy: Input should be 'head', 'full'"):
        set_param("finetune.strategy", "bogus", params)
    with pytest.raises(ConfigError, match="finetune.nothing: unknown key; allowed keys here: strategy"):
        set_param("finetune.nothing", "1", params)
    assert params.read_text() == (ROOT / "params.yaml").read_text()


def test_strategy_verdict_trains_the_verdicts_answer_and_says_when_there_is_none(tmp_path):
    params = parse_params(default_params(**{"finetune.strategy": "verdict", "finetune.unfreeze_blocks": 2}))
    chosen_file = tmp_path / "strategy.json"
    with pytest.raises(ConfigError, match=r"strategy.json says: run `dvc repro verdict` first"):
        with_verdict_strategy(params, chosen_file)
    chosen_file.write_text('{"strategy": "partial", "unfreeze_blocks": 3, "decision": "fine-tune the last 3 blocks"}')
    resolved, chosen = with_verdict_strategy(params, chosen_file)
    assert (resolved.finetune.strategy, resolved.finetune.unfreeze_blocks) == ("partial", 3)
    assert chosen.decision == "fine-tune the last 3 blocks" and resolved.train == params.train
    chosen_file.write_text('{"strategy": "verdict", "unfreeze_blocks": null, "decision": "?"}')
    with pytest.raises(ConfigError, match="strategy.json is invalid"):
        with_verdict_strategy(params, chosen_file)
    other = parse_params(default_params(**{"finetune.strategy": "full"}))
    assert with_verdict_strategy(other, chosen_file) == (other, None)  # read only when asked for


def test_the_server_says_which_setting_named_its_model(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    assert served_model_origin(params, {}) == (
        f"the champion of the model named after data.source: data/builtin/animal-shape in {params}"
    )
    assert served_model_origin(params, {"SERVING_MODEL": "models:/x/1"}) == "from SERVING_MODEL"
    set_param("mlflow.registered_model", "mine", params)
    assert served_model_origin(params, {}) == f"the champion of mlflow.registered_model in {params}"
    set_param("serving.model", "models/model.onnx", params)
    assert served_model_origin(params, {}) == f"from serving.model in {params}"
