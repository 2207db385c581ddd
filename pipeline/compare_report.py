"""The report of `make compare`: per-strategy summaries over seeds, a plain-language recommendation,
the gain over the head per training minute, clean against shifted test accuracy, a plot and the Markdown
page (reports/compare.md, with the rungs of `compare.method: halving`), from the runs' results alone."""

import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
from matplotlib import ticker

from pipeline.atomic import atomic_path

RANDOM_INIT_PROBE = "head (random init)"


@dataclass
class Result:
    strategy: str
    seed: int
    test_accuracy: float
    best_val_accuracy: float
    train_seconds: float
    trainable_params: int  # of this run: `auto` chooses its blocks per seed
    run_id: str
    shifted_accuracy: dict[str, float]  # on the shifted test copy: `all`, and per corruption (pipeline.shift)


@dataclass
class Summary:
    strategy: str
    runs: int
    mean: float  # test accuracy over the seeds
    std: float
    trainable_params: int  # mean over the seeds
    train_seconds: float
    val_mean: float  # the best epoch's validation accuracy over the seeds: what the recommendation is chosen on
    val_std: float


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(results: list[Result]) -> dict[str, Summary]:
    summaries = {}
    for strategy in dict.fromkeys(r.strategy for r in results):
        runs = [r for r in results if r.strategy == strategy]
        summaries[strategy] = Summary(
            strategy,
            len(runs),
            *mean_std([r.test_accuracy for r in runs]),
            round(statistics.fmean(r.trainable_params for r in runs)),
            statistics.fmean(r.train_seconds for r in runs),
            *mean_std([r.best_val_accuracy for r in runs]),
        )
    return summaries


def gain_per_minute(summaries: dict[str, Summary]) -> dict[str, float]:
    """Each fine-tuning strategy's test accuracy over the head's, in points per minute of its training."""
    head = summaries.get("head")
    if head is None:
        return {}
    return {
        name: 100 * (s.mean - head.mean) / (s.train_seconds / 60)
        for name, s in summaries.items()
        if name not in ("head", RANDOM_INIT_PROBE)
    }


def shift_summary(results: list[Result], seed: int) -> dict:
    """Per strategy, mean over seeds of the clean and the shifted test accuracy, and per corruption."""
    strategies = {}
    for strategy in dict.fromkeys(r.strategy for r in results):
        runs = [r for r in results if r.strategy == strategy]
        shifted = {key: statistics.fmean(r.shifted_accuracy[key] for r in runs) for key in runs[0].shifted_accuracy}
        clean = statistics.fmean(r.test_accuracy for r in runs)
        strategies[strategy] = {"clean": clean, "shifted": shifted["all"], "drop": clean - shifted["all"]} | {
            "by_corruption": {key: value for key, value in shifted.items() if key != "all"}
        }
    return {"seed": seed, "strategies": strategies}


def apart(a: Summary, b: Summary, on_validation: bool = False) -> bool:
    """a's mean accuracy (test, or validation) is above b's by more than their spreads combined (not noise of
    the seeds)."""
    if on_validation:
        return a.val_mean - b.val_mean > (a.val_std**2 + b.val_std**2) ** 0.5
    return a.mean - b.mean > (a.std**2 + b.std**2) ** 0.5


# Training times closer than this count as the same: one run's seconds vary more than that with the load.
SAME_TIME = 1.2


def recommended(summaries: dict[str, Summary]) -> tuple[Summary, Summary]:
    """The strategy to use, and the best, both on the validation split so the test split stays out of the
    choice and its accuracies are not picked for being high: of the strategies within the seeds' spread of the
    best, the most accurate of those in about the fastest one's training time."""
    tried = {name: s for name, s in summaries.items() if name != RANDOM_INIT_PROBE}
    best = max(tried.values(), key=lambda s: s.val_mean)
    tied = [s for s in tried.values() if not apart(best, s, on_validation=True)]
    fastest = min(s.train_seconds for s in tied)
    return max((s for s in tied if s.train_seconds <= SAME_TIME * fastest), key=lambda s: s.val_mean), best


def recommend(summaries: dict[str, Summary]) -> list[str]:
    """Plain-language findings, from the summaries alone."""
    tried = {name: s for name, s in summaries.items() if name != RANDOM_INIT_PROBE}
    chosen, best = recommended(summaries)
    saving = best.train_seconds / chosen.train_seconds
    lines = [
        f"**Use `{chosen.strategy}`**: {chosen.val_mean:.3f} ± {chosen.val_std:.3f} validation accuracy, "
        + (
            "the best of all"
            if chosen is best
            else f"within the seeds' spread of the best, `{best.strategy}` ({best.val_mean:.3f} ± "
            f"{best.val_std:.3f}), "
            + (f"at {saving:.1f}× less training time" if saving >= SAME_TIME else "in about the same training time")
        )
        + f"; {chosen.mean:.3f} ± {chosen.std:.3f} on the test split."
    ]
    head, full = tried.get("head"), tried.get("full")
    if head and full:
        verdict = "enough" if not apart(full, head, on_validation=True) else "not enough"
        lines.append(
            f"Training the head is {verdict} here: it reaches {100 * head.mean / full.mean:.1f}% of full "
            f"fine-tuning's test accuracy ({head.mean:.3f} vs {full.mean:.3f}) at "
            f"{full.train_seconds / head.train_seconds:.1f}× less training time and "
            f"{full.trainable_params / head.trainable_params:.0f}× fewer trained parameters."
        )
    random_probe = summaries.get(RANDOM_INIT_PROBE)
    if head and random_probe:
        if apart(head, random_probe):
            lines.append(
                f"Pretraining helps on this data: a linear probe reaches {head.mean:.3f} on the pretrained "
                f"features against {random_probe.mean:.3f} on random-init ones."
            )
        else:
            lines.append(
                f"The pretrained features are no better than random ones on this data (linear probe "
                f"{head.mean:.3f} vs {random_probe.mean:.3f}): it is far from the pretraining data, and what "
                "the network learns here it learns from this data, not from pretraining."
            )
    return lines


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


def over_seeds(summary: dict, prefix: str = "") -> str:
    """A summary's test accuracy (validation's with prefix "val_"), mean ± std over the seeds; a single run has
    no spread to show."""
    mean = summary[f"{prefix}mean"]
    return f"{mean:.3f} ± {summary[f'{prefix}std']:.3f}" if summary["runs"] > 1 else f"{mean:.3f} (one seed)"


def markdown(report: dict) -> str:
    setup, summaries = report["setup"], report["summaries"]
    full = summaries.get("full")
    lines = [
        "# Strategy comparison",
        "",
        f"{setup['date']}, git {setup['git_commit'][:7]}, MLflow parent run `{setup['parent_run_id']}`. "
        f"Data `{setup['data_source']}`: {setup['train_images']} training images ({setup['train_per_class']} per "
        f"class at most), {setup['val_images']} validation, {setup['test_images']} test, {setup['classes']} "
        f"classes, at {setup['image_size']} px. Backbone `{setup['backbone']}` ({setup['weights']}); "
        f"epochs per fine-tuning phase: {setup['epochs']}, per head phase (on cached features): "
        f"{setup['head_epochs']}; seeds {setup['seeds']}. Reproduce: `make compare`.",
        "",
        "## Recommendation",
        "",
        *(f"- {line}" for line in report["recommendation"]),
        "",
        "| strategy | validation accuracy (mean ± std) | test accuracy (mean ± std) | runs | trained parameters "
        "(mean) | train s (mean) | test accuracy vs `full` | time vs `full` |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries.values():
        ratios = (
            (f"{100 * s['mean'] / full['mean']:.1f}%", f"{s['train_seconds'] / full['train_seconds']:.2f}×")
            if full
            else ("", "")
        )
        lines.append(
            f"| `{s['strategy']}` | {over_seeds(s, 'val_')} | "
            f"{over_seeds(s)} | "
            f"{s['runs']} | {s['trainable_params']:,} | "
            f"{s['train_seconds']:.1f} | {ratios[0]} | {ratios[1]} |"
        )
    lines += ["", "![accuracy against trained parameters and time](compare.png)", ""]
    lines += gain_lines(report) + shift_lines(report) + halving_lines(report)
    lines += [
        "## Why: how far this data is from the pretraining data",
        "",
        *(
            [
                f"- Linear probe on the pretrained features: {over_seeds(probe)}; on "
                f"random-init features: {over_seeds(random_probe)}.",
                "",
            ]
            if (probe := summaries.get("head")) and (random_probe := summaries.get(RANDOM_INIT_PROBE))
            else []
        ),
        "Where the features differ: per block, how many standard deviations the target images' statistics "
        "at its BatchNorm inputs lie from the pretraining ones (0: as in pretraining). Large shifts in the "
        "early blocks mean the low-level statistics differ, which a head alone cannot undo.",
        "",
        "| block | BatchNorm shift |",
        "|---|---|",
        *(f"| `{block}` | {shift:.2f} |" for block, shift in report["batchnorm_shift"].items()),
        "",
        "## Runs",
        "",
        "| strategy | seed | test accuracy | best val accuracy | trained parameters | train s | MLflow run |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| `{r['strategy']}` | {r['seed']} | {r['test_accuracy']:.4f} | {r['best_val_accuracy']:.4f} | "
            f"{r['trainable_params']:,} | {r['train_seconds']:.1f} | `{r['run_id']}` |"
            for r in report["runs"]
        ),
    ]
    return "\n".join(lines) + "\n"


def gain_lines(report: dict) -> list[str]:
    gains = report.get("gain_per_minute")
    if not gains:
        return []
    return [
        "## Gain per training minute",
        "",
        "Test accuracy over the head's, in points per minute of the strategy's own training (mean over seeds): "
        "what a minute of fine-tuning buys.",
        "",
        "| strategy | points over the head | train s (mean) | points per minute |",
        "|---|---|---|---|",
        *(
            f"| `{name}` | {100 * (report['summaries'][name]['mean'] - report['summaries']['head']['mean']):+.1f} | "
            f"{report['summaries'][name]['train_seconds']:.1f} | {gain:+.2f} |"
            for name, gain in gains.items()
        ),
        "",
    ]


def shift_lines(report: dict) -> list[str]:
    shifted = report.get("shifted_test")
    if not shifted:
        return []
    corruptions = list(next(iter(shifted["strategies"].values()))["by_corruption"])
    return [
        "## Out of distribution: the shifted test copy",
        "",
        "Every test image corrupted once (gaussian noise, blur, contrast or JPEG, ImageNet-C severity 3), drawn by "
        f"seed {shifted['seed']}: the same copy for every run (pipeline.shift). Kumar et al. (2022) found full "
        "fine-tuning below a linear probe out of distribution and LP-FT above full fine-tuning.",
        "",
        "| strategy | clean | shifted | drop | " + " | ".join(corruptions) + " |",
        "|---" * (4 + len(corruptions)) + "|",
        *(
            f"| `{name}` | {row['clean']:.3f} | {row['shifted']:.3f} | {100 * row['drop']:.1f} points | "
            + " | ".join(f"{row['by_corruption'][c]:.3f}" for c in corruptions)
            + " |"
            for name, row in shifted["strategies"].items()
        ),
        "",
    ]


def load_text(setup: dict) -> str:
    """The machine's load average over 1 / 5 / 15 minutes as the comparison started and ended."""
    load = setup["load_average"]
    before, after = (" / ".join(f"{value:.1f}" for value in load[when]) for when in ("before", "after"))
    return f"on {load['cores']} cores whose load average was {before} at the start and {after} at the end"


def halving_lines(report: dict) -> list[str]:
    halving = report.get("halving")
    if not halving:
        return []
    return [
        "## Successive halving",
        "",
        f"- {halving['stop']}",
        f"- Seeding: {halving['seeding']['note']}.",
        f"- Training time of every rung's runs: {report['setup']['train_seconds']:.0f} s; the comparison took "
        f"{report['setup']['seconds']:.0f} s, decoding and scoring included, {load_text(report['setup'])}.",
        "",
        "| rung | epochs | train images | seeds | validation accuracy (mean over seeds) | leader - head, points "
        "[interval] | decision | train s | kept |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {rung['rung']} | {rung['epochs']} | {rung['train_images']} | {rung['seeds']} | "
            + ", ".join(f"`{name}` {value:.3f}" for name, value in rung["val_accuracy"].items())
            + f" | `{rung['paired_test']['leader']}` {rung['paired_test']['gain']:+.1f} "
            f"[{rung['paired_test']['low']:+.1f}, {rung['paired_test']['high']:+.1f}] | "
            f"{rung['paired_test']['decision']} | {sum(rung['train_seconds'].values()):.0f} | "
            + ", ".join(f"`{name}`" for name in rung["kept"])
            + " |"
            for rung in halving["rungs"]
        ),
        "",
    ]
