"""The generated blocks of BENCHMARKS.md, and what they share with docs/results.py: reading the result files
(typed: benchmarks/figures.py, pipeline.choice.compare_report) and formatting figures.

benchmarks/results/index.yaml describes each block. Most are templates: `files` names the results a block reads
(each loaded into the kind its folder's entry gives it) and `parts` are its paragraphs (`text`), lists
(`bullets`) and tables (`table`: where its rows are, `columns`: each header and the template of its cells). A
template is a Python format string over the typed results (`{run.args.image_size}`, `{run.first.images:,}`),
`{file[run]}` a result's path, a table row's fields by their own names (`{epoch:,.0f}`); a list is written as
its items in the field's format. The blocks with logic of their own (goals met or not, files set against each
other) name a renderer here (`render`, default: the block's name) and its parameters.
"""

import json
import re
import statistics
import string
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict
from ruamel.yaml import YAML

from benchmarks.figures import (
    KINDS,
    EvaluateMetrics,
    InferenceResult,
    MakeBenchResult,
    PipelineRunResult,
    SittingResult,
    TrainingResult,
    TrainMetrics,
)
from benchmarks.report import Result
from pipeline.choice.compare_report import CompareReport

R = TypeVar("R", bound=Result)
M = TypeVar("M", bound=BaseModel)


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Text(Record):
    text: str


class Bullets(Record):
    bullets: list[str]


class Table(Record):
    table: str | list[str]  # the list of rows in the block's files, or several, one after the other
    columns: dict[str, str]  # header: the template of its cells


class Template(Record):
    files: dict[str, Path]  # name: result file, from the project root
    parts: list[Text | Bullets | Table]


class Folder(Record):
    what: str
    how: str | None = None
    files: dict[str, str] = {}  # a typed result's file name: its kind (benchmarks/figures.py KINDS)


# ---------------------------------------------------------------- reading and formatting


def read_result(root: Path, path: Path, kind: type[R] = Result) -> R:
    return kind.read(root / path)


def declared(root: Path, folders: dict[str, Folder], path: Path) -> Result:
    """`path` read as the kind its folder's entry in the index gives it."""
    kind = folders[path.parent.name].files.get(path.name) if path.parent.name in folders else None
    if kind not in KINDS:
        raise ValueError(f"{path}: its folder's entry gives it no kind of {sorted(KINDS)} (`files`)")
    return read_result(root, path, KINDS[kind])


def report(root: Path, path: Path) -> CompareReport:
    try:
        return CompareReport.read(root / path)
    except (OSError, ValueError) as error:
        raise SystemExit(f"{path}: not a comparison report: {error}") from None


def results_machine(root: Path) -> str:
    """The machine the committed default run was made on, as the fresh-clone check of .ci/run compares it."""
    return (root / ".ci" / "results-machine").read_text().strip()


def read_metrics(root: Path, name: str, kind: type[M]) -> M:
    """metrics/NAME.json, one of the pipeline's metrics files (the stages write them untyped)."""
    try:
        return kind.model_validate(json.loads((root / "metrics" / f"{name}.json").read_text(encoding="utf-8")))
    except (OSError, ValueError) as error:
        raise SystemExit(f"metrics/{name}.json: {error}") from None


def count(value: float) -> str:
    return f"{value:,.0f}"


def fixed(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def times(value: float, digits: int = 2) -> str:
    return f"x{value:.{digits}f}"


def table(header: str | list[str], rows: list[list[str]]) -> str:
    """A Markdown table; `header` a list of cells, or one string of them joined by ' | '."""
    cells = header.split(" | ") if isinstance(header, str) else header
    lines = ["| " + " | ".join(cells) + " |", "|" + "---|" * len(cells)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def code(path: Path | str) -> str:
    return f"`{Path(path).as_posix()}`"


def recommended_strategy(compared: CompareReport) -> str:
    """The strategy of a report's first recommendation line (**Use `name`**)."""
    match = re.search(r"\*\*Use `([^`]+)`\*\*", compared.recommendation[0])
    if match is None:
        raise SystemExit(f"a report recommends no strategy: {compared.recommendation[0]!r}")
    return match[1]


# ---------------------------------------------------------------- template blocks


class Scope(dict):
    """A template's names: the block's results and `file`, then the fields of the table row it fills."""

    def __init__(self, names: dict, row: object = None):
        super().__init__(names)
        self.row = row

    def __missing__(self, name: str) -> object:
        if self.row is None:
            raise KeyError(name)
        return getattr(self.row, name)


class Figures(string.Formatter):
    """str.format, with a list written as its items in the field's format, joined by commas."""

    def format_field(self, value: object, spec: str) -> str:
        if isinstance(value, list):
            return ", ".join(format(item, spec) for item in value)
        return format(value, spec)

    def fill(self, template: str, scope: Scope) -> str:
        try:
            return self.vformat(template, (), scope)
        except (AttributeError, LookupError, TypeError, ValueError) as error:
            raise ValueError(f"{template!r}: {error}") from None

    def rows(self, where: str | list[str], scope: Scope) -> list:
        """The rows of a table: each list `where` names, one after the other."""
        rows = []
        for path in [where] if isinstance(where, str) else where:
            try:
                listed = self.get_field(path, (), scope)[0]
            except (AttributeError, LookupError) as error:
                raise ValueError(f"table {path!r}: {error}") from None
            if not isinstance(listed, list):
                raise ValueError(f"table {path!r}: not a list of rows")
            rows += listed
        return rows


def render_template(root: Path, folders: dict[str, Folder], block: Template) -> str:
    """A template block: its parts, each filled from the block's results, a blank line between them."""
    results = {name: declared(root, folders, path) for name, path in block.files.items()}
    scope = Scope(results | {"file": {name: code(path) for name, path in block.files.items()}})
    figures, parts = Figures(), []
    for part in block.parts:
        if isinstance(part, Text):
            parts.append(figures.fill(part.text, scope))
        elif isinstance(part, Bullets):
            parts.append("\n".join(f"- {figures.fill(line, scope)}" for line in part.bullets))
        else:
            cells = [[figures.fill(cell, Scope(scope, row)) for cell in part.columns.values()]
                     for row in figures.rows(part.table, scope)]  # fmt: skip
            parts.append(table(list(part.columns), cells))
    return "\n\n".join(parts)


# ---------------------------------------------------------------- blocks with logic of their own


ON_CPU = ("efficientnet_lite0", "resnet18")  # the backbones of the CPU inference goal


def verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def goals(root: Path, cpu_training: Path, gpu_training: Path, cpu_inference: Path, gpu_inference: Path, bench: Path):
    cpu, gpu = (read_result(root, path, TrainingResult) for path in (cpu_training, gpu_training))
    head = [cpu.head_only.later_speedup, gpu.head_only.later_speedup]
    inference = read_result(root, cpu_inference, InferenceResult)
    speedup = {(name, batch): inference.row(name, batch).cpu_speedup for name in ON_CPU for batch in (1, 32)}
    resnet50 = gpu.by_backbone["resnet50"]
    default, compiled, baseline = resnet50.ours.epoch, resnet50.ours_compile.epoch, resnet50.baseline.epoch
    fp16 = read_result(root, gpu_inference, InferenceResult).row("resnet18", 64)
    total = read_result(root, bench, MakeBenchResult).wall_seconds
    lite0, resnet18 = (f"{times(speedup[name, 1])} / {times(speedup[name, 32])}" for name in ON_CPU)
    rows = [
        ["head-only, later epochs >= 20x faster than the baseline", f"CPU {times(head[0], 0)}, H200 "
         f"{times(head[1], 0)}", verdict(min(head) >= 20)],
        ["ONNX Runtime >= 1.5x PyTorch eager on CPU, batch 1 and 32", f"Lite0 {lite0}, ResNet-18 {resnet18}",
         verdict(min(speedup.values()) >= 1.5)],
        ["ResNet-50, 224 px, full fine-tuning >= 2,500 img/s on one H100", f"H200: {count(default)} (defaults), "
         f"{count(compiled)} with `train.compile`", verdict(default >= 2500) + " on an H200 (not run on an H100)"],
        [">= 1.3x the baseline on the same GPU", f"H200: {times(default / baseline)} (defaults), "
         f"{times(compiled / baseline)} with `train.compile`", verdict(default / baseline >= 1.3)],
        ["ResNet-18 fp16 ONNX >= 3,000 img/s model-side at batch 64", f"H200, ONNX Runtime CUDA: "
         f"{count(fp16.ort_cuda_fp16)} img/s (PyTorch fp16: {count(fp16.torch_fp16)})",
         verdict(fp16.ort_cuda_fp16 >= 3000)],
        ["`make bench` < 15 min on CPU", f"{count(total)} s", verdict(total < 15 * 60)],
    ]  # fmt: skip
    return table(["goal (issue 5)", "measured", ""], rows)


def head_only(root: Path, cpu: Path, gpu: Path, gpu_run1: Path) -> str:
    rows = []
    for label, path in (("CPU", cpu), ("H200", gpu)):
        run = read_result(root, path, TrainingResult)
        args, head = run.args, run.head_only
        rows.append(
            [f"{label}, {count(args.images)} + {count(args.validation_images)} images, {args.image_size} px, batch "
             f"{args.batch_size}", f"{fixed(head.baseline_first_s, 2)} s", f"{fixed(head.baseline_later_s, 2)} s",
             f"{fixed(head.ours_first_s, 2)} s ({fixed(head.ours_decode_s, 2)})", f"{fixed(head.ours_later_s, 3)} s",
             f"{fixed(head.ours_uncached_later_s, 2)} s", f"**{times(head.later_speedup, 0)}**"]
        )  # fmt: skip
    epoch, ours_total, baseline_total = head.ahead_from()
    run1 = read_result(root, gpu_run1, TrainingResult).head_only
    header = "machine, size | baseline first | baseline later | ours first (of it decoding) | ours later"
    return (
        table(header + " | later, without the cache | later: baseline / ours", rows)
        + f"\n\n- H200, first epoch: ours {times(head.first_epoch_ratio, 1)} the baseline's time, "
        f"{fixed(head.ours_decode_s, 2)} s of it decoding {count(args.images + args.validation_images)} JPEGs once "
        f"({fixed(run1.ours_decode_s, 2)} s in run 1, before `load_split` decoded on a thread pool).\n"
        f"- H200, time since the start: ours is ahead of the baseline from epoch {epoch} on "
        f"({fixed(ours_total, 2)} s against {fixed(baseline_total, 2)} s)."
    )


def gpu_inference(root: Path, inference: Path) -> str:
    measured = read_result(root, inference, InferenceResult)
    rows = [
        [row.backbone_name, str(row.batch),
         *map(count, (row.torch_fp32, row.torch_fp16, row.ort_cuda_fp32, row.ort_cuda_fp16)),
         times(row.cuda_fp16_speedup)]
        for row in measured.rows
    ]  # fmt: skip
    header = "backbone | batch | PyTorch fp32 | PyTorch fp16, channels_last | ORT CUDA fp32 | ORT CUDA fp16"
    resnet50 = [row for row in measured.rows if row.backbone == "resnet50" and row.batch >= 32]
    best = max(resnet50, key=lambda row: row.ort_cuda_fp16)
    tensorrt = "did not load" if "TensorrtExecutionProvider" in measured.not_loaded else "loaded"
    by_batch = ", ".join(f"{count(row.ort_cuda_fp16)} at batch {row.batch}" for row in resnet50)
    env = measured.environment
    return (
        table(header + " | ORT fp16 / PyTorch fp16", rows)
        + f"\n\nResNet-50 fp16 through ONNX Runtime: {count(best.ort_cuda_fp16)} img/s at batch {best.batch} "
        f"(issue 16's goal: >= 10,000; {by_batch}). TensorRT provider: {tensorrt}. From {code(inference)} "
        f"(`{env.command}`, {env.machine}, {env.software})."
    )


class ServedRun(Record):
    file: Path
    note: str = ""


class ServedComparison(Record):
    exhaustive_w1: Path
    exhaustive_w8: Path
    w1: Path
    w8: Path
    batch16: Path
    batching_off: Path


def gpu_served(root: Path, runs: list[ServedRun], compared: ServedComparison) -> str:
    rows = []
    for run in runs:
        figures = read_result(root, run.file).figures
        ((mode_name, mode),) = figures["modes"].items()
        per_call = mode.get("requests_per_call", mode["batch"]) * figures["images_per_request"]
        agreement = figures["gpu_cpu_top1_agreement"]
        rows.append(
            [f"`{run.file.name}`" + (f" ({run.note})" if run.note else ""),
             f"{figures['workers']} / {figures['clients']} / {figures['images_per_request']}", f"{mode['requests']:,}",
             str(mode["errors"]), fixed(mode["throughput"], 1), count(mode["images_per_s"]),
             f"{count(mode['p50_ms'])} / {count(mode['p99_ms'])}",
             fixed(per_call, 1) if mode_name.endswith("on") else "1 (off)", f"{agreement[0]}/{agreement[1]}"]
        )  # fmt: skip
    header = "run | front workers / clients / images a request | requests | errors | req/s | images/s | p50 / p99 ms"

    def mode(path: Path) -> dict:
        return next(iter(read_result(root, path).figures["modes"].values()))

    first = read_result(root, compared.w8)
    parts = first.figures["where_the_time_goes"]
    w1, w8, batch16, off = (mode(path) for path in (compared.w1, compared.w8, compared.batch16, compared.batching_off))
    old_w1, old_w8 = mode(compared.exhaustive_w1), mode(compared.exhaustive_w8)
    return (
        table(header + " | images a model call | CUDA = CPU top-1", rows)
        + f"\n\nEach run {first.figures['seconds']} s after {first.figures['warmup_seconds']} s of warm-up, adaptive "
        f"batching on unless said, model `{first.figures['model']}` on {', '.join(first.figures['providers'])}, "
        f"{first.environment.machine}. Files in `{runs[0].file.parent.as_posix()}/`.\n\n"
        "- cuDNN's heuristic against its exhaustive search (run 2 / run 1): requests a second "
        f"{times(w1['throughput'] / old_w1['throughput'])} with one front worker, "
        f"{times(w8['throughput'] / old_w8['throughput'])} with eight. Eight front workers against one (run 2): "
        f"{times(w8['throughput'] / w1['throughput'])}.\n"
        f"- One model worker's calls a second: {fixed(w8['throughput'], 1)} of one image each (merged into batches "
        f"of {fixed(w8['batch'], 1)}), {fixed(batch16['throughput'], 1)} of 16 images each "
        f"({count(batch16['images_per_s'])} images/s), {fixed(off['throughput'], 1)} with batching off.\n"
        "- The served path's parts measured alone (run 2, eight workers): decode + resize "
        f"{fixed(parts['decode_ms_per_image'], 2)} ms an image on one core; the model "
        f"{count(parts['model_images_per_s'])} images/s at batch {parts['model_batch']}, "
        f"{times(parts['model_images_per_s'] / batch16['images_per_s'], 1)} the best served images/s."
    )


def committed_strategy(root: Path) -> str:
    """The strategy the committed default run trained with, as dvc.lock records its params."""
    lock = YAML(typ="safe").load(root / "dvc.lock")
    try:
        return lock["stages"]["train"]["params"]["params.yaml"]["finetune"]["strategy"]
    except (KeyError, TypeError):
        raise SystemExit("dvc.lock: no finetune.strategy among the train stage's params") from None


def default_gpu(root: Path, gpu_run: Path) -> str:
    """The committed default run beside the H200 run, with what differs between them besides the machine."""
    gpu = read_result(root, gpu_run, PipelineRunResult)
    metrics = read_metrics(root, "train", TrainMetrics), read_metrics(root, "evaluate", EvaluateMetrics)
    runs = [
        ("the committed default run, `metrics/`", results_machine(root), committed_strategy(root), None, *metrics),
        (code(gpu_run), gpu.environment.machine, gpu.strategy, gpu.train_stage_wall_seconds, gpu.train, gpu.evaluate),
    ]
    rows = [
        [label, machine, f"`{strategy}`", f"{wall} s" if wall else "not recorded",
         "in MLflow" if train.train_seconds is None else fixed(train.train_seconds, 1),
         f"{fixed(train.best_val_accuracy, 4)} (epoch {train.best_epoch})", fixed(evaluate.accuracy, 4),
         fixed(evaluate.macro_f1, 4), fixed(evaluate.ece, 4)]
        for label, machine, strategy, wall, train, evaluate in runs
    ]  # fmt: skip
    header = "run | machine | strategy | train stage wall | train_seconds | best val accuracy | test accuracy"
    committed, on_gpu = runs[0][2], runs[1][2]
    differs = (
        f"The two runs trained different strategies (`{committed}` and `{on_gpu}`), so they differ by more than "
        "the machine: their accuracies and training times do not measure what the GPU changes."
        if committed != on_gpu
        else f"Both runs trained `{committed}`."
    )
    return table(header + " | macro-F1 | ECE", rows) + "\n\n" + differs


def load_test(root: Path, load_test: Path) -> str:
    measured = read_result(root, load_test)
    figures, env = measured.figures, measured.environment
    rows = [
        [name, count(mode["requests"]), str(mode["errors"]), fixed(mode["throughput"], 1), count(mode["p50_ms"])]
        + [count(mode["p99_ms"]), fixed(mode["batch"], 1)]
        for name, mode in figures["modes"].items()
    ]
    on, off = figures["modes"]["adaptive batching on"], figures["modes"]["adaptive batching off"]
    header = f"mode | requests in {figures['seconds']} s | errors | req/s | p50 ms | p99 ms | mean batch"
    return (
        f"**{env.date}, {env.machine}; {', '.join(figures['providers'])}.** Model: {figures['model']}. "
        f"{figures['clients']} concurrent clients, {figures['seconds']} s per mode after {figures['warmup_seconds']} "
        "s of warm-up; the clients run on the same machine as the server.\n\n"
        + table(header, rows)
        + f"\n\nOn/off: throughput {times(on['throughput'] / off['throughput'])}, p99 latency "
        f"{times(on['p99_ms'] / off['p99_ms'])}. From {code(load_test)} (`{env.command}`)."
    )


def memory_by_role(sample: dict) -> dict[str, float]:
    """A timeline sample's MiB by process role ("worker 123" and "worker 456" summed as "worker"): the decoder
    processes are replaced under hostile traffic, so their pids differ from sample to sample."""
    roles: dict[str, float] = {}
    for key, mib in sample.items():
        if key not in ("t_s", "total_mib"):
            role = key.rsplit(" ", 1)[0]
            roles[role] = roles.get(role, 0) + mib
    return roles


def soak(root: Path, soak: Path) -> str:
    measured = read_result(root, soak)
    memory, run = measured.figures["memory_attack"], measured.figures["soak"]
    timeline = run["memory_timeline"]
    warm = next(sample for sample in timeline if sample["t_s"] >= 240)  # after the first minutes' warm-up
    figures = [
        ["good requests", count(run["good_requests"])],
        ["bad requests", count(run["bad_requests"])],
        ["5xx answers", str(run["server_errors_5xx"])],
        ["wrong labels", str(run["wrong_labels"])],
        ["errors of any kind (5xx, a good request refused, a bad one accepted)", str(run["errors"])],
        ["p50 / p99 of good requests", f"{count(run['p50_ms'])} / {count(run['p99_ms'])} ms"],
        ["server memory, start / end", f"{count(run['memory_start_mib'])} / {count(run['memory_end_mib'])} MiB"],
        [f"server memory, at {warm['t_s']} s / end: growth after warm-up", f"{count(warm['total_mib'])} / "
         f"{count(timeline[-1]['total_mib'])} MiB: {count(timeline[-1]['total_mib'] - warm['total_mib'])} MiB"],
    ]  # fmt: skip
    samples = [sample for sample in timeline if sample["t_s"] <= warm["t_s"]] + [timeline[-1]]
    by_role = [memory_by_role(sample) for sample in samples]
    roles = list(dict.fromkeys(role for sample in by_role for role in sample))
    memory_rows = [
        [f"{s['t_s']}", *(count(roles_of.get(role, 0)) for role in roles), count(s["total_mib"])]
        for s, roles_of in zip(samples, by_role, strict=True)
    ]
    attack = [[f"`{name}`", ", ".join(map(str, codes))] for name, codes in memory["statuses"].items()]
    return "\n".join(
        [
            f"**{measured.environment.date}, {measured.environment.machine}.** Model: {measured.figures['model']}. "
            f"From {code(soak)}.",
            "",
            f"Memory attack: {count(memory['requests'])} requests, 8 at a time; server and workers "
            f"{count(memory['idle_mib'])} MiB idle, peak {count(memory['peak_mib'])} MiB: "
            f"**{count(memory['peak_above_idle_mib'])} MiB above idle** (goal: under 1 GB).",
            "",
            table("attack file | statuses", attack),
            "",
            f"Soak: {run['clients']} clients for {run['seconds']} s, 30% of requests bad.",
            "",
            table(["", "figure"], figures),
            "",
            "Resident memory (MiB) of the server's processes during the soak, from the samples taken every 30 s:",
            "",
            table(["seconds", *roles, "total"], memory_rows),
        ]
    )


class HalvingRow(Record):
    halving: str  # a comparison of the sitting
    grid: str
    when: str


def halving_vs_grid(root: Path, sitting: Path, rows: list[HalvingRow]) -> str:
    measured = read_result(root, sitting, SittingResult)
    cells, plain, equal = [], [], []
    for row in rows:
        halving, grid = measured.comparisons[row.halving], measured.comparisons[row.grid]
        h, g = report(root, Path(halving.report)), report(root, Path(grid.report))
        h_gauge, g_gauge = (statistics.fmean(run.lp_ft_epoch_seconds) for run in (halving, grid))
        plain.append(100 * h.setup.seconds / g.setup.seconds)
        equal.append(100 * (h.setup.seconds / h_gauge) / (g.setup.seconds / g_gauge))
        cells.append(
            [halving.data, f"{grid.tag}: {count(g.setup.seconds)} / {count(g.setup.train_seconds)}",
             f"{halving.tag}, {row.when}", f"{count(h.setup.seconds)} / {count(h.setup.train_seconds)}",
             f"{fixed(plain[-1], 1)}% ({fixed(100 * h.setup.train_seconds / g.setup.train_seconds, 1)}%)",
             f"{fixed(h_gauge, 1)} / {fixed(g_gauge, 1)}", f"{fixed(equal[-1], 1)}%",
             f"`{recommended_strategy(g)}` / `{recommended_strategy(h)}`"]
        )  # fmt: skip
    header = "data | grid: whole / training s | halving run | halving: whole / training s | of the grid: whole "
    header += "(training) | `lp-ft` epoch s, halving / grid | whole, at equal speed | recommended, grid / halving"
    return (
        f"**{measured.environment.machine}, this project's CPU sandbox.** From `{sitting.parent.as_posix()}/` (the "
        "sitting's halving runs and `lp-ft` epoch times there, the grids and the committed halving runs in "
        "`reports/`).\n\n"
        + table(header, cells)
        + f"\n\nHalving took {fixed(min(equal), 1)}-{fixed(max(equal), 1)}% of the grid's whole time at equal machine "
        f"speed (goal: at most 25%), {fixed(min(plain), 1)}-{fixed(max(plain), 1)}% plain."
    )


def served_rows(figures: dict) -> list[dict]:
    """A load test's runs, each with its load and the model alone at its mean batch. Results of the load test
    before issue 27 (one load a file, `modes`) carry the model alone at the batch of their fastest mode."""
    if "runs" in figures:
        return figures["runs"]
    mode, alone = figures["modes"]["adaptive batching on"], figures["where_the_time_goes"]
    shape = {"load": f"{figures['clients']}x{figures['images_per_request']}", "model_batch": alone["model_batch"]}
    return [mode | shape | {"model_images_per_s": alone["model_images_per_s"]}]


def served_ratio(root: Path, before: list[Path], after: Path) -> str:
    """The served images/s over the model alone at the served mean batch, before and after, one row a load."""
    rows = []
    for label, path in [("before", p) for p in before] + [("after", after)]:
        measured = read_result(root, path)
        for run in served_rows(measured.figures):
            rows.append(
                [f"{label}: {code(path.name)}", run["load"], count(run["requests"]), str(run["errors"])]
                + [count(run["images_per_s"]), f"{count(run['p50_ms'])} / {count(run['p99_ms'])}"]
                + [fixed(run["batch"], 1), count(run["model_images_per_s"])]
                + [f"**{fixed(run['images_per_s'] / run['model_images_per_s'], 2)}**"]
            )
    env = read_result(root, after).environment
    header = "run | clients x images a request | requests | errors | images/s | p50 / p99 ms | mean batch | "
    header += "model alone at that batch, images/s | served / model"
    return (
        f"**{env.date}, {env.machine}; CPUExecutionProvider.** Files in {code(after.parent)}; the after run: "
        f"`{env.command}`.\n\n" + table(header, rows)
    )


def served_profile(root: Path, profiles: list[Path]) -> str:
    """Each profiled load: every server process's CPU seconds and the parts of its py-spy samples."""
    blocks = []
    for path in profiles:
        measured = read_result(root, path)
        figures = measured.figures
        total = sum(figures["cpu_seconds"].values())
        rows = []
        for role, seconds in sorted(figures["cpu_seconds"].items(), key=lambda item: -item[1]):
            parts = figures["samples"].get(role, {})
            if seconds < 0.05 * total:
                continue
            counted = sum(parts.values()) or 1
            shares = sorted(parts.items(), key=lambda item: -item[1])
            shown = ", ".join(f"{name} {100 * n / counted:.0f}%" for name, n in shares if n / counted >= 0.02)
            rows.append([role, fixed(seconds, 1), f"{100 * seconds / total:.0f}%", shown or "(not sampled)"])
        served = figures["served"]
        blocks.append(
            f"{code(path.name)}: {figures['clients']} clients x {figures['images_per_request']} image(s), "
            f"{count(served['images_per_s'])} images/s served, {served['errors']} errors "
            f"({measured.environment.date}, {measured.environment.machine}).\n\n"
            + table("process | CPU s | share of the CPU | its non-idle py-spy samples", rows)
        )
    return "\n\n".join(blocks)


RENDERERS: dict[str, Callable[..., str]] = {
    "goals": goals,
    "head-only": head_only,
    "gpu-inference": gpu_inference,
    "gpu-served": gpu_served,
    "default-gpu": default_gpu,
    "load-test": load_test,
    "served-ratio": served_ratio,
    "served-profile": served_profile,
    "soak": soak,
    "halving": halving_vs_grid,
}
