"""Write every measured figure of the docs from the committed result files: `make docs`.

    python docs/results.py               # docs/results.md, and the generated blocks of BENCHMARKS.md
    python docs/results.py --root DIR    # the same for another copy of the project (tests/test_docs.py)

docs/results.md is written whole from metrics/*.json (the default run) and reports/**/compare.json
(`make compare`). In BENCHMARKS.md only the text between `<!-- generated:NAME -->` and
`<!-- /generated:NAME -->` is replaced, from the files that benchmarks/results/index.yaml names for NAME;
the prose around it is hand-written and carries no figures. A marker without an index entry, or an entry
without its marker, stops the script. Same input files, byte-identical output; each file is replaced
atomically, and left alone when nothing changed. No torch or numpy: it reads JSON and YAML.
"""

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ and docs/ are folders of scripts, not installed packages

from pydantic import BaseModel, ConfigDict, validate_call  # noqa: E402
from ruamel.yaml import YAML, YAMLError  # noqa: E402

from benchmarks.figures import EvaluateMetrics, ExportMetrics, PrepareMetrics, TrainMetrics  # noqa: E402
from docs.benchmark_blocks import (  # noqa: E402  # noqa: E402
    RENDERERS,
    Folder,
    Record,
    Template,
    code,
    count,
    fixed,
    read_metrics,
    recommended_strategy,
    render_template,
    report,
    results_machine,
    table,
)
from pipeline.atomic import atomic_path  # noqa: E402
from pipeline.choice.compare_report import RANDOM_INIT_PROBE, CompareReport  # noqa: E402

RESULTS_MD = Path("docs/results.md")
BENCHMARKS_MD = Path("BENCHMARKS.md")
INDEX = Path("benchmarks/results/index.yaml")
CALIBRATION = Path("reports/calibration")
MARKER = re.compile(r"<!-- generated:([a-z0-9-]+) -->(.*?)<!-- /generated:\1 -->", re.DOTALL)


class Index(Record):
    """benchmarks/results/index.yaml: its header says what each part is."""

    folders: dict[str, Folder]  # by name
    blocks: dict[str, dict[str, object]]  # a template, or a renderer's parameters, checked by its signature
    reports: dict[str, str]


def read_index(root: Path) -> Index:
    try:
        return Index.model_validate(YAML(typ="safe").load(root / INDEX))
    except (OSError, ValueError, YAMLError) as error:
        raise SystemExit(f"{INDEX}: {error}") from None


# ---------------------------------------------------------------- docs/results.md


def default_run(root: Path) -> str:
    prepare, train = read_metrics(root, "prepare", PrepareMetrics), read_metrics(root, "train", TrainMetrics)
    evaluate, export = read_metrics(root, "evaluate", EvaluateMetrics), read_metrics(root, "export", ExportMetrics)
    images = (
        f"{count(prepare.images)} in {prepare.classes} classes, {prepare.skipped} skipped: "
        f"{count(prepare.train_images)} train, {count(prepare.val_images)} validation, "
        f"{count(prepare.test_images)} test"
    )
    rows = [
        ["prepared images", images],
        ["test accuracy", f"**{fixed(evaluate.accuracy, 4)}** (one test image is "
         f"{fixed(100 / prepare.test_images, 2)} points)"],
        ["test macro-F1", fixed(evaluate.macro_f1, 4)],
        ["test ECE (expected calibration error)", fixed(evaluate.ece, 4)],
        ["best validation accuracy", f"{fixed(train.best_val_accuracy, 4)}, at epoch {train.best_epoch}"],
        ["trained parameters", f"{count(train.trainable_params)} of {count(train.total_params)} "
         f"({fixed(100 * train.trainable_params / train.total_params, 1)}%)"],
        ["ONNX Runtime against PyTorch, largest difference", f"{export.parity_max_abs_diff:.1e}"],
        ["ONNX Runtime test accuracy", fixed(export.onnx_test_accuracy, 4)],
    ]  # fmt: skip
    scores = evaluate.per_class.items()
    per_class = [[f"`{name}`", fixed(row.precision, 3), fixed(row.recall, 3)] for name, row in scores]
    return "\n".join(
        [
            "## The default run (`make run`)",
            "",
            "From `metrics/prepare.json`, `metrics/train.json`, `metrics/evaluate.json` and `metrics/export.json`: "
            "the `dvc repro` committed with the code, on the default `params.yaml` (`dvc.lock` records its "
            f"params and data), made on {results_machine(root)} (`.ci/results-machine`), where a fresh clone's "
            "`make run` makes them again bit for bit (CI checks it); other processors give other float results. "
            "The training's times are in MLflow. BENCHMARKS.md has a run of the pipeline on a GPU, with the "
            "default strategy of its day.",
            "",
            table(["", "value"], rows),
            "",
            "Per class, on the test split:",
            "",
            table("class | precision | recall", per_class),
        ]
    )


def compare_reports(root: Path) -> dict[Path, CompareReport]:
    """Every committed reports/**/compare.json but the calibration cases', by its path from the project root, in
    the order of the page."""
    paths = sorted((path.relative_to(root) for path in (root / "reports").rglob("compare.json")), key=Path.as_posix)
    return {path: report(root, path) for path in paths if CALIBRATION not in path.parents}


class ListedCase(BaseModel):
    """A case of reports/calibration/cases.yaml, as far as this page shows it (the model with its transform
    and settings, which needs numpy: pipeline.choice.calibration_cases)."""

    model_config = ConfigDict(extra="ignore")
    name: str
    family: str
    data: str


class CaseList(BaseModel):
    model_config = ConfigDict(extra="ignore")
    cases: list[ListedCase]


def calibration_row(root: Path, case: ListedCase) -> list[str]:
    path = CALIBRATION / case.name / "compare.json"
    if not (root / path).is_file():
        return [code(case.name), case.family, "-", "-", "not built yet", "-", "-", "-"]
    compared = report(root, path)
    setup, summaries = compared.setup, compared.summaries
    best = recommended_strategy(compared)
    gain = 100 * (max(s.mean for key, s in summaries.items() if key != "head") - summaries["head"].mean)
    link = f"[{case.name}](../{path.with_suffix('.md').as_posix()})"
    return [
        link,
        case.family,
        f"{setup.train_per_class} / {setup.epochs}",
        str(setup.image_size),
        fixed(summaries["head"].mean, 3),
        f"`{best}`",
        fixed(summaries[best].mean, 3),
        f"{gain:+.1f}",
    ]


def calibration_section(root: Path) -> str:
    """One row per case of the verdict's calibration set, built or not, in the list's order."""
    listed = CaseList.model_validate(YAML(typ="safe").load((root / CALIBRATION / "cases.yaml").read_text()))
    header = "case | family | per class / epochs | px | head test | recommended | its test"
    header += " | best fine-tuning over the head, points"
    return "\n".join(
        [
            "## The verdict's calibration set",
            "",
            f"The comparisons the verdict's rule is fitted and checked on ({code(CALIBRATION / 'cases.yaml')}; how: "
            "[README](../README.md#is-the-head-enough-ask-first)). Accuracy: test, mean over seeds 0-2.",
            "",
            table(header, [calibration_row(root, case) for case in listed.cases]),
        ]
    )


def strategy_rows(compared: CompareReport) -> list[list[str]]:
    seeds, gains = compared.setup.seeds, compared.gain_per_minute
    rows = []
    for key, summary in compared.summaries.items():
        by_seed = {run.seed: run for run in compared.runs if run.strategy == key}
        params = sorted({run.trainable_params for run in by_seed.values()} or {summary.trainable_params})
        trained = count(params[0]) if len(params) == 1 else f"{count(params[0])}-{count(params[-1])}"
        per_seed = " / ".join(fixed(by_seed[seed].train_seconds, 1) if seed in by_seed else "-" for seed in seeds)
        row = [f"`{summary.strategy}`", summary.over_seeds(validation=True), summary.over_seeds()]
        row += [str(summary.runs), trained, fixed(summary.train_seconds, 1), per_seed]
        rows.append(row + ([f"{gains[key]:+.2f}" if key in gains else "-"] if gains else []))
    return rows


def compare_section(root: Path, reports: dict[Path, CompareReport], path: Path, note: str | None) -> str:
    compared = reports[path]
    setup = compared.setup
    markdown = path.with_suffix(".md")
    method = "halving, stopped at " if setup.method == "halving" else ""
    seeds = " / ".join(str(seed) for seed in setup.seeds)
    header = "strategy | validation accuracy (mean ± std) | test accuracy (mean ± std) | runs | trained parameters"
    header += f" | train s (mean) | train s, seed {seeds}"
    header += " | points over the head per training minute" if compared.gain_per_minute else ""
    lines = [
        f"### {Path(setup.data_source).name}, {method}{setup.epochs} epochs ({code(path)})",
        "",
        f"Data `{setup.data_source}`: {count(setup.train_images)} training images "
        f"({setup.train_per_class} per class at most), {count(setup.val_images)} validation, "
        f"{count(setup.test_images)} test, {setup.classes} classes, at {setup.image_size} px. "
        f"Backbone `{setup.backbone}` ({setup.weights}); {setup.epochs} epochs per fine-tuning phase, "
        f"{setup.head_epochs} per head phase (on cached features); seeds {', '.join(map(str, setup.seeds))}. "
        f"{setup.date}, git {setup.git_commit[:7]}."
        + (f" Full report: [{markdown.as_posix()}](../{markdown.as_posix()})." if (root / markdown).is_file() else ""),
        "",
        table(header, strategy_rows(compared)),
        "",
        "The report's recommendation:",
        "",
        *(f"- {line}" for line in compared.recommendation),
    ]
    lines += shift_section(compared) + halving_section(reports, compared)
    return "\n".join(lines + (["", note] if note else []))


def shift_section(compared: CompareReport) -> list[str]:
    """Clean against shifted test accuracy, for reports made since the shifted copy exists."""
    shifted = compared.shifted_test
    if shifted is None:
        return []
    rows = [
        [f"`{name}`", fixed(row.clean, 3), fixed(row.shifted, 3), fixed(100 * row.drop, 1)]
        + [fixed(value, 3) for value in row.by_corruption.values()]
        for name, row in shifted.strategies.items()
    ]
    corruptions = list(next(iter(shifted.strategies.values())).by_corruption)
    return [
        "",
        f"Clean against shifted test accuracy (each test image corrupted once, drawn by seed {shifted.seed}; "
        "mean over the seeds):",
        "",
        table(["strategy", "clean", "shifted", "drop, points", *corruptions], rows),
    ]


def grid_counterparts(reports: dict[Path, CompareReport], halving: CompareReport) -> dict[Path, CompareReport]:
    """The committed grid comparisons of the same data at the budget a halving report's rungs led up to."""
    setup, budget = halving.setup, halving.halving.budget
    wanted = (setup.data_source, setup.image_size, setup.seeds, budget.epochs, budget.train_per_class)
    return {
        path: grid
        for path, grid in reports.items()
        if (grid.setup.method or "grid") == "grid"
        and wanted == (grid.setup.data_source, grid.setup.image_size, grid.setup.seeds, grid.setup.epochs,
                       grid.setup.train_per_class)
    }  # fmt: skip


def load_text(load: list[float]) -> str:
    return " / ".join(fixed(value, 1) for value in load)


def halving_section(reports: dict[Path, CompareReport], compared: CompareReport) -> list[str]:
    halving, setup = compared.halving, compared.setup
    if halving is None:
        return []
    rows = [
        [str(rung.rung), str(rung.epochs), count(rung.train_images), str(rung.seeds)]
        + [", ".join(f"`{name}` {fixed(value, 3)}" for name, value in rung.val_accuracy.items())]
        + [f"`{rung.paired_test.leader}` {rung.paired_test.gain:+.1f} "
           f"[{rung.paired_test.low:+.1f}, {rung.paired_test.high:+.1f}]"]
        + [rung.paired_test.decision, fixed(sum(rung.train_seconds.values()), 0)]
        for rung in halving.rungs
    ]  # fmt: skip
    header = "rung | epochs | train images | seeds | val accuracy | leader - head, points [interval] | decision"
    lines = [
        "",
        f"Successive halving (`compare.method: halving`): {halving.stop} Seeding: {halving.seeding.note}.",
        "",
        table(header + " | train s", rows),
        "",
        f"Training time of every rung: {fixed(setup.train_seconds, 0)} s; the whole comparison "
        f"{fixed(setup.seconds, 0)} s, decoding and scoring included, on {setup.load_average.cores} cores whose "
        f"load average (1 / 5 / 15 minutes) was {load_text(setup.load_average.before)} at the start and "
        f"{load_text(setup.load_average.after)} at the end.",
    ]
    for grid_path, grid in grid_counterparts(reports, compared).items():
        lines += ["", against_the_grid(compared, grid_path, grid)]
    return lines


def against_the_grid(halving: CompareReport, grid_path: Path, grid: CompareReport) -> str:
    grid_seconds = sum(run.train_seconds for run in grid.runs)
    load, whole = grid.setup.load_average, grid.setup.seconds  # recorded since halving exists
    ours, theirs = tuned_image_epochs(halving), tuned_image_epochs(grid)
    of_whole = (
        f" and {fixed(100 * halving.setup.seconds / whole, 0)}% of its whole time ({fixed(whole, 0)} s)"
        if whole
        else ""
    )
    return (
        f"Against the grid at the same budget in {code(grid_path)} ({grid.setup.date}"
        + (f", load average {load_text(load.before)} at its start" if load else "")
        + f"): it trained for {fixed(grid_seconds, 0)} s, so halving took "
        f"{fixed(100 * halving.setup.train_seconds / grid_seconds, 0)}% of its training time"
        + of_whole
        + ". In training images x epochs of the tuned strategies, which the machine's load does not change: "
        f"{count(ours)} against {count(theirs)}, {fixed(100 * ours / theirs, 0)}%. The grid recommended "
        f"`{recommended_strategy(grid)}`, halving `{recommended_strategy(halving)}`."
    )


def tuned_image_epochs(compared: CompareReport) -> int:
    """Training images x epochs of every run other than the head's: the work of a comparison whatever else ran
    on the machine (the head trains on cached features in seconds)."""
    heads = ("head", RANDOM_INIT_PROBE)
    if compared.halving is None:
        tuned = sum(run.strategy not in heads for run in compared.runs)
        return tuned * compared.setup.epochs * compared.setup.train_images
    return sum(
        sum(name not in heads for name in rung.strategies) * rung.seeds * rung.epochs * rung.train_images
        for rung in compared.halving.rungs
    )


def render_results(root: Path) -> str:
    notes = read_index(root).reports
    reports = compare_reports(root)
    if stale := sorted(set(notes) - {path.as_posix() for path in reports}):
        raise SystemExit(f"{INDEX}: notes for reports that do not exist: {stale}")
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
        "One table per committed `reports/**/compare.json` but the calibration cases' (below, one row each). "
        "Accuracy is the mean ± standard deviation over "
        "the seeds (validation: of each run's best epoch, what the recommendation is chosen on); the trained "
        "parameters of `auto` depend on the blocks it chose for each seed. Times are of "
        "the machine that ran the comparison, which the report does not record. How the comparison and its "
        "recommendation work: [strategies.md](strategies.md#comparing-the-strategies).",
    ]
    for path in reports:
        sections += ["", compare_section(root, reports, path, notes.get(path.as_posix()))]
    return "\n".join([*sections, "", calibration_section(root)]) + "\n"


# ---------------------------------------------------------------- output


def render_block(root: Path, index: Index, name: str) -> str:
    """Block `name` from its index entry: a template, or the renderer `render` names (default: `name`)."""
    settings = dict(index.blocks[name])
    kind = str(settings.pop("render", name))
    try:
        if "parts" in settings:
            return render_template(root, index.folders, Template.model_validate(settings))
        if kind not in RENDERERS:
            raise ValueError(f"no renderer {kind!r} in docs/benchmark_blocks.py")
        return validate_call(RENDERERS[kind])(root, **settings)
    except (ValueError, LookupError) as error:  # pydantic's ValidationError is a ValueError
        raise SystemExit(f"{INDEX}: block {name}: {error}") from None


def render_benchmarks(root: Path, text: str) -> str:
    """`text` (BENCHMARKS.md) with every generated block rewritten from the files."""
    index = read_index(root)
    blocks = index.blocks
    names = [name for name, _ in MARKER.findall(text)]
    unknown, missing = sorted(set(names) - set(blocks)), sorted(set(blocks) - set(names))
    repeated = sorted({name for name in names if names.count(name) > 1})
    if unknown or missing or repeated:
        raise SystemExit(
            f"{BENCHMARKS_MD}: generated blocks do not match {INDEX}: unknown {unknown}, "
            f"missing {missing}, repeated {repeated}"
        )

    def block(match: re.Match) -> str:
        body = render_block(root, index, match[1]).strip("\n")
        return f"<!-- generated:{match[1]} -->\n\n{body}\n\n<!-- /generated:{match[1]} -->"

    return MARKER.sub(block, text)


def outputs(root: Path) -> dict[Path, str]:
    """What the docs should hold, by path relative to `root`."""
    return {
        RESULTS_MD: render_results(root),
        BENCHMARKS_MD: render_benchmarks(root, (root / BENCHMARKS_MD).read_text(encoding="utf-8")),
    }


def write_atomic(path: Path, text: str) -> bool:
    """Replace `path` with `text` in one rename; False (and nothing written) when it already holds it."""
    data = text.encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return False
    with atomic_path(path) as partial:
        partial.write_bytes(data)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the project copy to read and write (default: this)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    for relative, text in outputs(root).items():
        changed = write_atomic(root / relative, text)
        print(f"{relative.as_posix()}: {'written' if changed else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
