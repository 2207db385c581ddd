"""The generated blocks of BENCHMARKS.md, one renderer per kind of block, and what they share with
docs/results.py: reading the result files (typed: benchmarks/report.py, pipeline.choice.compare_report) and
formatting figures. benchmarks/results/index.yaml names each block's kind and the parameters it is called with;
docs/results.py checks them against the signatures here and writes the blocks."""

import json
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict
from ruamel.yaml import YAML

from benchmarks.report import Result
from pipeline.choice.compare_report import CompareReport

BACKBONES = {"efficientnet_lite0": "EfficientNet-Lite0", "resnet18": "ResNet-18", "resnet50": "ResNet-50"}


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class ThroughputSource(Record):
    file: Path
    backbone: str


class HalvingRow(Record):
    halving: str  # a comparison of the sitting
    grid: str
    when: str


# ---------------------------------------------------------------- reading and formatting


def read_result(root: Path, path: Path) -> Result:
    return Result.read(root / path)


def report(root: Path, path: Path) -> CompareReport:
    try:
        return CompareReport.read(root / path)
    except (OSError, ValueError) as error:
        raise SystemExit(f"{path}: not a comparison report: {error}") from None


def read_json(root: Path, path: str) -> dict:
    """One of the pipeline's metrics files, which have no typed model of their own."""
    return json.loads((root / path).read_text(encoding="utf-8"))


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


# ---------------------------------------------------------------- BENCHMARKS.md blocks, by kind


def machines(root: Path, cpu: Path, gpu: Path) -> str:
    cpu_env, gpu_env = read_result(root, cpu).environment, read_result(root, gpu).environment
    return (
        f"**CPU** = the CI machine's size: {cpu_env.machine()}, {cpu_env.software()} ({code(cpu)}). **H200** = one "
        f"{gpu_env.gpu} ({gpu_env.gpu_memory_mib} MiB, driver {gpu_env.gpu_driver}), {gpu_env.cpu_count} cores, "
        f"{gpu_env.software()} (the lent machine's image, {code(gpu)})."
    )


def bench_seconds(root: Path, bench: Path) -> float:
    return read_result(root, bench).figures["wall_seconds"]


def bench_total(root: Path, bench: Path) -> str:
    return f"`make bench` on the CPU took {count(bench_seconds(root, bench))} s ({code(bench)})."


def head_ratio(head: dict) -> float:
    return head["baseline_later_s"] / head["ours_later_s"]


def full_row(root: Path, path: Path, backbone: str) -> dict:
    for row in read_result(root, path).figures["full"]:
        if row["backbone"] == backbone:
            return row
    raise SystemExit(f"{path}: no row for {backbone}")


def inference_row(root: Path, path: Path, backbone: str, batch: int) -> dict:
    for row in read_result(root, path).figures["rows"]:
        if row["backbone"] == backbone and row["batch"] == batch:
            return row
    raise SystemExit(f"{path}: no row for {backbone} at batch {batch}")


ON_CPU = ("efficientnet_lite0", "resnet18")  # the backbones of the CPU inference goal


def verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def goals(root: Path, cpu_training: Path, gpu_training: Path, cpu_inference: Path, gpu_inference: Path, bench: Path):
    head = [head_ratio(read_result(root, path).figures["head_only"]) for path in (cpu_training, gpu_training)]
    speedup = {
        (backbone, batch): row["ort cpu fp32"] / row["torch fp32"]
        for backbone in ON_CPU
        for batch in (1, 32)
        for row in [inference_row(root, cpu_inference, backbone, batch)]
    }
    resnet50 = full_row(root, gpu_training, "resnet50")
    default, compiled, baseline = (resnet50[key]["epoch"] for key in ("ours", "ours+compile", "baseline"))
    fp16 = inference_row(root, gpu_inference, "resnet18", 64)
    total = bench_seconds(root, bench)
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
         f"{count(fp16['ort cuda fp16'])} img/s (PyTorch fp16: {count(fp16['torch fp16 channels_last'])})",
         verdict(fp16["ort cuda fp16"] >= 3000)],
        ["`make bench` < 15 min on CPU", f"{count(total)} s", verdict(total < 15 * 60)],
    ]  # fmt: skip
    return table(["goal (issue 5)", "measured", ""], rows)


def break_even(head: dict) -> tuple[int, float, float]:
    """The first epoch after which ours has taken less time in all than the baseline, and both totals."""
    epoch, ours, baseline = 1, head["ours_first_s"], head["baseline_first_s"]
    if ours >= baseline and head["ours_later_s"] >= head["baseline_later_s"]:
        raise SystemExit("head-only: the pipeline never catches up with the baseline; rewrite BENCHMARKS.md section 1")
    while ours >= baseline:
        epoch, ours, baseline = epoch + 1, ours + head["ours_later_s"], baseline + head["baseline_later_s"]
    return epoch, ours, baseline


def head_only(root: Path, cpu: Path, gpu: Path, gpu_run1: Path) -> str:
    rows = []
    for label, path in (("CPU", cpu), ("H200", gpu)):
        args, head = read_result(root, path).figures["args"], read_result(root, path).figures["head_only"]
        validation = max(10, args["images"] // 4)  # as benchmarks/training.py makes the validation folder
        rows.append(
            [f"{label}, {count(args['images'])} + {count(validation)} images, {args['image_size']} px, batch "
             f"{args['batch_size']}", f"{fixed(head['baseline_first_s'], 2)} s",
             f"{fixed(head['baseline_later_s'], 2)} s",
             f"{fixed(head['ours_first_s'], 2)} s ({fixed(head['ours_decode_s'], 2)})",
             f"{fixed(head['ours_later_s'], 3)} s", f"{fixed(head['ours_uncached_later_s'], 2)} s",
             f"**{times(head_ratio(head), 0)}**"]
        )  # fmt: skip
    epoch, ours_total, baseline_total = break_even(head)
    run1 = read_result(root, gpu_run1).figures["head_only"]
    header = "machine, size | baseline first | baseline later | ours first (of it decoding) | ours later"
    return (
        table(header + " | later, without the cache | later: baseline / ours", rows)
        + f"\n\n- H200, first epoch: ours {times(head['ours_first_s'] / head['baseline_first_s'], 1)} the "
        f"baseline's time, {fixed(head['ours_decode_s'], 2)} s of it decoding "
        f"{count(args['images'] + validation)} JPEGs once ({fixed(run1['ours_decode_s'], 2)} s in "
        "run 1, before `load_split` decoded on a thread pool).\n"
        f"- H200, time since the start: ours is ahead of the baseline from epoch {epoch} on "
        f"({fixed(ours_total, 2)} s against {fixed(baseline_total, 2)} s)."
    )


THROUGHPUT_HEADER = "backbone | variant | loader | step | epoch | epoch vs baseline"


def throughput_rows(root: Path, sources: list[ThroughputSource]) -> list[list[str]]:
    rows = []
    for source in sources:
        row = full_row(root, source.file, source.backbone)
        for variant, figures in ((key, value) for key, value in row.items() if key != "backbone"):
            cells = [count(figures[key]) for key in ("loader", "step", "epoch")]
            name = BACKBONES.get(source.backbone, source.backbone)
            rows.append([name, variant, *cells, times(figures["epoch"] / row["baseline"]["epoch"])])
    return rows


def sizes(root: Path, paths: list[Path]) -> str:
    """The files and the run sizes in their `args`, once per distinct size."""
    described: dict[str, list[str]] = {}
    for path in dict.fromkeys(paths):
        args = read_result(root, path).figures["args"]
        size = (
            f"{count(args['images'])} images of {args['image_size']} px, batch {args['batch_size']}, "
            f"{args['epochs']} epochs per run, baseline with {args['baseline_workers']} loader workers"
        )
        described.setdefault(size, []).append(code(path))
    return "; ".join(f"{' and '.join(names)}: {size}" for size, names in described.items())


def gpu_training(root: Path, sources: list[ThroughputSource]) -> str:
    source = sizes(root, [source.file for source in sources])
    return table(THROUGHPUT_HEADER, throughput_rows(root, sources)) + f"\n\nFrom {source}."


def cpu_training(root: Path, training: Path) -> str:
    full = read_result(root, training).figures["full"]
    rows = throughput_rows(root, [ThroughputSource(file=training, backbone=row["backbone"]) for row in full])
    loaders = [figures["loader"] for row in full for figures in (row["baseline"], row["ours"])]
    steps = [figures["step"] for row in full for figures in (row["baseline"], row["ours"])]
    gains = [row["ours"]["epoch"] / row["baseline"]["epoch"] for row in full]
    return (
        table(THROUGHPUT_HEADER, rows)
        + f"\n\nFrom {sizes(root, [training])}. Loaders {count(min(loaders))}-{count(max(loaders))} img/s, steps "
        f"{count(min(steps))}-{count(max(steps))} img/s; ours against the baseline per epoch: "
        f"{times(min(gains))}-{times(max(gains))}."
    )


def run1_to_run2(root: Path, run1: Path, run2: Path) -> str:
    before, after = full_row(root, run1, "resnet50")["ours"], full_row(root, run2, "resnet50")
    serial = 1 / (1 / before["loader"] + 1 / before["step"])
    return (
        f'- ResNet-50, "ours", epoch: {count(before["epoch"])} img/s in run 1, {count(after["ours"]["epoch"])} '
        f"in run 2; loader alone: {count(before['loader'])} -> {count(after['ours']['loader'])} img/s.\n"
        f"- Run 1's epoch ({count(before['epoch'])}) was about the serial sum of its loader "
        f"({count(before['loader'])}) and step ({count(before['step'])}), which would give {count(serial)}, not "
        f"their minimum.\n- Deterministic kernels in run 2: {count(after['ours']['epoch'])} img/s on, "
        f"{count(after['ours+nondeterministic']['epoch'])} off (`train.deterministic: false`)."
    )


def profile(root: Path, profile: Path) -> str:
    figures = read_result(root, profile).figures
    args, operators = figures["args"], figures["operators"]

    def share(prefix: str, column: str) -> str:
        row = next((row for row in operators if row["name"].startswith(prefix)), None)
        if row is None:
            raise SystemExit(f"{profile}: no operator named {prefix!r}")
        return f"{row[column]:.2f}%"

    setup = (
        f"{args['backbone']}, {args['strategy']}, {args['images']} images of {args['image_size']} px, batch "
        f"{args['batch_size']}, {args['overrides'] or 'defaults'}"
    )
    return (
        f"{code(profile)} ({setup}; images/s per epoch: {', '.join(map(count, figures['images_per_second']))}): "
        f"the main thread spends {share('enumerate(DataLoader)', 'self_cpu_percent')} of its CPU time waiting in "
        f"`enumerate(DataLoader)` and {share('cudaHostAlloc', 'self_cpu_percent')} in `cudaHostAlloc`; on the "
        f"GPU, BatchNorm backward ({share('aten::native_batch_norm_backward', 'self_cuda_percent')}) and dtype "
        f"copies, `aten::copy_` ({share('aten::copy_', 'self_cuda_percent')}), lead."
    )


def cpu_inference(root: Path, inference: Path) -> str:
    rows = [
        [BACKBONES[row["backbone"]], str(row["batch"])]
        + [count(row[key]) for key in ("torch fp32", "ort cpu fp32", "ort cpu fp16")]
        + [f"**{times(row['ort cpu fp32'] / row['torch fp32'])}**"]
        for row in read_result(root, inference).figures["rows"]
    ]
    header = "backbone | batch | PyTorch fp32 | ORT fp32 | ORT fp16 graph | ORT / PyTorch"
    return table(header, rows) + f"\n\nFrom {code(inference)}."


def gpu_inference(root: Path, inference: Path) -> str:
    measured = read_result(root, inference)
    rows = [
        [BACKBONES[row["backbone"]], str(row["batch"])]
        + [count(row[key]) for key in ("torch fp32", "torch fp16 channels_last", "ort cuda fp32", "ort cuda fp16")]
        + [times(row["ort cuda fp16"] / row["torch fp16 channels_last"])]
        for row in measured.figures["rows"]
    ]
    header = "backbone | batch | PyTorch fp32 | PyTorch fp16, channels_last | ORT CUDA fp32 | ORT CUDA fp16"
    resnet50 = [row for row in measured.figures["rows"] if row["backbone"] == "resnet50" and row["batch"] >= 32]
    best = max(resnet50, key=lambda row: row["ort cuda fp16"])
    tensorrt = "did not load" if "TensorrtExecutionProvider" in measured.figures["not_loaded"] else "loaded"
    by_batch = ", ".join(f"{count(row['ort cuda fp16'])} at batch {row['batch']}" for row in resnet50)
    env = measured.environment
    return (
        table(header + " | ORT fp16 / PyTorch fp16", rows)
        + f"\n\nResNet-50 fp16 through ONNX Runtime: {count(best['ort cuda fp16'])} img/s at batch {best['batch']} "
        f"(issue 16's goal: >= 10,000; {by_batch}). TensorRT provider: {tensorrt}. From {code(inference)} "
        f"(`{env.command}`, {env.machine()}, {env.software()})."
    )


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
        f"{first.environment.machine()}. Files in `{runs[0].file.parent.as_posix()}/`.\n\n"
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


def gpu_decode(root: Path, decode: Path) -> str:
    measured = read_result(root, decode)
    rows = []
    for row in measured.figures["rows"]:
        cpu_key = next(key for key in row if key.startswith("cpu_"))
        gpu = row["gpu_nvimgcodec_images_per_s"]
        rows.append(
            [f"{row['photo_px']} px", str(row["images"]), f"{count(row[cpu_key])} ({cpu_key.split('_')[1]} threads)",
             count(gpu), times(gpu / row[cpu_key], 1),
             f"{fixed(row['pixel_mean_abs_difference'], 3)} / {row['pixel_max_abs_difference']}"]
        )  # fmt: skip
    header = "JPEG photos | images | Pillow, images/s | nvImageCodec + torch, images/s | GPU / CPU"
    header += " | pixel difference mean / max"
    return table(header, rows) + f"\n\n{measured.environment.gpu}; from {code(decode)}."


def committed_strategy(root: Path) -> str:
    """The strategy the committed default run trained with, as dvc.lock records its params."""
    lock = YAML(typ="safe").load(root / "dvc.lock")
    try:
        return lock["stages"]["train"]["params"]["params.yaml"]["finetune"]["strategy"]
    except (KeyError, TypeError):
        raise SystemExit("dvc.lock: no finetune.strategy among the train stage's params") from None


def default_gpu(root: Path, gpu_run: Path) -> str:
    """The committed default run beside the H200 run, with what differs between them besides the machine."""
    gpu = read_result(root, gpu_run)
    runs = [
        ("the committed default run, `metrics/`", "not recorded", committed_strategy(root), None,
         read_json(root, "metrics/train.json"), read_json(root, "metrics/evaluate.json")),
        (code(gpu_run), gpu.environment.machine(), gpu.figures["strategy"], gpu.figures["train_stage_wall_seconds"],
         gpu.figures["train"], gpu.figures["evaluate"]),
    ]  # fmt: skip
    rows = [
        [label, machine, f"`{strategy}`", f"{wall} s" if wall else "not recorded", fixed(train["train_seconds"], 1),
         f"{fixed(train['best_val_accuracy'], 4)} (epoch {train['best_epoch']})", fixed(evaluate["accuracy"], 4),
         fixed(evaluate["macro_f1"], 4), fixed(evaluate["ece"], 4)]
        for label, machine, strategy, wall, train, evaluate in runs
    ]  # fmt: skip
    header = "run | machine | strategy | train stage wall | train_seconds | best val accuracy | test accuracy"
    committed, on_gpu = (run[2] for run in runs)
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
        f"**{env.date}, {env.machine()}; {', '.join(figures['providers'])}.** Model: {figures['model']}. "
        f"{figures['clients']} concurrent clients, {figures['seconds']} s per mode after {figures['warmup_seconds']} "
        "s of warm-up; the clients run on the same machine as the server.\n\n"
        + table(header, rows)
        + f"\n\nOn/off: throughput {times(on['throughput'] / off['throughput'])}, p99 latency "
        f"{times(on['p99_ms'] / off['p99_ms'])}. From {code(load_test)} (`{env.command}`)."
    )


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
    roles = [key for key in timeline[0] if key not in ("t_s", "total_mib")]
    samples = [sample for sample in timeline if sample["t_s"] <= warm["t_s"]] + [timeline[-1]]
    memory_rows = [[f"{s['t_s']}", *(count(s[role]) for role in roles), count(s["total_mib"])] for s in samples]
    attack = [[f"`{name}`", ", ".join(map(str, codes))] for name, codes in memory["statuses"].items()]
    return "\n".join(
        [
            f"**{measured.environment.date}, {measured.environment.machine()}.** Model: {measured.figures['model']}. "
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
            table(["seconds", *(role.rsplit(" ", 1)[0] for role in roles), "total"], memory_rows),
        ]
    )


def memory_disk_part(measured: Result, source: Path) -> list[str]:
    """The in-memory path against the decoded cache, by folder size."""
    entries = measured.figures["results"]
    rows = [
        [count(entry["images"]),
         f"{fixed(memory['decode_s_per_image'] * 1e3, 3)} / {fixed(disk['decode_s_per_image'] * 1e3, 3)}",
         fixed(disk["reopen_s"] * 1e3, 1), f"{count(memory['loader_images_per_s'])} / "
         f"{count(disk['loader_images_per_s'])} ({count(disk['loader_cold_images_per_s'])} cold)",
         f"{fixed(memory['train_images_per_s'], 1)} / {fixed(disk['train_images_per_s'], 1)}",
         f"{count(memory['peak_private_mib'])} / {count(disk['peak_private_mib'])}",
         f"{count(memory['peak_rss_mib'])} / {count(disk['peak_rss_mib'])}"]
        for entry in entries
        for memory, disk in [(entry["memory"], entry["disk"])]
    ]  # fmt: skip
    first, last = entries[0]["disk"], entries[-1]["disk"]
    loader = [e["disk"]["loader_images_per_s"] / e["memory"]["loader_images_per_s"] for e in entries]
    header = "images | decode, ms per image (disk: building the cache) | later runs: open the cache, ms"
    header += " | loader pass, images/s | training, images/s | peak private RSS, MiB | peak RSS, MiB"
    return [
        f"{scale_run(measured, source)} Each figure is memory / disk (cache).",
        "",
        table(header, rows),
        "",
        f"From {count(entries[0]['images'])} to {count(entries[-1]['images'])} images: cache build time per image "
        f"{times(last['decode_s_per_image'] / first['decode_s_per_image'])} (goal: within 20%), peak private "
        f"memory of the cached path {times(last['peak_private_mib'] / first['peak_private_mib'])}; the cached "
        f"loader runs at {times(min(loader))} to {times(max(loader))} the in-memory one's speed, warm (goal: "
        "within 10%).",
    ]


def scale_run(measured: Result, source: Path) -> str:
    """What a data_scale run was: the machine, its settings and its file."""
    args, env = measured.figures["args"], measured.environment
    return (
        f"**{env.machine()}, {env.software()}.** {args['image_size']} px, batch {args['batch_size']}, "
        f"{args['train_steps']} training steps of a random-init {BACKBONES[args['backbone']]}. From {code(source)}."
    )


def memory_split(figures: dict) -> str:
    return " / ".join(count(figures[key]) for key in ("peak_private_mib", "peak_file_mapped_mib", "peak_rss_mib"))


def shards_part(measured: Result) -> list[str]:
    """The shards against the in-memory path, in the same run."""
    rows = []
    for entry in measured.figures["results"]:
        memory, shards = entry["memory"], entry["shards"]
        against = {key: times(shards[key] / memory[key]) for key in shards if key in memory}
        rows.append(
            [count(entry["images"]),
             f"{fixed(shards['decode_s_per_image'] * 1e3, 3)} ({against['decode_s_per_image']})",
             f"{count(shards['loader_images_per_s'])} ({against['loader_images_per_s']})",
             f"{fixed(shards['train_images_per_s'], 1)} ({against['train_images_per_s']})",
             f"{count(shards['peak_private_mib'])} / {count(shards['peak_rss_mib'])}"]
        )  # fmt: skip
    header = "images | write the shards, ms per image (against decoding in memory) | loader pass from the shards, "
    header += "images/s, warm | training, images/s | peak private / all RSS, MiB"
    return ["Shards against memory, in the same run:", "", table(header, rows)]


def two_processes_part(measured: Result) -> list[str]:
    """Two processes mapping one cache against one, and against two in-memory processes."""
    rows = []
    for entry in measured.figures["results"]:
        disk, ranks = entry["disk"], entry["disk-2ranks"]["ranks"]
        # the machine holds each process's private pages, and the cache's mapped pages once (page cache)
        together = sum(rank["peak_private_mib"] for rank in ranks) + max(rank["peak_file_mapped_mib"] for rank in ranks)
        in_memory = 2 * entry["memory"]["peak_rss_mib"]  # a copy of the split each
        rows.append(
            [count(entry["images"]), memory_split(disk), " and ".join(memory_split(rank) for rank in ranks),
             f"{count(together)} ({times(together / disk['peak_rss_mib'])})", count(in_memory)]
        )  # fmt: skip
    header = "images | one process | each of two processes | two together (against one) | two in memory, a copy "
    return [
        "Two processes mapping one cache at once, against one (peak private / file-mapped / all RSS, MiB); "
        "together: both processes' private memory and the mapped cache once, as the machine holds it:",
        "",
        table(header + "each (2 x one)", rows),
    ]


DATA_SCALE_PARTS = {"shards": ("shards", shards_part), "two-processes": ("disk-2ranks", two_processes_part)}


def data_scale(root: Path, result: Path, parts: list[Literal["shards", "two-processes"]] | None = None) -> str:
    """benchmarks/data_scale.py: memory against the cache (unless `parts` leaves it out), then the shards and
    two-process parts the run measured."""
    measured = read_result(root, result)
    modes = set(measured.figures["results"][0])
    lines = memory_disk_part(measured, result) if parts is None else [scale_run(measured, result)]
    for part, (mode, render) in DATA_SCALE_PARTS.items():
        if mode in modes and (parts is None or part in parts):
            lines += ["", *render(measured)]
    return "\n".join(lines)


def halving_vs_grid(root: Path, sitting: Path, rows: list[HalvingRow]) -> str:
    comparisons = read_result(root, sitting).figures["comparisons"]
    cells, plain, equal = [], [], []
    for row in rows:
        halving, grid = comparisons[row.halving], comparisons[row.grid]
        h, g = report(root, Path(halving["report"])), report(root, Path(grid["report"]))
        h_gauge, g_gauge = (statistics.fmean(run["lp_ft_epoch_seconds"]) for run in (halving, grid))
        plain.append(100 * h.setup.seconds / g.setup.seconds)
        equal.append(100 * (h.setup.seconds / h_gauge) / (g.setup.seconds / g_gauge))
        cells.append(
            [halving["data"], f"{grid['tag']}: {count(g.setup.seconds)} / {count(g.setup.train_seconds)}",
             f"{halving['tag']}, {row.when}", f"{count(h.setup.seconds)} / {count(h.setup.train_seconds)}",
             f"{fixed(plain[-1], 1)}% ({fixed(100 * h.setup.train_seconds / g.setup.train_seconds, 1)}%)",
             f"{fixed(h_gauge, 1)} / {fixed(g_gauge, 1)}", f"{fixed(equal[-1], 1)}%",
             f"`{recommended_strategy(g)}` / `{recommended_strategy(h)}`"]
        )  # fmt: skip
    header = "data | grid: whole / training s | halving run | halving: whole / training s | of the grid: whole "
    header += "(training) | `lp-ft` epoch s, halving / grid | whole, at equal speed | recommended, grid / halving"
    return (
        f"**{read_result(root, sitting).environment.machine()}, this project's CPU sandbox.** From "
        f"`{sitting.parent.as_posix()}/` (the sitting's halving runs and `lp-ft` epoch times there, the grids and the "
        "committed halving runs in `reports/`).\n\n"
        + table(header, cells)
        + f"\n\nHalving took {fixed(min(equal), 1)}-{fixed(max(equal), 1)}% of the grid's whole time at equal machine "
        f"speed (goal: at most 25%), {fixed(min(plain), 1)}-{fixed(max(plain), 1)}% plain."
    )


RENDERERS: dict[str, Callable[..., str]] = {
    "machines": machines,
    "bench-total": bench_total,
    "goals": goals,
    "head-only": head_only,
    "gpu-training": gpu_training,
    "run1-to-run2": run1_to_run2,
    "profile": profile,
    "cpu-training": cpu_training,
    "cpu-inference": cpu_inference,
    "gpu-inference": gpu_inference,
    "gpu-served": gpu_served,
    "gpu-decode": gpu_decode,
    "default-gpu": default_gpu,
    "load-test": load_test,
    "soak": soak,
    "data-scale": data_scale,
    "halving": halving_vs_grid,
}
