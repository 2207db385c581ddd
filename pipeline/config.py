"""The one typed configuration of the pipeline, parsed from params.yaml.

Every stage calls `load_params()`; an unknown key, a misspelled choice or an out-of-range
value stops the stage with a `ConfigError` that names the key and what is allowed.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = Path("params.yaml")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Strict):
    source: str = Field(min_length=1)  # a folder with one sub-folder of images per class
    max_per_class: int | None = Field(default=None, ge=1)  # seeded cap; None keeps every image
    val_fraction: float = Field(default=0.15, gt=0, lt=1)
    test_fraction: float = Field(default=0.15, gt=0, lt=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1)  # refuse decompression bombs

    @model_validator(mode="after")
    def _leave_training_data(self):
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must stay below 0.9")
        return self


class ModelConfig(Strict):
    backbone: str = Field(min_length=1)
    # DEFAULT, a torchvision weights enum name, a local checkpoint path, or none (random init)
    weights: str = "DEFAULT"


Strategy = Literal["head", "full", "partial", "lp-ft", "norm", "auto"]


class FinetuneConfig(Strict):
    strategy: Strategy = "partial"
    head_epochs: int = Field(default=20, ge=1)  # epochs of head-only training (head, lp-ft)
    unfreeze_blocks: int = Field(default=2, ge=1)  # partial: how many of the last blocks train; auto: at most
    auto_samples: int = Field(default=256, ge=8)  # auto: images the probe fits, and as many it is scored on
    auto_probe_enough: float = Field(default=0.98, gt=0, le=1)  # auto: probe accuracy at which the head suffices
    backbone_lr_mult: float = Field(default=0.1, gt=0, le=1)
    # pretrained: every BatchNorm keeps its statistics (its scale and shift still train where tuned);
    # frozen: frozen parts keep theirs, tuned ones re-estimate them; train: all re-estimate
    batchnorm: Literal["pretrained", "frozen", "train"] = "pretrained"
    cache_features: bool = True  # head-only phases train on features computed once


class AugmentConfig(Strict):
    hflip: bool = True
    crop_scale_min: float = Field(default=0.7, gt=0, le=1)  # RandomResizedCrop; 1 disables


class DistributedConfig(Strict):
    """dvc.yaml runs `torchrun --standalone --nproc_per_node N -m pipeline.train` (pipeline/distributed.py)."""

    nproc_per_node: int = Field(default=1, ge=1)  # processes on this machine: one per GPU, or gloo on CPU


class TrainConfig(Strict):
    epochs: int = Field(default=6, ge=1)
    batch_size: int = Field(default=32, ge=1)
    image_size: int = Field(default=96, ge=16, le=1024)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(default=3e-3, gt=0, le=1)
    weight_decay: float = Field(default=1e-4, ge=0)
    warmup_epochs: float = Field(default=0.5, ge=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = True  # deterministic kernels where torch has them: reproducible, a little slower on GPUs
    compile: bool = False  # torch.compile the network for image phases: pays on long GPU runs, not short ones
    # DataLoader processes that augment batches; auto: 0 on CPU (they would take the step's cores), up to 8 on CUDA
    loader_workers: Literal["auto"] | Annotated[int, Field(ge=0)] = "auto"
    augment: AugmentConfig = AugmentConfig()
    distributed: DistributedConfig = DistributedConfig()


class ExportConfig(Strict):
    parity_tolerance: float = Field(default=1e-4, gt=0)
    opset: int = Field(default=18, ge=13)
    fp16: bool = False  # float16 weights and arithmetic inside the graph (float32 in and out): for GPUs
    fp16_parity_tolerance: float = Field(default=1e-2, gt=0)  # used instead of parity_tolerance when fp16


class MlflowConfig(Strict):
    experiment: str = Field(default="transfer-learning", min_length=1)
    registered_model: str = Field(default="image-classifier", min_length=1)


class ServingConfig(Strict):
    """The HTTP service's settings; each can be overridden by an env var SERVING_<KEY> (e.g. SERVING_MODEL)."""

    # models:/NAME@ALIAS, models:/NAME/VERSION or a path to an .onnx file exported by the pipeline;
    # None serves models:/<mlflow.registered_model>@champion
    model: str | None = None
    tensorrt: bool = False  # try ONNX Runtime's TensorRT provider before CUDA
    top_k: int = Field(default=3, ge=1)  # classes returned when a request does not say
    max_image_bytes: int = Field(default=10_000_000, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_images_per_request: int = Field(default=64, ge=1)
    max_request_bytes: int = Field(default=100_000_000, ge=1)  # refused before the body is read
    adaptive_batching: bool = True  # merge concurrent requests into one model call
    max_batch_size: int = Field(default=64, ge=1)
    max_latency_ms: int = Field(default=20_000, ge=1)  # batches that would wait longer are refused with 503


class CompareConfig(Strict):
    """The budget of `make compare` (pipeline/compare.py), the same for every strategy and seed."""

    strategies: list[Strategy] = Field(default=["head", "norm", "partial", "auto", "full", "lp-ft"], min_length=1)
    seeds: list[int] = Field(default=[0, 1, 2], min_length=1)
    epochs: int = Field(default=6, ge=1)
    head_epochs: int = Field(default=10, ge=1)
    image_size: int = Field(default=64, ge=16, le=1024)
    train_per_class: int | None = Field(default=100, ge=1)  # seeded subset of the train split; null: all
    random_init_probe: bool = True  # also probe random-init features: what pretraining brings


class Params(Strict):
    seed: int = Field(default=42, ge=0)
    data: DataConfig
    model: ModelConfig
    finetune: FinetuneConfig = FinetuneConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    mlflow: MlflowConfig = MlflowConfig()
    serving: ServingConfig = ServingConfig()
    compare: CompareConfig = CompareConfig()


class ConfigError(ValueError):
    """params.yaml does not describe a valid run; the message names each bad key."""


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


def load_params(path: Path = PARAMS_FILE) -> Params:
    if not path.is_file():
        raise ConfigError(f"{path} not found: run the stages from the project root")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of keys to values")
    return parse_params(raw, str(path))


def load_serving_config(path: Path = PARAMS_FILE, environ: Mapping[str, str] = os.environ) -> ServingConfig:
    """params.yaml's `serving` section with SERVING_<KEY> env overrides; `model` always filled in."""
    params = load_params(path)
    settings = params.serving.model_dump()
    settings.update({key: environ[f"SERVING_{key.upper()}"] for key in settings if f"SERVING_{key.upper()}" in environ})
    settings["model"] = settings["model"] or f"models:/{params.mlflow.registered_model}@champion"
    try:
        return ServingConfig.model_validate(settings)
    except ValidationError as exc:  # params.yaml itself is valid by now: the env vars are wrong
        lines = [f"  SERVING_{str(e['loc'][0]).upper()}: {e['msg']} (got {e['input']!r})" for e in exc.errors()]
        raise ConfigError("serving settings from the environment are invalid:\n" + "\n".join(lines)) from None
