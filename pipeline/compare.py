"""Is training the head enough? Every strategy on the prepared data, same budget, same seeds.

    make compare                  # = dvc repro prepare && python -m pipeline.compare

Runs each strategy of params.yaml `compare.strategies` once per seed of `compare.seeds` with the
budget of the `compare` section (epochs, image size, training images per class: the same images
for every run), plus a linear probe on random-init features per seed, the reference for what
pretraining brings. Writes reports/compare.md (the table, the recommendation and the domain
diagnostic), reports/compare.png and reports/compare.json, and logs them to an MLflow parent run
whose child runs are the strategies and seeds, so the MLflow UI shows them side by side.
"""

import re
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import mlflow
import torch
from matplotlib import ticker
from torch import nn

from pipeline import tracking
from pipeline.artifacts import atomic_path, write_json
from pipeline.backbones import Backbone, build
from pipeline.config import Params, load_params, parse_params
from pipeline.data import Split, class_names, load_split, read_manifest
from pipeline.evaluate import predict_probabilities
from pipeline.images import normalize
from pipeline.strategies import count_parameters
from pipeline.surgical import block_label
from pipeline.train import fit, plan, seed_everything, trained_modules

REPORT_DIR = Path("reports")
RANDOM_INIT_PROBE = "head (random init)"


@dataclass
class Result:
    strategy: str
    seed: int
    test_accuracy: float
    best_val_accuracy: float
    train_seconds: float
    trainable_params: int
    run_id: str


@dataclass
class Summary:
    strategy: str
    runs: int
    mean: float
    std: float
    trainable_params: int
    train_seconds: float


def run_params(params: Params, strategy: str, seed: int, weights: str | None = None) -> Params:
    """params.yaml with the comparison's budget, the strategy and the seed of one run."""
    raw = params.model_dump(mode="json")
    budget = params.compare
    raw["seed"] = seed
    raw["finetune"] |= {"strategy": strategy, "head_epochs": budget.head_epochs}
    raw["train"] |= {"epochs": budget.epochs, "image_size": budget.image_size}
    if weights is not None:
        raw["model"]["weights"] = weights
    return parse_params(raw, "compare")


def cap_per_class(split: Split, per_class: int | None, seed: int) -> Split:
    """A seeded subset of at most `per_class` images of each class (the same for every run)."""
    if per_class is None:
        return split
    generator = torch.Generator().manual_seed(seed)
    keep = []
    for label in split.labels.unique():
        members = (split.labels == label).nonzero().flatten()
        keep += members[torch.randperm(len(members), generator=generator)[:per_class]].tolist()
    keep.sort()
    return Split([split.paths[i] for i in keep], split.images[keep], split.labels[keep])


def run_one(
    params: Params, label: str, train: Split, val: Split, test: Split, classes: list[str], commit: str
) -> Result:
    """One child run: fit with `params`, score the best epoch on the test split."""
    seed_everything(params)
    backbone = build(params.model.backbone, params.model.weights, len(classes))
    tags = {"strategy": label, "seed": str(params.seed), "git_commit": commit}
    with mlflow.start_run(run_name=f"{label} seed {params.seed}", nested=True, tags=tags) as run:
        mlflow.log_params(tracking.flatten(params.model_dump(mode="json", exclude={"serving", "compare"})))

        def log_epoch(record: dict, *_):
            mlflow.log_metrics({k: v for k, v in record.items() if k not in ("epoch", "phase")}, step=record["epoch"])

        started = time.perf_counter()
        phases = plan(params, backbone, train)
        trainable = count_parameters(backbone.model, trained_modules(phases))
        best = fit(params, backbone, train, val, log_epoch, phases)
        seconds = time.perf_counter() - started
        model = backbone.model.cpu()
        model.load_state_dict(best["state_dict"])
        probabilities = predict_probabilities(model.eval(), test.images, {"mean": backbone.mean, "std": backbone.std})
        accuracy = (probabilities.argmax(1) == test.labels).float().mean().item()
        metrics = {"test_accuracy": accuracy, "best_val_accuracy": best["val_accuracy"], "train_seconds": seconds}
        mlflow.log_metrics(metrics | {"trainable_params": trainable})
    print(f"{label:>20} seed {params.seed}: test accuracy {accuracy:.4f}, {trainable:,} trained, {seconds:.0f} s")
    return Result(label, params.seed, accuracy, best["val_accuracy"], seconds, trainable, run.info.run_id)


@torch.no_grad()
def batchnorm_shift(backbone: Backbone, images: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Per block: how far the target images' statistics at each BatchNorm input are from the
    running (pretraining) ones: the mean over channels of |target mean - running mean| / running
    std, averaged over the block's BatchNorm layers. 0: the block sees what it saw in pretraining;
    1: its inputs are shifted by a standard deviation."""
    model = backbone.model.eval()
    layers = {
        block_label(block): [
            module
            for name in block
            for module in model.get_submodule(name).modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None
        ]
        for block in backbone.blocks
    }
    totals: dict[nn.Module, tuple[torch.Tensor, int]] = {}

    def accumulate(module, inputs):
        x = inputs[0].double()
        total, count = totals.get(module, (0, 0))
        totals[module] = (total + x.sum(dim=(0, 2, 3)), count + x.numel() // x.shape[1])

    hooks = [module.register_forward_pre_hook(accumulate) for modules in layers.values() for module in modules]
    try:
        for start in range(0, len(images), batch_size):
            model(normalize(images[start : start + batch_size], backbone.mean, backbone.std))
    finally:
        for hook in hooks:
            hook.remove()
    shifts = {}
    for block, modules in layers.items():
        per_layer = [
            (
                (totals[m][0] / totals[m][1] - m.running_mean.double()).abs() / (m.running_var.double() + m.eps).sqrt()
            ).mean()
            for m in modules
        ]
        if per_layer:
            shifts[block] = float(torch.stack(per_layer).mean())
    return shifts


def summarize(results: list[Result]) -> dict[str, Summary]:
    summaries = {}
    for strategy in dict.fromkeys(r.strategy for r in results):
        runs = [r for r in results if r.strategy == strategy]
        accuracies = [r.test_accuracy for r in runs]
        summaries[strategy] = Summary(
            strategy,
            len(runs),
            statistics.fmean(accuracies),
            statistics.stdev(accuracies) if len(runs) > 1 else 0.0,
            runs[0].trainable_params,
            statistics.fmean(r.train_seconds for r in runs),
        )
    return summaries


def apart(a: Summary, b: Summary) -> bool:
    """a's mean accuracy is above b's by more than their spreads combined (not noise of the seeds)."""
    return a.mean - b.mean > (a.std**2 + b.std**2) ** 0.5


def recommend(summaries: dict[str, Summary]) -> list[str]:
    """Plain-language findings, from the summaries alone."""
    tried = {name: s for name, s in summaries.items() if name != RANDOM_INIT_PROBE}
    best = max(tried.values(), key=lambda s: s.mean)
    tied = [s for s in tried.values() if not apart(best, s)]
    cheapest = min(tied, key=lambda s: s.train_seconds)
    saving = best.train_seconds / cheapest.train_seconds
    lines = [
        f"**Use `{cheapest.strategy}`**: {cheapest.mean:.3f} ± {cheapest.std:.3f} test accuracy, "
        + (
            "the best of all."
            if cheapest is best
            else f"within the seeds' spread of the best, `{best.strategy}` ({best.mean:.3f} ± {best.std:.3f}), "
            + (f"at {saving:.1f}× less training time." if saving >= 1.2 else "in about the same training time.")
        )
    ]
    head, full = tried.get("head"), tried.get("full")
    if head and full:
        verdict = "enough" if not apart(full, head) else "not enough"
        lines.append(
            f"Training the head is {verdict} here: it reaches {100 * head.mean / full.mean:.1f}% of full "
            f"fine-tuning's accuracy ({head.mean:.3f} vs {full.mean:.3f}) at "
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
        "| strategy | test accuracy (mean ± std) | runs | trained parameters | train s (mean) "
        "| accuracy vs `full` | time vs `full` |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries.values():
        ratios = (
            (f"{100 * s['mean'] / full['mean']:.1f}%", f"{s['train_seconds'] / full['train_seconds']:.2f}×")
            if full
            else ("", "")
        )
        lines.append(
            f"| `{s['strategy']}` | {s['mean']:.3f} ± {s['std']:.3f} | {s['runs']} | {s['trainable_params']:,} | "
            f"{s['train_seconds']:.1f} | {ratios[0]} | {ratios[1]} |"
        )
    lines += ["", "![accuracy against trained parameters and time](compare.png)", ""]
    lines += [
        "## Why: how far this data is from the pretraining data",
        "",
        *(
            [
                f"- Linear probe on the pretrained features: {probe['mean']:.3f} ± {probe['std']:.3f}; on "
                f"random-init features: {random_probe['mean']:.3f} ± {random_probe['std']:.3f}.",
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
        "| strategy | seed | test accuracy | best val accuracy | train s | MLflow run |",
        "|---|---|---|---|---|---|",
        *(
            f"| `{r['strategy']}` | {r['seed']} | {r['test_accuracy']:.4f} | {r['best_val_accuracy']:.4f} | "
            f"{r['train_seconds']:.1f} | `{r['run_id']}` |"
            for r in report["runs"]
        ),
    ]
    return "\n".join(lines) + "\n"


def compare(params: Params, rows: list[dict], out_dir: Path = REPORT_DIR) -> dict:
    """Run the comparison on the manifest `rows`; write and return the report."""
    budget = params.compare
    classes = class_names(rows)
    size, max_pixels = budget.image_size, params.data.max_image_pixels
    train, val, test = (load_split(rows, split, size, max_pixels) for split in ("train", "val", "test"))
    train = cap_per_class(train, budget.train_per_class, params.seed)
    runs = [(strategy, params.model.weights) for strategy in budget.strategies]
    if budget.random_init_probe and params.model.weights.lower() != "none":
        runs.append((RANDOM_INIT_PROBE, "none"))
    tracking.use_experiment(params)
    results = []
    commit = tracking.git_commit()
    with mlflow.start_run(run_name="compare", tags={"git_commit": commit, "kind": "compare"}) as parent:
        mlflow.log_params(
            tracking.flatten({"compare": budget.model_dump(mode="json"), "data": {"source": params.data.source}})
        )
        for seed in budget.seeds:
            for label, weights in runs:
                strategy = "head" if label == RANDOM_INIT_PROBE else label
                run = run_params(params, strategy, seed, weights)
                results.append(run_one(run, label, train, val, test, classes, commit))
        pretrained = build(params.model.backbone, params.model.weights, len(classes))
        summaries = summarize(results)
        report = {
            "setup": {
                "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "git_commit": commit,
                "parent_run_id": parent.info.run_id,
                "data_source": params.data.source,
                "train_images": len(train.labels),
                "train_per_class": budget.train_per_class,
                "val_images": len(val.labels),
                "test_images": len(test.labels),
                "classes": len(classes),
                "image_size": size,
                "backbone": params.model.backbone,
                "weights": params.model.weights,
                "epochs": budget.epochs,
                "head_epochs": budget.head_epochs,
                "seeds": budget.seeds,
            },
            "recommendation": recommend(summaries),
            "summaries": {name: asdict(s) for name, s in summaries.items()},
            "batchnorm_shift": batchnorm_shift(pretrained, train.images),
            "runs": [asdict(r) for r in results],
        }
        for name, s in summaries.items():
            key = re.sub(r"[^\w\-. ]", "", name)  # MLflow's allowed characters
            mlflow.log_metrics({f"{key}.test_accuracy_mean": s.mean, f"{key}.test_accuracy_std": s.std})
        write_json(out_dir / "compare.json", report)
        plot(summaries, out_dir / "compare.png")
        with atomic_path(out_dir / "compare.md") as partial:
            partial.write_text(markdown(report))
        mlflow.log_artifacts(str(out_dir), artifact_path="report")
    return report


def main() -> None:
    report = compare(load_params(), read_manifest())
    print("\n".join(report["recommendation"]))
    print(f"report: {REPORT_DIR / 'compare.md'}")


if __name__ == "__main__":
    main()
