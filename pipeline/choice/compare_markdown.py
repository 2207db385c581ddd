"""A comparison's page, reports/compare.md, and its plot, reports/compare.png, from the typed report alone."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
from matplotlib import ticker

from pipeline.atomic import atomic_path
from pipeline.choice.compare_report import RANDOM_INIT_PROBE, CompareReport, Summary


def plot(summaries: dict[str, Summary], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, label in (
        (axes[0], "trainable_params", "trained parameters"),
        (axes[1], "train_seconds", "training seconds (mean)"),
    ):
        for s in summaries.values():
            x = getattr(s, key)
            ax.errorbar(x, s.mean, yerr=s.std, fmt="o", capsize=4)
            ax.annotate(s.strategy, (x, s.mean), textcoords="offset points", xytext=(6, 4), fontsize=9)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(label + " (log scale)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (mean ± std over seeds)")
    fig.suptitle("Fine-tuning strategies at equal budget")
    fig.tight_layout()
    with atomic_path(path) as partial:
        fig.savefig(partial, format="png", dpi=100)
    plt.close(fig)


def markdown(report: CompareReport) -> str:
    setup = report.setup
    lines = [
        "# Strategy comparison",
        "",
        f"{setup.date}, git {setup.git_commit[:7]}, MLflow parent run `{setup.parent_run_id}`. "
        f"Data `{setup.data_source}`: {setup.train_images} training images ({setup.train_per_class} per "
        f"class at most), {setup.val_images} validation, {setup.test_images} test, {setup.classes} "
        f"classes, at {setup.image_size} px. Backbone `{setup.backbone}` ({setup.weights}); "
        f"epochs per fine-tuning phase: {setup.epochs}, per head phase (on cached features): "
        f"{setup.head_epochs}; seeds {setup.seeds}. Reproduce: `make compare`.",
        "",
        "## Recommendation",
        "",
        *(f"- {line}" for line in report.recommendation),
        "",
        *summary_table(report.summaries),
        "",
        "![accuracy against trained parameters and time](compare.png)",
        "",
        *gain_lines(report),
        *shift_lines(report),
        *halving_lines(report),
        *distance_lines(report),
        "## Runs",
        "",
        "| strategy | seed | test accuracy | best val accuracy | trained parameters | train s | MLflow run |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| `{r.strategy}` | {r.seed} | {r.test_accuracy:.4f} | {r.best_val_accuracy:.4f} | "
            f"{r.trainable_params:,} | {r.train_seconds:.1f} | `{r.run_id}` |"
            for r in report.runs
        ),
    ]
    return "\n".join(lines) + "\n"


def summary_table(summaries: dict[str, Summary]) -> list[str]:
    full = summaries.get("full")
    lines = [
        "| strategy | validation accuracy (mean ± std) | test accuracy (mean ± std) | runs | trained parameters "
        "(mean) | train s (mean) | test accuracy vs `full` | time vs `full` |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries.values():
        accuracy, time = (
            (f"{100 * s.mean / full.mean:.1f}%", f"{s.train_seconds / full.train_seconds:.2f}×") if full else ("", "")
        )
        lines.append(
            f"| `{s.strategy}` | {s.over_seeds(validation=True)} | {s.over_seeds()} | {s.runs} | "
            f"{s.trainable_params:,} | {s.train_seconds:.1f} | {accuracy} | {time} |"
        )
    return lines


def distance_lines(report: CompareReport) -> list[str]:
    probe, random_probe = report.summaries.get("head"), report.summaries.get(RANDOM_INIT_PROBE)
    probes = (
        [
            f"- Linear probe on the pretrained features: {probe.over_seeds()}; on "
            f"random-init features: {random_probe.over_seeds()}.",
            "",
        ]
        if probe and random_probe
        else []
    )
    return [
        "## Why: how far this data is from the pretraining data",
        "",
        *probes,
        "Where the features differ: per block, how many standard deviations the target images' statistics "
        "at its BatchNorm inputs lie from the pretraining ones (0: as in pretraining). Large shifts in the "
        "early blocks mean the low-level statistics differ, which a head alone cannot undo.",
        "",
        "| block | BatchNorm shift |",
        "|---|---|",
        *(f"| `{block}` | {shift:.2f} |" for block, shift in report.batchnorm_shift.items()),
        "",
    ]


def gain_lines(report: CompareReport) -> list[str]:
    if not report.gain_per_minute:
        return []
    head = report.summaries["head"]
    return [
        "## Gain per training minute",
        "",
        "Test accuracy over the head's, in points per minute of the strategy's own training (mean over seeds): "
        "what a minute of fine-tuning buys.",
        "",
        "| strategy | points over the head | train s (mean) | points per minute |",
        "|---|---|---|---|",
        *(
            f"| `{name}` | {100 * (report.summaries[name].mean - head.mean):+.1f} | "
            f"{report.summaries[name].train_seconds:.1f} | {gain:+.2f} |"
            for name, gain in report.gain_per_minute.items()
        ),
        "",
    ]


def shift_lines(report: CompareReport) -> list[str]:
    shifted = report.shifted_test
    if not shifted:
        return []
    corruptions = list(next(iter(shifted.strategies.values())).by_corruption)
    return [
        "## Out of distribution: the shifted test copy",
        "",
        "Every test image corrupted once (gaussian noise, blur, contrast or JPEG, ImageNet-C severity 3), drawn by "
        f"seed {shifted.seed}: the same copy for every run (pipeline.data.corruptions). Kumar et al. (2022) found "
        "full fine-tuning below a linear probe out of distribution and LP-FT above full fine-tuning.",
        "",
        "| strategy | clean | shifted | drop | " + " | ".join(corruptions) + " |",
        "|---" * (4 + len(corruptions)) + "|",
        *(
            f"| `{name}` | {row.clean:.3f} | {row.shifted:.3f} | {100 * row.drop:.1f} points | "
            + " | ".join(f"{row.by_corruption[c]:.3f}" for c in corruptions)
            + " |"
            for name, row in shifted.strategies.items()
        ),
        "",
    ]


def halving_lines(report: CompareReport) -> list[str]:
    halving, setup = report.halving, report.setup
    if not halving:
        return []
    return [
        "## Successive halving",
        "",
        f"- {halving.stop}",
        f"- Seeding: {halving.seeding.note}.",
        f"- Training time of every rung's runs: {setup.train_seconds:.0f} s; the comparison took "
        f"{setup.seconds:.0f} s, decoding and scoring included, {setup.load_average.text()}.",
        "",
        "| rung | epochs | train images | seeds | validation accuracy (mean over seeds) | leader - head, points "
        "[interval] | decision | train s | kept |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {rung.rung} | {rung.epochs} | {rung.train_images} | {rung.seeds} | "
            + ", ".join(f"`{name}` {value:.3f}" for name, value in rung.val_accuracy.items())
            + f" | `{rung.paired_test.leader}` {rung.paired_test.gain:+.1f} "
            f"[{rung.paired_test.low:+.1f}, {rung.paired_test.high:+.1f}] | "
            f"{rung.paired_test.decision} | {sum(rung.train_seconds.values()):.0f} | "
            + ", ".join(f"`{name}`" for name in rung.kept)
            + " |"
            for rung in halving.rungs
        ),
        "",
    ]
