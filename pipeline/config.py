"""The one typed configuration of the pipeline, parsed from params.yaml.

Every stage calls `load_params()`; an unknown key, a missing one, a misspelled choice or an
out-of-range value stops the stage with a `ConfigError` that names the key and what is allowed.
This file holds the types and bounds; params.yaml holds every value and says what each key means,
so no default lives in two places.
"""

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, SequenceNode

from pipeline.atomic import atomic_path

PARAMS_FILE = Path("params.yaml")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataConfig(Strict):
    source: str = Field(min_length=1)
    max_per_class: int | None = Field(ge=1)
    val_fraction: float = Field(gt=0, lt=1)
    test_fraction: float = Field(gt=0, lt=1)
    max_image_pixels: int = Field(ge=1)
    decode_memory_mb: int = Field(ge=16)
    decode_seconds: float = Field(gt=0)
    decoded: Literal["memory", "disk", "shards", "auto"]
    shards: str = Field(min_length=1)

    @model_validator(mode="after")
    def _leave_training_data(self):
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must stay below 0.9")
        return self


class ModelConfig(Strict):
    backbone: str = Field(min_length=1)
    weights: str


Strategy = Literal["head", "full", "partial", "lp-ft", "norm", "bitfit", "lora", "auto"]


class LoraConfig(Strict):
    rank: int = Field(ge=1, le=256)
    alpha: float = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)
    # auto: every Linear of the body and its pointwise (1x1) convolutions; or module names / regexes (peft's
    # target_modules), e.g. [qkv, proj, fc1, fc2]
    targets: Literal["auto"] | list[str] = Field(min_length=1)


class FinetuneConfig(Strict):
    strategy: Literal[Strategy, "verdict"]  # verdict: what the verdict stage decided (with_verdict_strategy)
    head_epochs: int = Field(ge=1)
    unfreeze_blocks: int = Field(ge=1)
    auto_samples: int = Field(ge=8)
    auto_probe_enough: float = Field(gt=0, le=1)
    backbone_lr_mult: float = Field(gt=0, le=1)
    layer_decay: float | None = Field(gt=0, le=1)
    batchnorm: Literal["pretrained", "frozen", "train"]
    cache_features: bool
    lora: LoraConfig


class AugmentConfig(Strict):
    hflip: bool
    crop_scale_min: float = Field(gt=0, le=1)


class DistributedConfig(Strict):
    nproc_per_node: int = Field(ge=1)


class TrainConfig(Strict):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    image_size: int = Field(ge=16, le=1024)
    optimizer: Literal["adamw", "sgd"]
    lr: float = Field(gt=0, le=1)
    weight_decay: float = Field(ge=0)
    warmup_epochs: float = Field(ge=0)
    label_smoothing: float = Field(ge=0, lt=1)
    device: Literal["auto", "cpu", "cuda"]
    deterministic: bool
    compile: bool
    loader_workers: Literal["auto"] | Annotated[int, Field(ge=0)]
    augment: AugmentConfig
    distributed: DistributedConfig


class ExportConfig(Strict):
    parity_tolerance: float = Field(gt=0)
    opset: int = Field(ge=13)
    fp16: bool
    fp16_parity_tolerance: float = Field(gt=0)


class MlflowConfig(Strict):
    experiment: str | None = Field(min_length=1)
    registered_model: str | None = Field(min_length=1, pattern=r"^[\w.-]+$")


class ServingConfig(Strict):
    """Each key can be overridden by an env var SERVING_<KEY> (load_serving_config)."""

    model: str | None
    tensorrt: bool
    top_k: int = Field(ge=1)
    max_image_bytes: int = Field(ge=1)
    max_image_pixels: int = Field(ge=1)
    decode_memory_mb: int = Field(ge=16)
    decode_seconds: float = Field(gt=0)
    decode_quick_memory_mb: int = Field(ge=16)
    decode_quick_seconds: float | None = Field(gt=0)
    max_images_per_request: int = Field(ge=1)
    max_request_bytes: int = Field(ge=1)
    body_timeout_s: float = Field(gt=0)
    body_deadline_s: float = Field(gt=0)
    header_timeout_s: float = Field(gt=0)
    keep_alive_s: float = Field(gt=0)
    max_connections: int = Field(ge=1)
    image_formats: list[str] = Field(min_length=1)
    adaptive_batching: bool
    max_batch_size: int = Field(ge=1)
    max_latency_ms: int = Field(ge=1)
    workers: int | None = Field(ge=1)  # None: derived from the CPUs and GPUs (serving.workers)
    follow_registry_s: float | None = Field(gt=0)

    @model_validator(mode="after")
    def _quick_lane_within_the_box(self):
        if self.decode_quick_seconds is None:  # one lane: the quick limits are not read
            return self
        for quick, whole in (
            ("decode_quick_seconds", "decode_seconds"),
            ("decode_quick_memory_mb", "decode_memory_mb"),
        ):
            if getattr(self, quick) > getattr(self, whole):
                values = f"({getattr(self, quick):g} > {getattr(self, whole):g})"
                raise ValueError(
                    f"serving.{quick} is more than serving.{whole} {values}: the quick lane is a first try"
                )
        return self


class HalvingConfig(Strict):
    first_epochs: int = Field(ge=1)
    first_train_per_class: int = Field(ge=1)
    first_seeds: int = Field(ge=1)
    confidence: float = Field(gt=0.5, lt=1)
    verdict_drop: float = Field(gt=0.5, le=1)


class CompareConfig(Strict):
    method: Literal["grid", "halving"]
    strategies: list[Strategy] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    epochs: int = Field(ge=1)
    head_epochs: int = Field(ge=1)
    image_size: int = Field(ge=16, le=1024)
    train_per_class: int | None = Field(ge=1)
    random_init_probe: bool
    worth_it: float = Field(ge=0, le=100)
    halving: HalvingConfig

    @model_validator(mode="after")
    def _halving_starts_below_the_budget(self):
        # pydantic names only `compare` for a validator's error: the message names the keys itself
        if self.method != "halving":  # the grid reads none of compare.halving
            return self
        if self.halving.first_epochs > self.epochs:
            raise ValueError(
                f"compare.halving.first_epochs ({self.halving.first_epochs}) is more than "
                f"compare.epochs ({self.epochs})"
            )
        if self.train_per_class is not None and self.halving.first_train_per_class > self.train_per_class:
            raise ValueError(
                f"compare.halving.first_train_per_class ({self.halving.first_train_per_class}) is more than "
                f"compare.train_per_class ({self.train_per_class})"
            )
        if "head" not in self.strategies or len(set(self.strategies)) < 2:
            raise ValueError(
                "compare.strategies must hold head and another strategy when compare.method is halving: "
                "the head is its paired test's reference"
            )
        return self


class VerdictConfig(Strict):
    folds: int = Field(ge=2, le=20)
    knn_neighbors: int = Field(ge=1)
    worth_it: float = Field(ge=0, le=100)
    shift_threshold: float = Field(gt=0)
    gallery: int = Field(ge=1, le=100)


class Params(Strict):
    seed: int = Field(ge=0)
    data: DataConfig
    model: ModelConfig
    finetune: FinetuneConfig
    train: TrainConfig
    export: ExportConfig
    mlflow: MlflowConfig
    serving: ServingConfig
    compare: CompareConfig
    verdict: VerdictConfig

    def data_name(self) -> str:
        """The data folder's name, as MLflow allows names: `/home/me/My Photos/flowers 2024/` -> flowers-2024."""
        return re.sub(r"[^\w.-]+", "-", Path(self.data.source).name).strip("-.") or "data"

    def registered_model(self) -> str:
        """mlflow.registered_model, or `<data folder>-classifier`: one registered model per dataset, so a
        model of other classes never becomes a version of another's."""
        return self.mlflow.registered_model or f"{self.data_name()}-classifier"

    def experiment(self) -> str:
        """mlflow.experiment, or the data folder's name: one MLflow experiment per dataset, so that runs whose
        accuracies compare sit together."""
        return self.mlflow.experiment or self.data_name()


class ConfigError(ValueError):
    """params.yaml does not describe a valid run; the message names each bad key."""


class VerdictStrategy(Strict):
    """The verdict stage's answer as the finetune settings it sets (reports/verdict/strategy.json): only what
    training reads, so that a verdict rerun whose answer stands retrains nothing."""

    strategy: Strategy
    unfreeze_blocks: int | None = Field(ge=1)  # partial's
    decision: str  # in words: "the head is enough", "fine-tune the last 2 blocks"


def with_verdict_strategy(params: Params, chosen_file: Path) -> tuple[Params, VerdictStrategy | None]:
    """`params` with `finetune.strategy: verdict` replaced by the strategy the verdict stage wrote to
    `chosen_file`, and that answer; other strategies as they are, and None."""
    if params.finetune.strategy != "verdict":
        return params, None
    if not chosen_file.is_file():
        raise ConfigError(f"finetune.strategy: verdict trains what {chosen_file} says: run `dvc repro verdict` first")
    try:
        chosen = VerdictStrategy.model_validate_json(chosen_file.read_text())
    except ValidationError as exc:
        raise ConfigError(
            f"finetune.strategy: verdict: {chosen_file} is invalid ({exc}): run `dvc repro verdict`"
        ) from None
    blocks = {} if chosen.unfreeze_blocks is None else {"unfreeze_blocks": chosen.unfreeze_blocks}
    finetune = params.finetune.model_copy(update={"strategy": chosen.strategy, **blocks})
    return params.model_copy(update={"finetune": finetune}), chosen


def _describe(error: dict, model: type[BaseModel]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        parent = model
        for part in error["loc"][:-1]:
            parent = parent.model_fields[part].annotation
        message = f"unknown key; allowed keys here: {', '.join(parent.model_fields)}"
    return f"  {key}: {message} (got {error['input']!r})" if error["type"] != "missing" else f"  {key}: required"


def parse_params(raw: dict, origin: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e, Params) for e in exc.errors()]
        raise ConfigError(f"{origin} is invalid:\n" + "\n".join(lines)) from None


def with_overrides(raw: dict, overrides: Mapping[str, object]) -> dict:
    """`raw` params with `section.key` values replaced, as `dvc exp run -S section.key=value` would."""
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[key] = value
    return raw


def read_yaml(path: Path):
    """A YAML file as plain values (YAML 1.2, ruamel.yaml's safe loader). A key given twice in one mapping is
    refused, naming both lines, instead of the last one silently winning."""
    text = path.read_text()
    try:
        return YAML(typ="safe", pure=True).load(text)
    except DuplicateKeyError as exc:
        mark = exc.problem_mark
        key, first = first_of_duplicate(text, mark)
        raise ConfigError(
            f"{path}:{mark.line + 1}:{mark.column + 1}: key {key!r} is given twice in one mapping, at line "
            f"{first} and line {mark.line + 1}; keep one (YAML would silently use the last)"
        ) from None
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None


def first_of_duplicate(text: str, mark) -> tuple[str, int]:
    """The key repeated at `mark` and the line (1-based) where its mapping first gives it. ruamel.yaml's error
    marks the repeat and the start of the mapping, not the first one: the node tree (composed, never
    constructed, so duplicates pass) has every key's position."""
    pending = [YAML(typ="safe", pure=True).compose(text)]
    while pending:
        node = pending.pop()
        if isinstance(node, MappingNode):
            keys = [key for key, _ in node.value]
            repeat = next(
                (k for k in keys if (k.start_mark.line, k.start_mark.column) == (mark.line, mark.column)), None
            )
            if repeat is not None:
                first = next(k for k in keys if k.value == repeat.value)
                return repeat.value, first.start_mark.line + 1
            pending += [child for pair in node.value for child in pair]
        elif isinstance(node, SequenceNode):
            pending += node.value
    return "?", mark.line + 1


def write_yaml(path: Path, data) -> None:
    """Plain values as block-style YAML, keys in their order."""
    writer = YAML(typ="safe", pure=True)
    writer.default_flow_style = False
    with atomic_path(path) as partial, open(partial, "w") as f:
        writer.dump(data, f)


def load_params(path: Path = PARAMS_FILE) -> Params:
    if not path.is_file():
        raise ConfigError(f"{path} not found: run the stages from the project root")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of keys to values")
    return parse_params(raw, str(path))


def set_param(dotted: str, value: str | int, path: Path = PARAMS_FILE) -> None:
    """Set `section.key` in params.yaml in place, comments and layout kept (ruamel.yaml's round trip, as
    `dvc exp run -S` does); a value or key that does not validate is refused, naming the key."""
    round_trip = YAML()
    round_trip.representer.add_representer(  # `null` stays written out, not left blank
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    data = with_overrides(round_trip.load(path.read_text()), {dotted: value})
    parse_params(data, f"{path} with {dotted}={value}")
    with atomic_path(path) as partial, open(partial, "w") as f:
        round_trip.dump(data, f)


def served_model_origin(path: Path = PARAMS_FILE, environ: Mapping[str, str] = os.environ) -> str:
    """Which setting named the model load_serving_config serves, in words: a server that follows params.yaml
    serves another model after an experiment on other data, and should say so."""
    if "SERVING_MODEL" in environ:
        return "from SERVING_MODEL"
    params = load_params(path)
    if params.serving.model:
        return f"from serving.model in {path}"
    if params.mlflow.registered_model:
        return f"the champion of mlflow.registered_model in {path}"
    return f"the champion of the model named after data.source: {params.data.source} in {path}"


def load_serving_config(path: Path = PARAMS_FILE, environ: Mapping[str, str] = os.environ) -> ServingConfig:
    """params.yaml's `serving` section with SERVING_<KEY> env overrides; `model` always filled in."""
    params = load_params(path)
    settings = params.serving.model_dump()
    for key, value in settings.items():
        if f"SERVING_{key.upper()}" in environ:
            text = environ[f"SERVING_{key.upper()}"]
            settings[key] = None if text == "null" else text.split(",") if isinstance(value, list) else text
    settings["model"] = settings["model"] or f"models:/{params.registered_model()}@champion"
    try:
        return ServingConfig.model_validate(settings, strict=False)  # env vars are text: "false", "64"
    except ValidationError as exc:  # params.yaml itself is valid by now: the env vars are wrong
        lines = [f"  SERVING_{str(e['loc'][0]).upper()}: {e['msg']} (got {e['input']!r})" for e in exc.errors()]
        raise ConfigError("serving settings from the environment are invalid:\n" + "\n".join(lines)) from None
