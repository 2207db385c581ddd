"""The figures of each benchmark, typed: the script that measures them builds its result from these and writes it
(`Result.write`); docs/results.py reads it back into the same model (`Kind.read`). Each committed file of
benchmarks/results/ loads into the kind benchmarks/results/index.yaml gives it; a field that older runs lack is
optional. Light on purpose, as benchmarks/report.py: `make docs` reads results without the ML stack.

The derived figures here (ratios, spans) are the ones the benchmarks' goals are stated in, so the docs and the
scripts' printouts compute them once.
"""

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from benchmarks.report import Result

BACKBONE_NAMES = {"efficientnet_lite0": "EfficientNet-Lite0", "resnet18": "ResNet-18", "resnet50": "ResNet-50"}


class Figures(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Kind(Result):
    """A result of one benchmark: its environment and its typed figures, nothing else."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def span(values: list[float]) -> tuple[float, float]:
    return min(values), max(values)


class OfBackbone(Figures):
    backbone: str

    @property
    def backbone_name(self) -> str:
        return BACKBONE_NAMES.get(self.backbone, self.backbone)


# ---------------------------------------------------------------- benchmarks.training


class TrainingArgs(Figures):
    device: str
    backbones: str
    image_size: int
    images: int
    photo_size: int
    batch_size: int
    epochs: int
    baseline_workers: int
    head_backbone: str
    variants: str
    out: str

    @property
    def validation_images(self) -> int:
        return max(10, self.images // 4)  # as benchmarks/training.py makes the validation folder


class HeadOnly(Figures):
    """Seconds per epoch, training plus validation pass, of training the head alone."""

    backbone: str
    baseline_first_s: float
    baseline_later_s: float
    ours_decode_s: float  # decoding the files once, part of ours_first_s
    ours_first_s: float
    ours_later_s: float
    ours_uncached_later_s: float

    @property
    def later_speedup(self) -> float:
        return self.baseline_later_s / self.ours_later_s

    @property
    def first_epoch_ratio(self) -> float:
        return self.ours_first_s / self.baseline_first_s

    def ahead_from(self) -> tuple[int, float, float]:
        """The first epoch after which ours has taken less time in all than the baseline, and both totals."""
        epoch, ours, baseline = 1, self.ours_first_s, self.baseline_first_s
        if ours >= baseline and self.ours_later_s >= self.baseline_later_s:
            raise ValueError("head-only: the pipeline never catches up with the baseline")
        while ours >= baseline:
            epoch, ours, baseline = epoch + 1, ours + self.ours_later_s, baseline + self.baseline_later_s
        return epoch, ours, baseline


class Throughput(Figures):
    """Images/s of the loader alone, the training step alone, and the training pass of an epoch."""

    loader: float
    step: float
    workers: int | None = None  # the pipeline's loader workers
    epoch: float

    @property
    def serial(self) -> float:
        """The epoch rate if loading and stepping did not overlap at all."""
        return 1 / (1 / self.loader + 1 / self.step)


class VariantRow(OfBackbone):
    variant: str
    loader: float
    step: float
    epoch: float
    vs_baseline: float  # epoch rate over the baseline's


class BackboneThroughput(Figures):
    backbone: str
    baseline: Throughput
    ours: Throughput | None = None
    ours_compile: Throughput | None = Field(None, alias="ours+compile")
    ours_nondeterministic: Throughput | None = Field(None, alias="ours+nondeterministic")

    def variants(self) -> list[tuple[str, Throughput]]:
        """The variants measured, by their names in the file, the baseline first."""
        fields = type(self).model_fields
        measured = [(fields[key].alias or key, getattr(self, key)) for key in fields if key != "backbone"]
        return [(name, figures) for name, figures in measured if figures is not None]

    @property
    def gain(self) -> float:
        return self.ours.epoch / self.baseline.epoch


class TrainingResult(Kind):
    """benchmarks/training.py."""

    args: TrainingArgs
    head_only: HeadOnly | None = None  # None: --head-backbone ''
    full: list[BackboneThroughput]

    @field_validator("head_only", mode="before")
    @classmethod
    def _skipped_is_none(cls, value: object) -> object:
        return None if value == {} else value  # older runs wrote {} for a skipped measurement

    @property
    def by_backbone(self) -> dict[str, BackboneThroughput]:
        return {row.backbone: row for row in self.full}

    @property
    def variant_rows(self) -> list[VariantRow]:
        """One row per backbone and variant, the baseline first."""
        return [
            VariantRow(
                backbone=row.backbone,
                variant=name,
                **figures.model_dump(include={"loader", "step", "epoch"}),
                vs_baseline=figures.epoch / row.baseline.epoch,
            )
            for row in self.full
            for name, figures in row.variants()
        ]

    @property
    def loaders(self) -> tuple[float, float]:
        return span([side.loader for row in self.full for side in (row.baseline, row.ours)])

    @property
    def steps(self) -> tuple[float, float]:
        return span([side.step for row in self.full for side in (row.baseline, row.ours)])

    @property
    def gains(self) -> tuple[float, float]:
        return span([row.gain for row in self.full])


# ---------------------------------------------------------------- benchmarks.inference


class InferenceRow(OfBackbone):
    """Images/s, model-side, of one backbone at one batch size; None or absent: the provider did not load."""

    batch: int
    torch_fp32: float = Field(alias="torch fp32")
    torch_fp16: float | None = Field(None, alias="torch fp16 channels_last")
    ort_cpu_fp32: float | None = Field(None, alias="ort cpu fp32")
    ort_cpu_fp16: float | None = Field(None, alias="ort cpu fp16")
    ort_cuda_fp32: float | None = Field(None, alias="ort cuda fp32")
    ort_cuda_fp16: float | None = Field(None, alias="ort cuda fp16")
    ort_tensorrt_fp32: float | None = Field(None, alias="ort tensorrt fp32")
    ort_tensorrt_fp16: float | None = Field(None, alias="ort tensorrt fp16")

    @property
    def cpu_speedup(self) -> float:
        """ONNX Runtime on CPU against PyTorch eager, float32."""
        return self.ort_cpu_fp32 / self.torch_fp32

    @property
    def cuda_fp16_speedup(self) -> float:
        """ONNX Runtime CUDA against PyTorch channels_last, float16."""
        return self.ort_cuda_fp16 / self.torch_fp16


class InferenceResult(Kind):
    """benchmarks/inference.py."""

    not_loaded: dict[str, str] = {}  # provider: why it did not run, ONNX Runtime's words
    rows: list[InferenceRow]

    def row(self, backbone: str, batch: int) -> InferenceRow:
        for row in self.rows:
            if (row.backbone, row.batch) == (backbone, batch):
                return row
        raise ValueError(f"no row for {backbone} at batch {batch}")


# ---------------------------------------------------------------- benchmarks.data_scale


class ModeFigures(Figures):
    """One process of one `data.decoded` mode."""

    decode_s_per_image: float  # disk and shards: building the cache or the shards
    reopen_s: float | None = None  # disk and shards: opening them again, as a later run
    loader_cold_images_per_s: float | None = None  # disk: the cache evicted from the page cache
    loader_images_per_s: float
    train_images_per_s: float
    peak_rss_mib: float
    peak_private_mib: float
    peak_file_mapped_mib: float

    @property
    def decode_ms(self) -> float:
        return self.decode_s_per_image * 1e3

    @property
    def reopen_ms(self) -> float:
        return self.reopen_s * 1e3

    def over(self, other: "ModeFigures") -> dict[str, float]:
        """Each figure both measured, as a ratio of the other's."""
        theirs = other.model_dump(exclude_none=True)
        return {
            name: value / theirs[name] for name, value in self.model_dump(exclude_none=True).items() if name in theirs
        }


class TwoRanks(Figures):
    ranks: list[ModeFigures]

    @property
    def together_mib(self) -> float:
        """What the machine holds: each process's private pages, and the cache's mapped pages once."""
        return sum(rank.peak_private_mib for rank in self.ranks) + max(rank.peak_file_mapped_mib for rank in self.ranks)


class ScaleEntry(Figures):
    """One folder size, every mode measured on it."""

    images: int
    folder_written_s: float
    cache_bytes: int
    shards_bytes: int | None = None
    memory: ModeFigures | None = None
    disk: ModeFigures | None = None
    shards: ModeFigures | None = None
    two_ranks: TwoRanks | None = Field(None, alias="disk-2ranks")

    @property
    def shards_vs_memory(self) -> dict[str, float]:
        return self.shards.over(self.memory)

    @property
    def two_vs_one(self) -> float:
        return self.two_ranks.together_mib / self.disk.peak_rss_mib

    @property
    def two_in_memory_mib(self) -> float:
        return 2 * self.memory.peak_rss_mib  # a copy of the split each


class DataScaleArgs(OfBackbone):
    images: str  # comma-separated folder sizes
    image_size: int
    batch_size: int
    train_steps: int
    modes: str | None = None  # older runs: memory,disk
    out: str
    child: None = None  # the flags of the script's own child processes, null in a run's record
    manifest: None = None


class DataScaleResult(Kind):
    """benchmarks/data_scale.py."""

    args: DataScaleArgs
    results: list[ScaleEntry]

    @property
    def first(self) -> ScaleEntry:
        return self.results[0]

    @property
    def last(self) -> ScaleEntry:
        return self.results[-1]

    @property
    def cache_build_growth(self) -> float:
        """Cache build time per image, the largest folder against the smallest (goal: within 20%)."""
        return self.last.disk.decode_s_per_image / self.first.disk.decode_s_per_image

    @property
    def cache_memory_growth(self) -> float:
        return self.last.disk.peak_private_mib / self.first.disk.peak_private_mib

    @property
    def cached_loader_speed(self) -> tuple[float, float]:
        """The cached loader's rate over the in-memory one's, warm (goal: within 10%)."""
        return span([entry.disk.loader_images_per_s / entry.memory.loader_images_per_s for entry in self.results])


# ---------------------------------------------------------------- benchmarks.gpu_decode


OLD_CPU_KEY = r"cpu_\d+_threads_images_per_s"


class DecodeRow(Figures):
    photo_px: int
    images: int
    cpu_threads: int
    cpu_images_per_s: float  # Pillow on a pool of cpu_threads threads
    gpu_nvimgcodec_images_per_s: float
    pixel_mean_abs_difference: float
    pixel_max_abs_difference: int

    @model_validator(mode="before")
    @classmethod
    def _threads_out_of_the_name(cls, row: object) -> object:
        """Older runs named the CPU figure `cpu_<threads>_threads_images_per_s`."""
        old = [key for key in row if re.fullmatch(OLD_CPU_KEY, key)] if isinstance(row, dict) else []
        if not old:
            return row
        rest = {key: value for key, value in row.items() if key != old[0]}
        return rest | {"cpu_threads": int(old[0].split("_")[1]), "cpu_images_per_s": row[old[0]]}

    @property
    def gpu_speedup(self) -> float:
        return self.gpu_nvimgcodec_images_per_s / self.cpu_images_per_s


class DecodeResult(Kind):
    """benchmarks/gpu_decode.py."""

    rows: list[DecodeRow]


# ---------------------------------------------------------------- benchmarks.profile_training


class ProfileArgs(Figures):
    backbone: str
    strategy: str
    images: int
    image_size: int
    batch_size: int
    overrides: dict[str, str]  # params.yaml keys set with --set

    @property
    def overridden(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.overrides.items()) or "defaults"


class Operator(Figures):
    name: str  # cut by torch.profiler's table where long
    self_cpu_percent: float  # of all self time on the host
    self_cuda_percent: float  # of all self time on the device
    calls: int


class ByPrefix(dict):
    """Operators' shares by the start of their name, as templates index them (`{profile.cuda_share[aten::copy_]}`)."""

    def __missing__(self, prefix: str) -> float:
        found = [share for name, share in self.items() if name.startswith(prefix)]
        if not found:
            raise KeyError(f"no operator named {prefix!r}")
        return found[0]


class ProfileResult(Kind):
    """benchmarks/profile_training.py."""

    args: ProfileArgs
    images_per_second: list[int]  # of each epoch's training pass
    operators: list[Operator]

    @property
    def cpu_share(self) -> ByPrefix:
        return ByPrefix({operator.name: operator.self_cpu_percent for operator in self.operators})

    @property
    def cuda_share(self) -> ByPrefix:
        return ByPrefix({operator.name: operator.self_cuda_percent for operator in self.operators})


# ---------------------------------------------------------------- benchmarks.lora


class LoraArgs(Figures):
    backbone: str
    image_size: int
    batch_size: int
    steps: int
    warmup: int
    device: str


class ExportCost(Figures):
    merge_seconds: float  # merging the adapters into the weights
    export_seconds: float  # then the ONNX export with its parity check


class StrategySteps(Figures):
    """One strategy's training steps, in a process of its own."""

    strategy: str
    trainable_params: int
    step_seconds: float  # median of the measured steps
    peak_training_mib: float  # peak resident memory above the process's once the model was built
    export: ExportCost | None = None  # lora only


class LoraResult(Kind):
    """benchmarks/lora.py: its `full` row is the reference of the others."""

    args: LoraArgs
    rows: list[StrategySteps]

    @property
    def strategies(self) -> list["StrategyAgainstFull"]:
        full = next(row for row in self.rows if row.strategy == "full")
        return [StrategyAgainstFull(**row.model_dump(), full=full) for row in self.rows]

    @property
    def lora_strategy(self) -> StrategySteps:
        return next(row for row in self.rows if row.strategy == "lora")


class StrategyAgainstFull(StrategySteps):
    full: StrategySteps

    @property
    def params_share(self) -> float:
        return self.trainable_params / self.full.trainable_params

    @property
    def step_ratio(self) -> float:
        return self.step_seconds / self.full.step_seconds

    @property
    def memory_ratio(self) -> float:
        return self.peak_training_mib / self.full.peak_training_mib


# ---------------------------------------------------------------- the pipeline's metrics, and results curated by hand


class MakeBenchResult(Kind):
    """`make bench` timed as a whole."""

    wall_seconds: float


class SittingComparison(Figures):
    tag: str  # the comparison's name in the sitting
    data: str
    report: str  # its compare.json, from the project root
    lp_ft_epoch_seconds: list[float]  # its `lp-ft` fine-tuning epochs, the machine's speed at the time


class SittingResult(Kind):
    """Comparisons made one after another in one sitting (benchmarks/results/index.yaml says how)."""

    comparisons: dict[str, SittingComparison]


class PrepareMetrics(BaseModel):
    """The prepare stage's metrics/prepare.json; this part of them, as each of these models: the docs read them."""

    images: int
    classes: int
    skipped: int
    train_images: int
    val_images: int
    test_images: int


class ExportMetrics(BaseModel):
    parity_max_abs_diff: float  # ONNX Runtime against PyTorch on the test images
    onnx_test_accuracy: float


class TrainMetrics(BaseModel):
    best_val_accuracy: float
    best_epoch: int
    trainable_params: int
    total_params: int
    train_seconds: float | None = None  # not in the committed metrics/train.json: it differs every run


class ClassScores(BaseModel):
    precision: float
    recall: float


class EvaluateMetrics(BaseModel):
    accuracy: float
    macro_f1: float
    ece: float
    per_class: dict[str, ClassScores]


class PipelineRunResult(Kind):
    """The pipeline's stages run on another machine: its train and evaluate metrics."""

    strategy: str
    train_stage_wall_seconds: int
    train: TrainMetrics
    evaluate: EvaluateMetrics


class VerdictArgs(Figures):
    backbone: str
    image_size: int
    images: int  # train + val, scored
    batchnorm: bool  # whether the backbone has BatchNorm (then the verdict skips the per-block probes)


class VerdictPart(Figures):
    name: str
    seconds: float


class VerdictCostResult(Kind):
    """benchmarks/verdict.py: the scoring's parts, the per-block probes last."""

    args: VerdictArgs
    parts: list[VerdictPart]

    @property
    def with_block_probes(self) -> float:
        return sum(part.seconds for part in self.parts)

    @property
    def without_block_probes(self) -> float:
        return self.with_block_probes - self.parts[-1].seconds

    @property
    def speedup(self) -> float:
        return self.with_block_probes / self.without_block_probes


# ---------------------------------------------------------------- benchmarks.decode_box


class DecodeBoxArgs(Figures):
    workers: int  # decoder processes (and threads, in process) of the parallel figures: the cores
    rounds: int
    memory_mb: int  # the box the hostile files go through
    seconds: float


class DecodeCost(Figures):
    """One set of good files: CPU ms per image one at a time (the caller's and its decoders'), and wall-clock
    images/s with every core busy."""

    images: str
    count: int
    file_kb: float
    size: int
    in_process_ms: float
    boxed_ms: float
    in_process_per_s: float
    boxed_per_s: float

    @property
    def added_ms(self) -> float:
        return self.boxed_ms - self.in_process_ms

    @property
    def throughput_ratio(self) -> float:
        return self.boxed_per_s / self.in_process_per_s


class HostileDecode(Figures):
    name: str
    file_kb: float
    before_cpu_s: float  # decoded in process, as before the box
    before_peak_mb: float
    before: str
    boxed_s: float  # wall-clock seconds to the box's answer
    boxed: str


class DecodeBoxResult(Kind):
    """benchmarks/decode_box.py: the box's cost on good files, and the hostile files before and after."""

    args: DecodeBoxArgs
    sets: list[DecodeCost]
    hostile: list[HostileDecode]


# ---------------------------------------------------------------- benchmarks.under_attack


class UnderAttackArgs(Figures):
    hostile_clients: int
    seconds: float  # of attack, per mode
    goal_s: float  # the wait a good request must stay under


class UnderAttackMode(Figures):
    """One way of decoding under attack: the good requests' waits, what the hostile ones got, the memory."""

    mode: str
    good_requests: int
    good_p50_ms: float
    good_p99_ms: float
    good_max_ms: float
    good_over_goal: int
    good_errors: int
    hostile_statuses: dict[str, int]  # by status code (or the client's error)
    idle_mib: float
    peak_above_idle_mib: float

    @property
    def hostile_answers(self) -> str:
        return ", ".join(f"{count:,} x {status}" for status, count in sorted(self.hostile_statuses.items()))


class UnderAttackResult(Kind):
    """benchmarks/under_attack.py: a good request's wait under 8 hostile clients, one lane against two."""

    args: UnderAttackArgs
    modes: list[UnderAttackMode]


KINDS: dict[str, type[Kind]] = {
    "training": TrainingResult,
    "inference": InferenceResult,
    "data-scale": DataScaleResult,
    "gpu-decode": DecodeResult,
    "profile": ProfileResult,
    "lora": LoraResult,
    "make-bench": MakeBenchResult,
    "sitting": SittingResult,
    "pipeline-run": PipelineRunResult,
    "verdict-cost": VerdictCostResult,
    "decode-box": DecodeBoxResult,
    "under-attack": UnderAttackResult,
}
