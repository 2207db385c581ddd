"""Write every measured figure of the docs from the committed result files: `make docs`.

    python docs/results.py               # docs/results.md, and the generated blocks of BENCHMARKS.md
    python docs/results.py --root DIR    # the same for another copy of the project (tests/test_docs.py)

docs/results.md is written whole from metrics/*.json (the default run) and reports/**/compare.json
(`make compare`). In BENCHMARKS.md only the text between `<!-- generated:NAME -->` and
`<!-- /generated:NAME -->` is replaced, from the JSON, logs and text files in benchmarks/results/;
the prose around it is hand-written and carries no figures. A marker without a generator, or a
generator without its marker, stops the script. Same input files, byte-identical output; each
file is replaced atomically, and left alone when nothing changed. Standard library only.
"""

import argparse
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = Path("docs/results.md")
BENCHMARKS_MD = Path("BENCHMARKS.md")
BENCH = Path("benchmarks/results")
CPU = BENCH / "2026-11-26-cpu-issue11"
SOAK = BENCH / "2026-11-28-cpu-issue13" / "soak.json"  # 20 minutes, memory sampled every 30 s
H200_RUN1 = BENCH / "2026-11-26-h200-run1"
H200_RUN2 = BENCH / "2026-11-26-h200-run2"
H200_ISSUE16 = BENCH / "2026-11-28-h200-issue16"  # onnxruntime-gpu and the served model on the H200
DATA_SCALE = BENCH / "2026-11-28-cpu-issue15" / "data_scale.json"  # in memory against the decoded cache on disk
DATA_SCALE_SHARDS = BENCH / "2026-11-28-cpu-issue15-shards" / "data_scale.json"  # shards, and 2 processes on the cache
DATA_SCALE_224 = BENCH / "2026-11-28-cpu-issue15-224px" / "data_scale.json"  # every mode at 224 px
# memory, disk and two processes: shards of 100k images at 224 px did not fit the disk beside the cache
DATA_SCALE_224_100K = BENCH / "2026-11-28-cpu-issue15-224px-100k" / "data_scale.json"
MARKER = re.compile(r"<!-- generated:([a-z0-9-]+) -->(.*?)<!-- /generated:\1 -->", re.DOTALL)
BACKBONES = {"efficientnet_lite0": "EfficientNet-Lite0", "resnet18": "ResNet-18", "resnet50": "ResNet-50"}

# Pieces of the notes below: the digits data set's setting, and where the grid/halving sitting's logs are.
DIGITS = " and `data.source: data/builtin/digits`"
ISSUE14_RUNS = "`benchmarks/results/2026-11-28-cpu-issue14-overhead/`"


def side_by_side(method: str, data: str = "") -> str:
    """The note of a grid or halving report of the sitting that measured them side by side (issue 14)."""
    made = (
        f"Made with `compare.method: {method}`{data} in a copy of the project after "
        "`python -m pipeline.stages.prepare` "
        "and `python -m pipeline.stages.verdict` there, "
    )
    if method == "grid":
        return made + f"with halving before and after it in the same sitting ({ISSUE14_RUNS})."
    return made + f"after the grid in the same sitting; the sitting's other halving runs and every log: {ISSUE14_RUNS}."


def calibration_case(name: str, how: str) -> str:
    return (
        f"A case of the verdict's calibration (`reports/verdict/calibration.csv`), made with {how} by "
        "`bash reports/calibration/make_cases.sh` (in a copy of the project, `python -m pipeline.stages.prepare`, then "
        f"`python -m pipeline.commands.compare --out reports/calibration/{name}`)."
    )


# What a committed comparison's files cannot say about themselves (no figures here: they come from the files).
REPORT_NOTES = {
    "reports/compare.json": "Seed 0 of this comparison shared the machine with the test suite, so its times are "
    "inflated: compare the times of seeds 1 and 2.",
    "reports/epochs-3/compare.json": "Made with `compare.epochs: 3`; at this budget the fine-tuned strategies "
    "have not converged.",
    "reports/epochs-3/digits/compare.json": "Made with `compare.epochs: 3` and `data.source: data/builtin/digits`.",
    "reports/digits/compare.json": "Made with `data.source: data/builtin/digits`.",
    "reports/grid/compare.json": side_by_side("grid"),
    "reports/grid/digits/compare.json": side_by_side("grid", DIGITS),
    "reports/halving/compare.json": side_by_side("halving"),
    "reports/halving/digits/compare.json": side_by_side("halving", DIGITS),
    "reports/calibration/animal-shape-random-init/compare.json": calibration_case(
        "animal-shape-random-init",
        "`model.weights: none` (random init, the far extreme) and `compare.train_per_class: 50`",
    ),
    "reports/calibration/digits-random-init/compare.json": calibration_case(
        "digits-random-init", "`model.weights: none`, `compare.train_per_class: 50`" + DIGITS
    ),
    "reports/calibration/animal-shape-25-per-class/compare.json": calibration_case(
        "animal-shape-25-per-class", "`compare.train_per_class: 25`"
    ),
    "reports/calibration/digits-25-per-class/compare.json": calibration_case(
        "digits-25-per-class", "`compare.train_per_class: 25`" + DIGITS
    )
    + " Seed 2's `lp-ft` run shared the machine with other work (see its train seconds against the other "
    "seeds'), so the time tie-break that picked `full` over `lp-ft`, the best on validation, is an artifact of "
    "that load.",
    "reports/calibration/animal-shape-96px/compare.json": calibration_case(
        "animal-shape-96px", "`compare.image_size: 96` and `compare.train_per_class: 40`"
    ),
}


# ---------------------------------------------------------------- formatting


def count(value: float) -> str:
    return f"{value:,.0f}"


def fixed(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def times(value: float, digits: int = 2) -> str:
    return f"x{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def read_json(root: Path, path: Path | str) -> dict:
    return json.loads((root / path).read_text(encoding="utf-8"))


def read_text(root: Path, path: Path | str) -> str:
    return (root / path).read_text(encoding="utf-8")


def search(pattern: str, text: str, origin: str) -> re.Match:
    match = re.search(pattern, text, re.MULTILINE)
    if match is None:
        raise SystemExit(f"{origin}: no line matches {pattern!r}")
    return match


# ---------------------------------------------------------------- docs/results.md


def default_run(root: Path) -> str:
    prepare = read_json(root, "metrics/prepare.json")
    train = read_json(root, "metrics/train.json")
    evaluate = read_json(root, "metrics/evaluate.json")
    export = read_json(root, "metrics/export.json")
    share = 100 * train["trainable_params"] / train["total_params"]
    rows = [
        [
            "prepared images",
            f"{count(prepare['images'])} in {prepare['classes']} classes, {prepare['skipped']} skipped: "
            f"{count(prepare['train_images'])} train, {count(prepare['val_images'])} validation, "
            f"{count(prepare['test_images'])} test",
        ],
        [
            "test accuracy",
            f"**{fixed(evaluate['accuracy'], 4)}** (one test image is {fixed(100 / prepare['test_images'], 2)} points)",
        ],
        ["test macro-F1", fixed(evaluate["macro_f1"], 4)],
        ["test ECE (expected calibration error)", fixed(evaluate["ece"], 4)],
        ["best validation accuracy", f"{fixed(train['best_val_accuracy'], 4)}, at epoch {train['best_epoch']}"],
        [
            "trained parameters",
            f"{count(train['trainable_params'])} of {count(train['total_params'])} ({fixed(share, 1)}%)",
        ],
        ["training time (`train_seconds`)", f"{fixed(train['train_seconds'], 1)} s"],
        ["ONNX Runtime against PyTorch, largest difference", f"{export['parity_max_abs_diff']:.1e}"],
        ["ONNX Runtime test accuracy", fixed(export["onnx_test_accuracy"], 4)],
    ]
    per_class = [
        [f"`{name}`", fixed(scores["precision"], 3), fixed(scores["recall"], 3)]
        for name, scores in evaluate["per_class"].items()
    ]
    return "\n".join(
        [
            "## The default run (`make run`)",
            "",
            "From `metrics/prepare.json`, `metrics/train.json`, `metrics/evaluate.json` and `metrics/export.json`: "
            "the `dvc repro` committed with the code, on the default `params.yaml` (`dvc.lock` records its "
            "params and data). The files do not record the machine; BENCHMARKS.md has the same run on a GPU.",
            "",
            table(["", "value"], rows),
            "",
            "Per class, on the test split:",
            "",
            table(["class", "precision", "recall"], per_class),
        ]
    )


def compare_reports(root: Path) -> list[Path]:
    return sorted((path.relative_to(root) for path in (root / "reports").rglob("compare.json")), key=Path.as_posix)


def seed_list(seeds: list[int]) -> str:
    return ", ".join(str(seed) for seed in seeds)


def compare_section(root: Path, path: Path) -> str:
    report = read_json(root, path)
    setup = report["setup"]
    runs: dict[str, list[dict]] = {}
    for run in report["runs"]:
        runs.setdefault(run["strategy"], []).append(run)
    rows = []
    for key, summary in report["summaries"].items():
        by_seed = {run["seed"]: run for run in runs.get(key, [])}
        params = sorted({run["trainable_params"] for run in by_seed.values()} or {summary["trainable_params"]})
        trained = count(params[0]) if len(params) == 1 else f"{count(params[0])}-{count(params[-1])}"
        per_seed = " / ".join(
            fixed(by_seed[seed]["train_seconds"], 1) if seed in by_seed else "-" for seed in setup["seeds"]
        )
        gains = report.get("gain_per_minute")  # reports made since the gain per minute exists
        rows.append(
            [
                f"`{summary['strategy']}`",
                f"{fixed(summary['val_mean'], 3)} ± {fixed(summary['val_std'], 3)}",
                f"{fixed(summary['mean'], 3)} ± {fixed(summary['std'], 3)}",
                str(summary["runs"]),
                trained,
                fixed(summary["train_seconds"], 1),
                per_seed,
            ]
            + ([f"{gains[key]:+.2f}" if key in gains else "-"] if gains else [])
        )
    name = Path(setup["data_source"]).name
    markdown = path.with_suffix(".md")
    method = "halving, stopped at " if setup.get("method") == "halving" else ""
    lines = [
        f"### {name}, {method}{setup['epochs']} epochs (`{path.as_posix()}`)",
        "",
        f"Data `{setup['data_source']}`: {count(setup['train_images'])} training images "
        f"({setup['train_per_class']} per class at most), {count(setup['val_images'])} validation, "
        f"{count(setup['test_images'])} test, {setup['classes']} classes, at {setup['image_size']} px. "
        f"Backbone `{setup['backbone']}` ({setup['weights']}); {setup['epochs']} epochs per fine-tuning phase, "
        f"{setup['head_epochs']} per head phase (on cached features); seeds {seed_list(setup['seeds'])}. "
        f"{setup['date']}, git {setup['git_commit'][:7]}."
        + (f" Full report: [{markdown.as_posix()}](../{markdown.as_posix()})." if (root / markdown).is_file() else ""),
        "",
        table(
            [
                "strategy",
                "validation accuracy (mean ± std)",
                "test accuracy (mean ± std)",
                "runs",
                "trained parameters",
                "train s (mean)",
                f"train s, seed {' / '.join(str(seed) for seed in setup['seeds'])}",
            ]
            + (["points over the head per training minute"] if report.get("gain_per_minute") else []),
            rows,
        ),
        "",
        "The report's recommendation:",
        "",
        *(f"- {line}" for line in report["recommendation"]),
    ]
    lines += shift_section(report) + halving_section(root, path, report)
    note = REPORT_NOTES.get(path.as_posix())
    if note:
        lines += ["", note]
    return "\n".join(lines)


def shift_section(report: dict) -> list[str]:
    """Clean against shifted test accuracy, for reports made since the shifted copy exists."""
    shifted = report.get("shifted_test")
    if not shifted:
        return []
    rows = [
        [f"`{name}`", fixed(row["clean"], 3), fixed(row["shifted"], 3), fixed(100 * row["drop"], 1)]
        + [fixed(value, 3) for value in row["by_corruption"].values()]
        for name, row in shifted["strategies"].items()
    ]
    corruptions = list(next(iter(shifted["strategies"].values()))["by_corruption"])
    return [
        "",
        f"Clean against shifted test accuracy (each test image corrupted once, drawn by seed {shifted['seed']}; "
        "mean over the seeds):",
        "",
        table(["strategy", "clean", "shifted", "drop, points", *corruptions], rows),
    ]


def grid_counterparts(root: Path, report: dict) -> list[tuple[Path, dict]]:
    """The committed grid comparisons of the same data at the budget a halving report's rungs led up to."""
    setup, budget = report["setup"], report["halving"]["budget"]
    matching = []
    for path in compare_reports(root):
        grid = read_json(root, path)
        other = grid["setup"]
        if other.get("method", "grid") == "grid" and all(
            other[key] == value
            for key, value in (
                ("data_source", setup["data_source"]),
                ("image_size", setup["image_size"]),
                ("seeds", setup["seeds"]),
                ("epochs", budget["epochs"]),
                ("train_per_class", budget["train_per_class"]),
            )
        ):
            matching.append((path, grid))
    return matching


def halving_section(root: Path, path: Path, report: dict) -> list[str]:
    halving = report.get("halving")
    if not halving:
        return []
    load = report["setup"]["load_average"]
    rows = [
        [
            str(rung["rung"]),
            str(rung["epochs"]),
            count(rung["train_images"]),
            str(rung["seeds"]),
            ", ".join(f"`{name}` {fixed(value, 3)}" for name, value in rung["val_accuracy"].items()),
            f"`{rung['paired_test']['leader']}` {rung['paired_test']['gain']:+.1f} "
            f"[{rung['paired_test']['low']:+.1f}, {rung['paired_test']['high']:+.1f}]",
            rung["paired_test"]["decision"],
            fixed(sum(rung["train_seconds"].values()), 0),
        ]
        for rung in halving["rungs"]
    ]
    lines = [
        "",
        f"Successive halving (`compare.method: halving`): {halving['stop']} Seeding: {halving['seeding']['note']}.",
        "",
        table(
            [
                "rung",
                "epochs",
                "train images",
                "seeds",
                "val accuracy",
                "leader - head, points [interval]",
                "decision",
                "train s",
            ],
            rows,
        ),
        "",
        f"Training time of every rung: {fixed(report['setup']['train_seconds'], 0)} s; the whole comparison "
        f"{fixed(report['setup']['seconds'], 0)} s, decoding and scoring included, on {load['cores']} cores whose "
        f"load average (1 / 5 / 15 minutes) was {' / '.join(fixed(v, 1) for v in load['before'])} at the start and "
        f"{' / '.join(fixed(v, 1) for v in load['after'])} at the end.",
    ]
    for grid_path, grid in grid_counterparts(root, report):
        grid_seconds = sum(run["train_seconds"] for run in grid["runs"])
        load = grid["setup"].get("load_average")  # recorded since halving exists
        lines += [
            "",
            f"Against the grid at the same budget in `{grid_path.as_posix()}` ({grid['setup']['date']}"
            + (f", load average {' / '.join(fixed(v, 1) for v in load['before'])} at its start" if load else "")
            + f"): it trained for {fixed(grid_seconds, 0)} s, so halving took "
            f"{fixed(100 * report['setup']['train_seconds'] / grid_seconds, 0)}% of its training time"
            + (
                f" and {fixed(100 * report['setup']['seconds'] / whole, 0)}% of its whole time ({fixed(whole, 0)} s)"
                if (whole := grid["setup"].get("seconds"))  # recorded since halving exists
                else ""
            )
            + ". In training "
            f"images x epochs of the tuned strategies, which the machine's load does not change: "
            f"{count(tuned_image_epochs(report))} against {count(tuned_image_epochs(grid))}, "
            f"{fixed(100 * tuned_image_epochs(report) / tuned_image_epochs(grid), 0)}%. The grid recommended "
            f"`{recommended_strategy(grid)}`, halving `{recommended_strategy(report)}`.",
        ]
    return lines


def tuned_image_epochs(report: dict) -> int:
    """Training images x epochs of every run other than the head's: the work of a comparison whatever else ran
    on the machine (the head trains on cached features in seconds)."""
    heads = ("head", "head (random init)")
    if "halving" not in report:
        tuned = sum(run["strategy"] not in heads for run in report["runs"])
        return tuned * report["setup"]["epochs"] * report["setup"]["train_images"]
    return sum(
        sum(name not in heads for name in rung["strategies"]) * rung["seeds"] * rung["epochs"] * rung["train_images"]
        for rung in report["halving"]["rungs"]
    )


def recommended_strategy(report: dict) -> str:
    """The strategy of a report's first recommendation line (**Use `name`**)."""
    return search(r"\*\*Use `([^`]+)`\*\*", report["recommendation"][0], "recommendation").group(1)


def render_results(root: Path) -> str:
    sections = [
        "# Results",
        "",
        "<!-- Generated by `make docs` (python docs/results.py) from the committed files named below: "
        "do not edit; change the files or the script. -->",
        "",
        "Every figure on this page is read from a committed file by `docs/results.py` (`make docs`), and "
        "`tests/test_docs.py` fails when the page is out of date. Speed figures are in "
        "[BENCHMARKS.md](../BENCHMARKS.md).",
        "",
        default_run(root),
        "",
        "## Strategy comparisons (`make compare`)",
        "",
        "One table per committed `reports/**/compare.json`. Accuracy is the mean ± standard deviation over "
        "the seeds (validation: of each run's best epoch, what the recommendation is chosen on); the trained "
        "parameters of `auto` depend on the blocks it chose for each seed. Times are of "
        "the machine that ran the comparison, which the report does not record. How the comparison and its "
        "recommendation work: [strategies.md](strategies.md#comparing-the-strategies).",
    ]
    for path in compare_reports(root):
        sections += ["", compare_section(root, path)]
    return "\n".join(sections) + "\n"


# ---------------------------------------------------------------- BENCHMARKS.md blocks


def machines(root: Path) -> str:
    cpu = read_json(root, CPU / "training.json")
    ort = read_json(root, CPU / "inference.json")["onnxruntime"]
    env = read_text(root, H200_RUN1 / "env.txt").splitlines()
    gpu, memory, driver = (part.strip() for part in env[1].split(","))
    cores = env[2].strip()
    torch_version, ort_gpu = env[3].split()[:2]
    return (
        f"\n**CPU** = the CI machine's size: {cpu['machine']}, ONNX Runtime {ort} "
        f"(`{(CPU / 'training.json').as_posix()}`). **H200** = one {gpu} ({memory}, driver {driver}), "
        f"{cores} cores, torch {torch_version}, ONNX Runtime {ort_gpu} (the lent machine's image, "
        f"`{(H200_RUN1 / 'env.txt').as_posix()}`).\n"
    )


def bench_seconds(root: Path) -> int:
    """The wall time of `make bench` on the CPU."""
    text = read_text(root, CPU / "total.txt")
    return int(search(r"make bench equivalent: (\d+) s", text, str(CPU / "total.txt")).group(1))


def bench_total(root: Path) -> str:
    return f"\n`make bench` on the CPU took {count(bench_seconds(root))} s (`{(CPU / 'total.txt').as_posix()}`).\n"


def head_ratio(head: dict) -> float:
    return head["baseline_later_s"] / head["ours_later_s"]


def full_row(root: Path, path: Path, backbone: str) -> dict:
    for row in read_json(root, path)["full"]:
        if row["backbone"] == backbone:
            return row
    raise SystemExit(f"{path}: no row for {backbone}")


def inference_rows(root: Path, path: Path) -> list[dict]:
    return read_json(root, path)["rows"]


def inference_row(root: Path, path: Path, backbone: str, batch: int) -> dict:
    for row in inference_rows(root, path):
        if row["backbone"] == backbone and row["batch"] == batch:
            return row
    raise SystemExit(f"{path}: no row for {backbone} at batch {batch}")


def goals(root: Path) -> str:
    cpu_head = read_json(root, CPU / "training.json")["head_only"]
    gpu_head = read_json(root, H200_RUN2 / "train50.json")["head_only"]
    head = [head_ratio(cpu_head), head_ratio(gpu_head)]

    ort = {
        (backbone, batch): inference_row(root, CPU / "inference.json", backbone, batch)
        for backbone in ("efficientnet_lite0", "resnet18")
        for batch in (1, 32)
    }
    speedup = {key: row["ort cpu fp32"] / row["torch fp32"] for key, row in ort.items()}

    resnet50 = full_row(root, H200_RUN2 / "train50.json", "resnet50")
    default, compiled = resnet50["ours"]["epoch"], resnet50["ours+compile"]["epoch"]
    baseline = resnet50["baseline"]["epoch"]

    fp16 = inference_row(root, H200_ISSUE16 / "inference.json", "resnet18", 64)
    ort_fp16 = fp16["ort cuda fp16"]

    total = bench_seconds(root)

    def verdict(met: bool) -> str:
        return "met" if met else "**not met**"

    rows = [
        [
            "head-only, later epochs >= 20x faster than the baseline",
            f"CPU {times(head[0], 0)}, H200 {times(head[1], 0)}",
            verdict(min(head) >= 20),
        ],
        [
            "ONNX Runtime >= 1.5x PyTorch eager on CPU, batch 1 and 32",
            f"Lite0 {times(speedup['efficientnet_lite0', 1])} / {times(speedup['efficientnet_lite0', 32])}, "
            f"ResNet-18 {times(speedup['resnet18', 1])} / {times(speedup['resnet18', 32])}",
            verdict(min(speedup.values()) >= 1.5),
        ],
        [
            "ResNet-50, 224 px, full fine-tuning >= 2,500 img/s on one H100",
            f"H200: {count(default)} (defaults), {count(compiled)} with `train.compile`",
            verdict(default >= 2500) + " on an H200 (not run on an H100)",
        ],
        [
            ">= 1.3x the baseline on the same GPU",
            f"H200: {times(default / baseline)} (defaults), {times(compiled / baseline)} with `train.compile`",
            verdict(default / baseline >= 1.3),
        ],
        [
            "ResNet-18 fp16 ONNX >= 3,000 img/s model-side at batch 64",
            f"H200, ONNX Runtime CUDA: {count(ort_fp16)} img/s (PyTorch fp16: "
            f"{count(fp16['torch fp16 channels_last'])})",
            verdict(ort_fp16 >= 3000),
        ],
        ["`make bench` < 15 min on CPU", f"{count(total)} s", verdict(total < 15 * 60)],
    ]
    return "\n" + table(["goal (issue 5)", "measured", ""], rows) + "\n"


def break_even(head: dict) -> tuple[int, float, float]:
    """The first epoch after which ours has taken less time in all than the baseline, and both totals."""
    epoch, ours, baseline = 1, head["ours_first_s"], head["baseline_first_s"]
    if ours >= baseline and head["ours_later_s"] >= head["baseline_later_s"]:
        raise SystemExit("head-only: the pipeline never catches up with the baseline; rewrite BENCHMARKS.md section 1")
    while ours >= baseline:
        epoch, ours, baseline = epoch + 1, ours + head["ours_later_s"], baseline + head["baseline_later_s"]
    return epoch, ours, baseline


def val_images(args: dict) -> int:
    return max(10, args["images"] // 4)  # as benchmarks/training.py makes the validation folder


def head_only(root: Path) -> str:
    rows, notes = [], []
    for label, path in (("CPU", CPU / "training.json"), ("H200", H200_RUN2 / "train50.json")):
        result = read_json(root, path)
        args, head = result["args"], result["head_only"]
        rows.append(
            [
                f"{label}, {count(args['images'])} + {count(val_images(args))} images, {args['image_size']} px, "
                f"batch {args['batch_size']}",
                f"{fixed(head['baseline_first_s'], 2)} s",
                f"{fixed(head['baseline_later_s'], 2)} s",
                f"{fixed(head['ours_first_s'], 2)} s ({fixed(head['ours_decode_s'], 2)})",
                f"{fixed(head['ours_later_s'], 3)} s",
                f"{fixed(head['ours_uncached_later_s'], 2)} s",
                f"**{times(head_ratio(head), 0)}**",
            ]
        )
        if label == "H200":
            epoch, ours_total, baseline_total = break_even(head)
            run1 = read_json(root, H200_RUN1 / "train50.json")["head_only"]
            notes = [
                f"- H200, first epoch: ours {times(head['ours_first_s'] / head['baseline_first_s'], 1)} the "
                f"baseline's time, {fixed(head['ours_decode_s'], 2)} s of it decoding "
                f"{count(args['images'] + val_images(args))} JPEGs once ({fixed(run1['ours_decode_s'], 2)} s in "
                f"run 1, before `load_split` decoded on a thread pool).",
                f"- H200, time since the start: ours is ahead of the baseline from epoch {epoch} on "
                f"({fixed(ours_total, 2)} s against {fixed(baseline_total, 2)} s).",
            ]
    header = [
        "machine, size",
        "baseline first",
        "baseline later",
        "ours first (of it decoding)",
        "ours later",
        "later, without the cache",
        "later: baseline / ours",
    ]
    return "\n" + table(header, rows) + "\n\n" + "\n".join(notes) + "\n"


def throughput_rows(root: Path, sources: list[tuple[Path, str]]) -> list[list[str]]:
    rows = []
    for path, backbone in sources:
        row = full_row(root, path, backbone)
        baseline = row["baseline"]["epoch"]
        for variant, figures in row.items():
            if variant == "backbone":
                continue
            rows.append(
                [
                    BACKBONES.get(backbone, backbone),
                    variant,
                    count(figures["loader"]),
                    count(figures["step"]),
                    count(figures["epoch"]),
                    times(figures["epoch"] / baseline),
                ]
            )
    return rows


THROUGHPUT_HEADER = ["backbone", "variant", "loader", "step", "epoch", "epoch vs baseline"]


def sizes(root: Path, *paths: Path) -> str:
    """The files and the run sizes in their `args`, once per distinct size."""
    described: dict[str, list[str]] = {}
    for path in paths:
        args = read_json(root, path)["args"]
        size = (
            f"{count(args['images'])} images of {args['image_size']} px, batch {args['batch_size']}, "
            f"{args['epochs']} epochs per run, baseline with {args['baseline_workers']} loader workers"
        )
        described.setdefault(size, []).append(f"`{path.as_posix()}`")
    return "; ".join(f"{' and '.join(names)}: {size}" for size, names in described.items())


def gpu_training(root: Path) -> str:
    rows = throughput_rows(
        root,
        [
            (H200_RUN2 / "train50.json", "resnet50"),
            (H200_RUN1 / "train_small.json", "resnet18"),
            (H200_RUN1 / "train_small.json", "efficientnet_lite0"),
        ],
    )
    source = sizes(root, H200_RUN2 / "train50.json", H200_RUN1 / "train_small.json")
    return "\n" + table(THROUGHPUT_HEADER, rows) + f"\n\nFrom {source}.\n"


def run1_to_run2(root: Path) -> str:
    run1 = full_row(root, H200_RUN1 / "train50.json", "resnet50")["ours"]
    run2 = full_row(root, H200_RUN2 / "train50.json", "resnet50")
    serial = 1 / (1 / run1["loader"] + 1 / run1["step"])
    return (
        f'\n- ResNet-50, "ours", epoch: {count(run1["epoch"])} img/s in run 1, {count(run2["ours"]["epoch"])} '
        f"in run 2; loader alone: {count(run1['loader'])} -> {count(run2['ours']['loader'])} img/s.\n"
        f"- Run 1's epoch ({count(run1['epoch'])}) was about the serial sum of its loader ({count(run1['loader'])}) "
        f"and step ({count(run1['step'])}), which would give {count(serial)}, not their minimum.\n"
        f"- Deterministic kernels in run 2: {count(run2['ours']['epoch'])} img/s on, "
        f"{count(run2['ours+nondeterministic']['epoch'])} off (`train.deterministic: false`).\n"
    )


def profile_share(text: str, prefix: str, column: int, origin: str) -> str:
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0].startswith(prefix):
            return cells[column]
    raise SystemExit(f"{origin}: no row starting {prefix!r}")


def profile(root: Path) -> str:
    path = H200_RUN2 / "profile.txt"
    text = read_text(root, path)
    setup = search(r"^# benchmarks\.profile_training on [^:]*: (.*)$", text, str(path)).group(1)
    rates = search(r"^training pass images/s per epoch: (.*)$", text, str(path)).group(1)
    cpu, cuda = 1, 7  # the columns Self CPU % and Self CUDA % of torch.profiler's table
    return (
        f"\n`{path.as_posix()}` ({setup}; images/s per epoch: {rates}): the main thread spends "
        f"{profile_share(text, 'enumerate(DataLoader)', cpu, str(path))} of its CPU time waiting in "
        f"`enumerate(DataLoader)` and {profile_share(text, 'cudaHostAlloc', cpu, str(path))} in `cudaHostAlloc`; "
        f"on the GPU, BatchNorm backward ({profile_share(text, 'aten::native_batch_norm_backward', cuda, str(path))}) "
        f"and dtype copies, `aten::copy_` ({profile_share(text, 'aten::copy_', cuda, str(path))}), lead.\n"
    )


def cpu_training(root: Path) -> str:
    path = CPU / "training.json"
    result = read_json(root, path)
    rows = throughput_rows(root, [(path, row["backbone"]) for row in result["full"]])
    ours = [row["ours"] for row in result["full"]]
    loaders = [figures["loader"] for row in result["full"] for figures in (row["baseline"], row["ours"])]
    steps = [figures["step"] for row in result["full"] for figures in (row["baseline"], row["ours"])]
    gains = [o["epoch"] / row["baseline"]["epoch"] for o, row in zip(ours, result["full"], strict=True)]
    return (
        "\n"
        + table(THROUGHPUT_HEADER, rows)
        + f"\n\nFrom {sizes(root, path)}. Loaders {count(min(loaders))}-{count(max(loaders))} img/s, steps "
        f"{count(min(steps))}-{count(max(steps))} img/s; ours against the baseline per epoch: "
        f"{times(min(gains))}-{times(max(gains))}.\n"
    )


def cpu_inference(root: Path) -> str:
    path = CPU / "inference.json"
    rows = [
        [
            BACKBONES.get(row["backbone"], row["backbone"]),
            str(row["batch"]),
            count(row["torch fp32"]),
            count(row["ort cpu fp32"]),
            count(row["ort cpu fp16"]),
            f"**{times(row['ort cpu fp32'] / row['torch fp32'])}**",
        ]
        for row in inference_rows(root, path)
    ]
    header = ["backbone", "batch", "PyTorch fp32", "ORT fp32", "ORT fp16 graph", "ORT / PyTorch"]
    return "\n" + table(header, rows) + f"\n\nFrom `{path.as_posix()}`.\n"


def gpu_inference(root: Path) -> str:
    path = H200_ISSUE16 / "inference.json"
    result = read_json(root, path)
    rows = [
        [
            BACKBONES.get(row["backbone"], row["backbone"]),
            str(row["batch"]),
            count(row["torch fp32"]),
            count(row["torch fp16 channels_last"]),
            count(row["ort cuda fp32"]),
            count(row["ort cuda fp16"]),
            times(row["ort cuda fp16"] / row["torch fp16 channels_last"]),
        ]
        for row in result["rows"]
    ]
    header = ["backbone", "batch", "PyTorch fp32", "PyTorch fp16, channels_last", "ORT CUDA fp32", "ORT CUDA fp16"]
    resnet50 = [row for row in result["rows"] if row["backbone"] == "resnet50" and row["batch"] >= 32]
    best = max(resnet50, key=lambda row: row["ort cuda fp16"])
    tensorrt = "did not load" if "TensorrtExecutionProvider" in result["not_loaded"] else "loaded"
    by_batch = ", ".join(f"{count(row['ort cuda fp16'])} at batch {row['batch']}" for row in resnet50)
    return (
        "\n"
        + table([*header, "ORT fp16 / PyTorch fp16"], rows)
        + f"\n\nResNet-50 fp16 through ONNX Runtime: {count(best['ort cuda fp16'])} img/s at batch {best['batch']} "
        f"(issue 16's goal: >= 10,000; {by_batch}). "
        f"TensorRT provider: {tensorrt}. From `{path.as_posix()}` (`{result['command']}`, {result['machine']}, "
        f"ONNX Runtime {result['onnxruntime']}).\n"
    )


SERVED_RUNS = [  # (file, what differs); run 1 is before the cuDNN fix, run 3 probes the batching settings
    ("run1-exhaustive-served_w1.json", "cuDNN exhaustive search (before the fix)"),
    ("run1-exhaustive-served_w8.json", "cuDNN exhaustive search (before the fix)"),
    ("run2-served_w1.json", ""),
    ("run2-served_w8.json", ""),
    ("run2-served_w8_batch16.json", ""),
    ("run2-served_w8_photos.json", "synthetic 640 px JPEG photos"),
    ("run3-served_w8_batching_off.json", "adaptive batching off"),
    ("run3-served_w8_max_latency_100ms.json", "`SERVING_MAX_LATENCY_MS=100`: shed requests were 500s then"),
]


def gpu_served(root: Path) -> str:
    rows = []
    for name, note in SERVED_RUNS:
        record = read_json(root, H200_ISSUE16 / name)
        ((mode_name, mode),) = record["modes"].items()
        per_call = mode.get("requests_per_call", mode["batch"]) * record["images_per_request"]
        agreement = record["gpu_cpu_top1_agreement"]
        rows.append(
            [
                f"`{name}`" + (f" ({note})" if note else ""),
                f"{record['workers']} / {record['clients']} / {record['images_per_request']}",
                f"{mode['requests']:,}",
                str(mode["errors"]),
                fixed(mode["throughput"], 1),
                count(mode["images_per_s"]),
                f"{count(mode['p50_ms'])} / {count(mode['p99_ms'])}",
                fixed(per_call, 1) if mode_name.endswith("on") else "1 (off)",
                f"{agreement[0]}/{agreement[1]}",
            ]
        )
    header = [
        "run",
        "front workers / clients / images a request",
        "requests",
        "errors",
        "req/s",
        "images/s",
        "p50 / p99 ms",
        "images a model call",
        "CUDA = CPU top-1",
    ]

    def mode(name: str) -> dict:
        return next(iter(read_json(root, H200_ISSUE16 / name)["modes"].values()))

    first = read_json(root, H200_ISSUE16 / "run2-served_w8.json")
    parts = first["where_the_time_goes"]
    w1, w8 = mode("run2-served_w1.json"), mode("run2-served_w8.json")
    old_w1, old_w8 = mode("run1-exhaustive-served_w1.json"), mode("run1-exhaustive-served_w8.json")
    batch16, off = mode("run2-served_w8_batch16.json"), mode("run3-served_w8_batching_off.json")
    return (
        "\n"
        + table(header, rows)
        + f"\n\nEach run {first['seconds']} s after {first['warmup_seconds']} s of warm-up, adaptive batching on "
        f"unless said, model `{first['model']}` on {', '.join(first['providers'])}, {first['machine']}. Files in "
        f"`{H200_ISSUE16.as_posix()}/`.\n\n"
        f"- cuDNN's heuristic against its exhaustive search (run 2 / run 1): requests a second "
        f"{times(w1['throughput'] / old_w1['throughput'])} with one front worker, "
        f"{times(w8['throughput'] / old_w8['throughput'])} with eight. Eight front workers against one (run 2): "
        f"{times(w8['throughput'] / w1['throughput'])}.\n"
        f"- One model worker's calls a second: {fixed(w8['throughput'], 1)} of one image each (merged into batches "
        f"of {fixed(w8['batch'], 1)}), {fixed(batch16['throughput'], 1)} of 16 images each "
        f"({count(batch16['images_per_s'])} images/s), {fixed(off['throughput'], 1)} with batching off.\n"
        f"- The served path's parts measured alone (run 2, eight workers): decode + resize "
        f"{fixed(parts['decode_ms_per_image'], 2)} ms an image on one core; the model "
        f"{count(parts['model_images_per_s'])} images/s at batch {parts['model_batch']}, "
        f"{times(parts['model_images_per_s'] / batch16['images_per_s'], 1)} the best served images/s.\n"
    )


def gpu_decode(root: Path) -> str:
    path = H200_ISSUE16 / "decode.json"
    result = read_json(root, path)
    rows = []
    for row in result["rows"]:
        cpu_key = next(key for key in row if key.startswith("cpu_"))
        threads = cpu_key.split("_")[1]
        rows.append(
            [
                f"{row['photo_px']} px",
                str(row["images"]),
                f"{count(row[cpu_key])} ({threads} threads)",
                count(row["gpu_nvimgcodec_images_per_s"]),
                times(row["gpu_nvimgcodec_images_per_s"] / row[cpu_key], 1),
                f"{fixed(row['pixel_mean_abs_difference'], 3)} / {row['pixel_max_abs_difference']}",
            ]
        )
    header = ["JPEG photos", "images", "Pillow, images/s", "nvImageCodec + torch, images/s", "GPU / CPU"]
    return (
        "\n"
        + table([*header, "pixel difference mean / max"], rows)
        + f"\n\n{result['gpu']}; from `{path.as_posix()}`.\n"
    )


def default_gpu(root: Path) -> str:
    log_path = H200_RUN2 / "default_run.log"
    wall = search(r"^train stage wall (\d+) s", read_text(root, log_path), str(log_path)).group(1)
    runs = [
        ("the committed default run, `metrics/`", "", "metrics/train.json", "metrics/evaluate.json"),
        (
            f"`{H200_RUN2.as_posix()}`, H200",
            f"{wall} s",
            (H200_RUN2 / "train.json").as_posix(),
            (H200_RUN2 / "evaluate.json").as_posix(),
        ),
    ]
    rows = []
    for label, stage_wall, train_path, evaluate_path in runs:
        train, evaluate = read_json(root, train_path), read_json(root, evaluate_path)
        rows.append(
            [
                label,
                stage_wall or "not recorded",
                fixed(train["train_seconds"], 1),
                f"{fixed(train['best_val_accuracy'], 4)} (epoch {train['best_epoch']})",
                fixed(evaluate["accuracy"], 4),
                fixed(evaluate["macro_f1"], 4),
                fixed(evaluate["ece"], 4),
            ]
        )
    header = ["run", "train stage wall", "train_seconds", "best val accuracy", "test accuracy", "macro-F1", "ECE"]
    return "\n" + table(header, rows) + f"\n\nThe stage wall time is from `{log_path.as_posix()}`.\n"


def load_test(root: Path) -> str:
    path = CPU / "load_test.json"
    result = read_json(root, path)
    modes = result["modes"]
    rows = [
        [
            name,
            count(figures["requests"]),
            str(figures["errors"]),
            fixed(figures["throughput"], 1),
            count(figures["p50_ms"]),
            count(figures["p99_ms"]),
            fixed(figures["batch"], 1),
        ]
        for name, figures in modes.items()
    ]
    on, off = modes["adaptive batching on"], modes["adaptive batching off"]
    earlier = result.get("earlier_run")
    lines = [
        "",
        f"**{result['date']}, {result['machine']}; {', '.join(result['providers'])}.** Model: {result['model']}. "
        f"{result['clients']} concurrent clients, {result['seconds']} s per mode after {result['warmup_seconds']} s "
        "of warm-up; the clients run on the same machine as the server.",
        "",
        table(
            ["mode", f"requests in {result['seconds']} s", "errors", "req/s", "p50 ms", "p99 ms", "mean batch"], rows
        ),
        "",
        f"On/off: throughput {times(on['throughput'] / off['throughput'])}, p99 latency "
        f"{times(on['p99_ms'] / off['p99_ms'])}."
        + (
            f" An earlier run the same day: {fixed(earlier['throughput_on'], 1)} against "
            f"{fixed(earlier['throughput_off'], 1)} req/s ({times(earlier['throughput_ratio'])}, p99 "
            f"{times(earlier['p99_ratio'])}), {earlier['errors']} errors."
            if earlier
            else ""
        )
        + f" From `{path.as_posix()}`: {result['source']}.",
        "",
    ]
    return "\n".join(lines)


def soak(root: Path) -> str:
    result = read_json(root, SOAK)
    memory, run = result["memory_attack"], result["soak"]
    attack = [[f"`{name}`", ", ".join(map(str, codes))] for name, codes in memory["statuses"].items()]
    figures = [
        ["good requests", count(run["good_requests"])],
        ["bad requests", count(run["bad_requests"])],
        ["5xx answers", str(run["server_errors_5xx"])],
        ["wrong labels", str(run["wrong_labels"])],
        ["errors of any kind (5xx, a good request refused, a bad one accepted)", str(run["errors"])],
        ["p50 / p99 of good requests", f"{count(run['p50_ms'])} / {count(run['p99_ms'])} ms"],
        ["server memory, start / end", f"{count(run['memory_start_mib'])} / {count(run['memory_end_mib'])} MiB"],
    ]
    timeline = run["memory_timeline"]
    warm = next(sample for sample in timeline if sample["t_s"] >= 240)  # after the first minutes' warm-up
    figures.append(
        [
            f"server memory, at {warm['t_s']} s / end: growth after warm-up",
            f"{count(warm['total_mib'])} / {count(timeline[-1]['total_mib'])} MiB: "
            f"{count(timeline[-1]['total_mib'] - warm['total_mib'])} MiB",
        ]
    )
    roles = [key for key in timeline[0] if key not in ("t_s", "total_mib")]
    samples = [sample for sample in timeline if sample["t_s"] <= warm["t_s"]] + [timeline[-1]]
    memory_rows = [[f"{s['t_s']}", *(count(s[role]) for role in roles), count(s["total_mib"])] for s in samples]
    return "\n".join(
        [
            "",
            f"**{result['date']}, {result['machine']}.** Model: {result['model']}. From `{SOAK.as_posix()}`.",
            "",
            f"Memory attack: {count(memory['requests'])} requests, 8 at a time; server and workers "
            f"{count(memory['idle_mib'])} MiB idle, peak {count(memory['peak_mib'])} MiB: "
            f"**{count(memory['peak_above_idle_mib'])} MiB above idle** (goal: under 1 GB).",
            "",
            table(["attack file", "statuses"], attack),
            "",
            f"Soak: {run['clients']} clients for {run['seconds']} s, 30% of requests bad.",
            "",
            table(["", "figure"], figures),
            "",
            "Resident memory (MiB) of the server's processes during the soak, from the samples taken every 30 s:",
            "",
            table(["seconds", *(role.rsplit(" ", 1)[0] for role in roles), "total"], memory_rows),
            "",
        ]
    )


def data_scale(root: Path, source: Path = DATA_SCALE) -> str:
    """benchmarks/data_scale.py: the in-memory path against the decoded cache, by folder size."""
    result = read_json(root, source)
    rows = []
    for entry in result["results"]:
        memory, disk = entry["memory"], entry["disk"]
        rows.append(
            [
                count(entry["images"]),
                f"{fixed(memory['decode_s_per_image'] * 1e3, 3)} / {fixed(disk['decode_s_per_image'] * 1e3, 3)}",
                fixed(disk["reopen_s"] * 1e3, 1),
                f"{count(memory['loader_images_per_s'])} / {count(disk['loader_images_per_s'])} "
                f"({count(disk['loader_cold_images_per_s'])} cold)",
                f"{fixed(memory['train_images_per_s'], 1)} / {fixed(disk['train_images_per_s'], 1)}",
                f"{count(memory['peak_private_mib'])} / {count(disk['peak_private_mib'])}",
                f"{count(memory['peak_rss_mib'])} / {count(disk['peak_rss_mib'])}",
            ]
        )
    first, last = result["results"][0], result["results"][-1]
    build_growth = last["disk"]["decode_s_per_image"] / first["disk"]["decode_s_per_image"]
    private_growth = last["disk"]["peak_private_mib"] / first["disk"]["peak_private_mib"]
    loader = [e["disk"]["loader_images_per_s"] / e["memory"]["loader_images_per_s"] for e in result["results"]]
    return "\n".join(
        [
            "",
            f"{scale_run(result, source)} Each figure is memory / disk (cache).",
            "",
            table(
                [
                    "images",
                    "decode, ms per image (disk: building the cache)",
                    "later runs: open the cache, ms",
                    "loader pass, images/s",
                    "training, images/s",
                    "peak private RSS, MiB",
                    "peak RSS, MiB",
                ],
                rows,
            ),
            "",
            f"From {count(first['images'])} to {count(last['images'])} images: cache build time per image "
            f"{times(build_growth)} (goal: within 20%), peak private memory of the cached path "
            f"{times(private_growth)}; the cached loader runs at {times(min(loader))} to {times(max(loader))} "
            "the in-memory one's speed, warm (goal: within 10%).",
            "",
        ]
    )


def scale_run(result: dict, source: Path) -> str:
    """What a data_scale run was: the machine, its settings and its file."""
    args = result["args"]
    return (
        f"**{result['machine']}.** {args['image_size']} px, batch {args['batch_size']}, {args['train_steps']} "
        f"training steps of a random-init {BACKBONES[args['backbone']]}. From `{source.as_posix()}`."
    )


def memory_split(figures: dict) -> str:
    return " / ".join(count(figures[key]) for key in ("peak_private_mib", "peak_file_mapped_mib", "peak_rss_mib"))


def shards_part(result: dict) -> list[str]:
    """The shards against the in-memory path, in the same run."""
    rows = []
    for entry in result["results"]:
        memory, shards = entry["memory"], entry["shards"]
        against = {key: times(shards[key] / memory[key]) for key in shards if key in memory}
        rows.append(
            [
                count(entry["images"]),
                f"{fixed(shards['decode_s_per_image'] * 1e3, 3)} ({against['decode_s_per_image']})",
                f"{count(shards['loader_images_per_s'])} ({against['loader_images_per_s']})",
                f"{fixed(shards['train_images_per_s'], 1)} ({against['train_images_per_s']})",
                f"{count(shards['peak_private_mib'])} / {count(shards['peak_rss_mib'])}",
            ]
        )
    header = [
        "images",
        "write the shards, ms per image (against decoding in memory)",
        "loader pass from the shards, images/s, warm",
        "training, images/s",
        "peak private / all RSS, MiB",
    ]
    return ["Shards against memory, in the same run:", "", table(header, rows), ""]


def ranks_part(result: dict) -> list[str]:
    """Two processes mapping one cache against one, and against two in-memory processes."""
    rows = []
    for entry in result["results"]:
        disk, ranks = entry["disk"], entry["disk-2ranks"]["ranks"]
        # the machine holds each process's private pages, and the cache's mapped pages once (page cache)
        together = sum(rank["peak_private_mib"] for rank in ranks) + max(rank["peak_file_mapped_mib"] for rank in ranks)
        in_memory = 2 * entry["memory"]["peak_rss_mib"]  # a copy of the split each
        rows.append(
            [
                count(entry["images"]),
                memory_split(disk),
                " and ".join(memory_split(rank) for rank in ranks),
                f"{count(together)} ({times(together / disk['peak_rss_mib'])})",
                count(in_memory),
            ]
        )
    header = [
        "images",
        "one process",
        "each of two processes",
        "two together (against one)",
        "two in memory, a copy each (2 x one)",
    ]
    return [
        "Two processes mapping one cache at once, against one (peak private / file-mapped / all RSS, MiB); "
        "together: both processes' private memory and the mapped cache once, as the machine holds it:",
        "",
        table(header, rows),
        "",
    ]


def other_modes(result: dict) -> list[str]:
    """The shards and two-process parts, for the modes the run measured."""
    measured = set(result["results"][0])
    return (shards_part(result) if "shards" in measured else []) + (
        ranks_part(result) if "disk-2ranks" in measured else []
    )


def data_scale_shards(root: Path, source: Path = DATA_SCALE_SHARDS) -> str:
    """benchmarks/data_scale.py --modes ...: LitData shards against the in-memory path, and two processes
    mapping one cache against one process."""
    result = read_json(root, source)
    return "\n".join(["", scale_run(result, source), "", *other_modes(result)])


def data_scale_all(root: Path, source: Path) -> str:
    """A run of every mode: memory against disk, then the shards and two-process parts under one heading."""
    return data_scale(root, source) + "\n".join(["", *other_modes(read_json(root, source))])


# ---------------------------------------------------------------- halving against the grid (issue 14)

ISSUE14 = BENCH / "2026-11-28-cpu-issue14-overhead"
# Each halving run of the sitting with its grid: (data, halving report, its log, grid report, its log, when).
HALVING_RUNS = [
    (
        "animal-shape",
        ISSUE14 / "halving-f-animal-shape.json",
        "f",
        "reports/grid/compare.json",
        "grid",
        "before the grid",
    ),
    ("animal-shape", "reports/halving/compare.json", "g", "reports/grid/compare.json", "grid", "after the grids"),
    ("digits", ISSUE14 / "halving-f-digits.json", "f", ISSUE14 / "grid-first-digits.json", "grid", "before the grid"),
    ("digits", ISSUE14 / "halving-g-digits.json", "g", ISSUE14 / "grid-first-digits.json", "grid", "after the grid"),
    (
        "digits",
        "reports/halving/digits/compare.json",
        "h",
        "reports/grid/digits/compare.json",
        "grid2",
        "right after grid2",
    ),
]


def lp_ft_epoch_seconds(root: Path, log: Path, epochs: int) -> float:
    """Mean seconds of `lp-ft`'s fine-tuning epochs of `epochs`-epoch runs in a comparison's log: the gauge of the
    machine's speed during it (the work that dominates both methods, the same work in both)."""
    pattern = rf"^lp-ft: fine-tune \d+/{epochs} .*, ([\d.]+) s$"
    seconds = [float(value) for value in re.findall(pattern, (root / log).read_text(encoding="utf-8"), re.M)]
    return sum(seconds) / len(seconds)


def halving_vs_grid(root: Path) -> str:
    rows, plain, equal = [], [], []
    cores = read_json(root, HALVING_RUNS[0][3])["setup"]["load_average"]["cores"]
    for data, halving_path, tag, grid_path, grid_tag, when in HALVING_RUNS:
        halving, grid = read_json(root, halving_path), read_json(root, grid_path)
        h, g = halving["setup"], grid["setup"]
        h_gauge = lp_ft_epoch_seconds(root, ISSUE14 / f"{tag}-{data}.log", h["epochs"])
        g_gauge = lp_ft_epoch_seconds(root, ISSUE14 / f"{grid_tag}-{data}.log", g["epochs"])
        plain.append(100 * h["seconds"] / g["seconds"])
        equal.append(100 * (h["seconds"] / h_gauge) / (g["seconds"] / g_gauge))
        rows.append(
            [
                data,
                f"{grid_tag}: {count(g['seconds'])} / {count(g['train_seconds'])}",
                f"{tag}, {when}",
                f"{count(h['seconds'])} / {count(h['train_seconds'])}",
                f"{fixed(plain[-1], 1)}% ({fixed(100 * h['train_seconds'] / g['train_seconds'], 1)}%)",
                f"{fixed(h_gauge, 1)} / {fixed(g_gauge, 1)}",
                f"{fixed(equal[-1], 1)}%",
                f"`{recommended_strategy(grid)}` / `{recommended_strategy(halving)}`",
            ]
        )
    return "\n".join(
        [
            f"**{cores} cores, this project's CPU sandbox.** From `{ISSUE14.as_posix()}/` "
            "(the halving JSON and logs there, the grids and the committed halving runs in `reports/`).",
            "",
            table(
                [
                    "data",
                    "grid: whole / training s",
                    "halving run",
                    "halving: whole / training s",
                    "of the grid: whole (training)",
                    "`lp-ft` epoch s, halving / grid",
                    "whole, at equal speed",
                    "recommended, grid / halving",
                ],
                rows,
            ),
            "",
            f"Halving took {fixed(min(equal), 1)}-{fixed(max(equal), 1)}% of the grid's whole time at equal machine "
            f"speed (goal: at most 25%), {fixed(min(plain), 1)}-{fixed(max(plain), 1)}% plain.",
        ]
    )


GENERATORS: dict[str, Callable[[Path], str]] = {
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
    "data-scale-shards": data_scale_shards,
    "data-scale-224": lambda root: data_scale_all(root, DATA_SCALE_224),
    "data-scale-224-100k": lambda root: data_scale_all(root, DATA_SCALE_224_100K),
    "halving": halving_vs_grid,
}


def render_benchmarks(root: Path, text: str) -> str:
    """`text` (BENCHMARKS.md) with every generated block rewritten from the files."""
    found = MARKER.findall(text)
    names = [name for name, _ in found]
    unknown = sorted(set(names) - set(GENERATORS))
    missing = sorted(set(GENERATORS) - set(names))
    repeated = sorted({name for name in names if names.count(name) > 1})
    if unknown or missing or repeated:
        raise SystemExit(
            f"{BENCHMARKS_MD}: generated blocks do not match docs/results.py: unknown {unknown}, "
            f"missing {missing}, repeated {repeated}"
        )

    def block(match: re.Match) -> str:
        body = GENERATORS[match[1]](root).strip("\n")
        return f"<!-- generated:{match[1]} -->\n\n{body}\n\n<!-- /generated:{match[1]} -->"

    return MARKER.sub(block, text)


# ---------------------------------------------------------------- output


def outputs(root: Path) -> dict[Path, str]:
    """What the docs should hold, by path relative to `root`."""
    return {
        RESULTS_MD: render_results(root),
        BENCHMARKS_MD: render_benchmarks(root, read_text(root, BENCHMARKS_MD)),
    }


def write_atomic(path: Path, text: str) -> bool:
    """Replace `path` with `text` in one rename; False (and nothing written) when it already holds it."""
    data = text.encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the project copy to read and write (default: this)")
    args = parser.parse_args(argv)
    for relative, text in outputs(args.root).items():
        changed = write_atomic(args.root / relative, text)
        print(f"{relative.as_posix()}: {'written' if changed else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
