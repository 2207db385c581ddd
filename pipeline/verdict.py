"""Is training the head enough? Ask first: a verdict from one pass of the frozen backbone, in about a minute.

    dvc repro verdict                     # = python -m pipeline.verdict, after prepare
    python -m pipeline.verdict --apply    # finetune.strategy in params.yaml := the verdict's (comments kept)
    python -m pipeline.verdict --calibrate   # reports/verdict/calibration.csv from every committed comparison

The train and val images of the prepared split (never test) go once through the frozen backbone at
`train.image_size`; that pass yields the last layer's features, every block's pooled features and the
BatchNorm statistics shift. From them (pipeline.transferability): a cross-validated linear probe, kNN,
LogME, a multi-depth probe (Head2Toe) and cleanlab's label issues on the probe's out-of-fold
probabilities. The rule of pipeline.verdict_rule, fitted on reports/verdict/calibration.csv, turns them
into "the head is enough" / "fine-tune the last N blocks" / "fine-tune everything", the strategy to set,
the expected gain over the head and how sure it is. Writes reports/verdict/verdict.{json,md} and
label_issues.png, and logs them on an MLflow run of their own.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import torch
import yaml

from pipeline import tracking
from pipeline.atomic import atomic_path, write_json
from pipeline.backbones import Backbone, build
from pipeline.block_choice import block_label
from pipeline.compare_report import RANDOM_INIT_PROBE, Summary, apart, recommended
from pipeline.config import PARAMS_FILE, ConfigError, Params, load_params, set_param
from pipeline.decoded import Split, cap_per_class, load_rows
from pipeline.diagnostics import recording_batchnorm_shift
from pipeline.manifest import class_names, read_manifest, split_sizes
from pipeline.paths import (
    MANIFEST,
    REPORT_DIR,
    VERDICT_CALIBRATION,
    VERDICT_DIR,
    VERDICT_GALLERY,
    VERDICT_JSON,
    VERDICT_MD,
)
from pipeline.training import extract_features, pick_device
from pipeline.transferability import cross_validated_probe, folds, knn_accuracy, label_issues, logme
from pipeline.verdict_report import gallery, markdown, summary_lines
from pipeline.verdict_rule import Case, Scores, Verdict, calibrate, decide, read_cases, shift_text, write_cases

BATCH = 64  # images per forward pass: eval mode, so it changes the speed, not the features


@dataclass
class Pass:
    """What one pass of the frozen backbone over the scored images gives."""

    final: np.ndarray  # N x D: the head's inputs
    pooled: dict[str, np.ndarray]  # block label -> N x channels, its output averaged over space
    batchnorm_shift: dict[str, float]


@torch.no_grad()
def backbone_pass(backbone: Backbone, images: torch.Tensor, device: torch.device) -> Pass:
    """The feature cache's pass (pipeline.training.extract_features), also recording every block's output
    pooled over space and the BatchNorm inputs' statistics."""
    model = backbone.model.to(device)
    pooled: dict[str, list[torch.Tensor]] = {block_label(block): [] for block in backbone.blocks}

    def keep(label: str):
        def hook(module, inputs, output):
            flat = output.mean(dim=(2, 3)) if output.ndim == 4 else output.flatten(1)
            pooled[label].append(flat.float().cpu())

        return hook

    hooks = [
        model.get_submodule(block[-1]).register_forward_hook(keep(block_label(block))) for block in backbone.blocks
    ]
    try:
        with recording_batchnorm_shift(backbone) as shifts:
            final = extract_features(model, images, BATCH, device)
            shift = shifts()
    finally:
        for hook in hooks:
            hook.remove()
    return Pass(final.cpu().numpy(), {label: torch.cat(parts).numpy() for label, parts in pooled.items()}, shift)


def scored_images(params: Params, manifest: Path, image_size: int, train_per_class: int | None) -> tuple[Split, list]:
    """Train (at most `train_per_class` per class, seeded as compare draws them) and val, as one split."""
    rows = read_manifest(manifest)
    train = cap_per_class([row for row in rows if row["split"] == "train"], train_per_class, params.seed)
    val = [row for row in rows if row["split"] == "val"]
    classes = class_names(rows)
    # decoded as one selection (one cache folder on disk), not concatenated: that would copy it all into memory
    data = params.data
    both = load_rows(train + val, classes, image_size, data.max_image_pixels, data.decoded, "train+val", data.shards)
    return both, classes


@dataclass
class Assessment:
    split: Split
    classes: list[str]
    scores: Scores
    folds: int  # of the cross-validation: verdict.folds, fewer if a class has fewer images
    probabilities: np.ndarray  # out-of-fold probe probabilities, N x classes
    issues: np.ndarray  # indices into split, most suspicious first


def assess(params: Params, manifest: Path, image_size: int, train_per_class: int | None = None) -> Assessment:
    """Every score of the verdict on the prepared split of `manifest`."""
    torch.manual_seed(params.seed)
    split, classes = scored_images(params, manifest, image_size, train_per_class)
    backbone = build(params.model.backbone, params.model.weights, len(classes))
    features = backbone_pass(backbone, split.images, pick_device(params.train.device))
    labels = split.labels.numpy()
    settings = params.verdict
    cv = folds(labels, settings.folds, params.seed)
    probe_accuracy, probabilities = cross_validated_probe(features.final, labels, cv)
    multi_depth_accuracy, _ = cross_validated_probe(np.concatenate(list(features.pooled.values()), axis=1), labels, cv)
    issues = label_issues(labels, probabilities)
    scores = Scores(
        images=len(labels),
        probe_accuracy=probe_accuracy,
        knn_accuracy=knn_accuracy(features.final, labels, cv, settings.knn_neighbors),
        logme=logme(features.final, labels),
        multi_depth_accuracy=multi_depth_accuracy,
        label_issue_rate=len(issues) / len(labels),
        batchnorm_shift=features.batchnorm_shift,
    )
    return Assessment(split, classes, scores, cv.get_n_splits(), probabilities, issues)


def issue_rows(assessment: Assessment, count: int) -> list[dict]:
    split, classes, probabilities = assessment.split, assessment.classes, assessment.probabilities
    rows = []
    for index in assessment.issues[:count]:
        given = int(split.labels[index])
        rows.append(
            {
                "path": split.paths[index],
                "given": classes[given],
                "predicted": classes[int(probabilities[index].argmax())],
                "given_probability": float(probabilities[index, given]),
            }
        )
    return rows


def write_gallery(assessment: Assessment, rows: list[dict], path: Path) -> None:
    images = [assessment.split.images[index].permute(1, 2, 0).numpy() for index in assessment.issues[: len(rows)]]
    captions = [f"given {row['given']}\nprobe: {row['predicted']} ({1 - row['given_probability']:.2f})" for row in rows]
    gallery(images, captions, path)


def verdict(params: Params, manifest: Path = MANIFEST, out_dir: Path = VERDICT_DIR) -> dict:
    """Score the prepared split, decide, write the report to `out_dir` and log it on its own MLflow run."""
    started = time.perf_counter()
    tracking.check_reachable()  # before the pass, not after it
    settings = params.verdict
    assessment = assess(params, manifest, params.train.image_size)
    scores = assessment.scores
    calibration = calibrate(
        read_cases(out_dir / VERDICT_CALIBRATION.name), params.train.epochs, settings.worth_it, settings.shift_threshold
    )
    decided = decide(
        scores.probe_accuracy,
        scores.label_issue_rate,
        scores.batchnorm_shift,
        calibration.recovery,
        calibration.gain_sd,
        settings.worth_it,
        settings.shift_threshold,
    )
    rows = issue_rows(assessment, settings.gallery)
    write_gallery(assessment, rows, out_dir / VERDICT_GALLERY.name)
    tracking.use_experiment(params)
    commit = tracking.git_commit()
    tags = {"kind": "verdict", "git_commit": commit, "verdict.strategy": decided.strategy}
    with mlflow.start_run(run_name=f"verdict · {params.model.backbone}", tags=tags) as run:
        mlflow.log_params(
            tracking.flatten(
                {
                    "verdict": settings.model_dump(mode="json"),
                    "data": {"source": params.data.source},
                    "model": params.model.model_dump(mode="json"),
                    "train": {"image_size": params.train.image_size, "epochs": params.train.epochs},
                }
            )
        )
        report = {
            "setup": {
                "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "git_commit": commit,
                "run_id": run.info.run_id,
                "data_source": params.data.source,
                "images": scores.images,
                "classes": len(assessment.classes),
                "image_size": params.train.image_size,
                "epochs": params.train.epochs,
                "backbone": params.model.backbone,
                "weights": params.model.weights,
                "folds": assessment.folds,
                "knn_neighbors": settings.knn_neighbors,
                "worth_it": settings.worth_it,
                "shift_threshold": settings.shift_threshold,
                "gallery_file": (out_dir / VERDICT_GALLERY.name).as_posix(),
                "seconds": time.perf_counter() - started,
            },
            "verdict": asdict(decided),
            "scores": asdict(scores),
            "calibration": asdict(calibration),
            "label_issue_count": len(assessment.issues),
            "label_issues": rows,
        }
        tracking.log_metrics(
            {
                **{f"verdict/{key}": value for key, value in asdict(scores).items() if isinstance(value, float | int)},
                **{f"verdict/shift.{block}": value for block, value in scores.batchnorm_shift.items()},
                "verdict/expected_gain": decided.expected_gain,
                "verdict/confidence": decided.confidence,
                "verdict/recovery": calibration.recovery,
                "verdict/calibration_agreement": calibration.agreement / len(calibration.cases),
                "verdict/calibration_gain_rmse": calibration.gain_sd,
                "verdict/seconds": report["setup"]["seconds"],
            }
        )
        mlflow.set_tags({"verdict.decision": decided.decision, "verdict.certainty": decided.certainty})
        tracking.describe_run("\n\n".join(summary_lines(report)))
        write_report(report, out_dir)
        for name in (VERDICT_JSON, VERDICT_MD, VERDICT_GALLERY, VERDICT_CALIBRATION):
            mlflow.log_artifact(str(out_dir / name.name), artifact_path="verdict")
    return report


def write_report(report: dict, out_dir: Path) -> None:
    write_json(out_dir / VERDICT_JSON.name, report)
    with atomic_path(out_dir / VERDICT_MD.name) as partial:
        partial.write_text(markdown(report))


# ---------------------------------------------------------------- calibration


def prepared_manifest(params: Params, source: str, folder: Path) -> Path:
    """The split `prepare` makes of `source` with params.yaml's other data settings, in `folder`: run as the
    stage itself, since stages meet only through files."""
    raw = params.model_dump(mode="json")
    raw["data"]["source"] = str(Path(source).resolve())
    (folder / PARAMS_FILE.name).write_text(yaml.safe_dump(raw, sort_keys=False))
    env = os.environ | {"PYTHONPATH": str(Path.cwd().resolve())}  # this checkout's pipeline, not an installed one
    subprocess.run([sys.executable, "-m", "pipeline.prepare"], cwd=folder, env=env, check=True, capture_output=True)
    return folder / MANIFEST


def measured_case(params: Params, report_file: Path, folder: Path) -> Case:
    """The verdict's scores at a comparison's data and budget, beside what the comparison measured."""
    report = json.loads(report_file.read_text())
    setup = report["setup"]
    manifest = prepared_manifest(params, setup["data_source"], folder)
    sizes = split_sizes(read_manifest(manifest))
    if (sizes["val"], sizes["test"]) != (setup["val_images"], setup["test_images"]):
        raise ConfigError(
            f"{report_file}: made on a split of {setup['val_images']} val / {setup['test_images']} test images, "
            f"params.yaml's data settings give {sizes['val']} / {sizes['test']}: set them as they were"
        )
    with_backbone = params.model_copy(
        update={"model": params.model.model_copy(update={"backbone": setup["backbone"], "weights": setup["weights"]})}
    )
    scores = assess(with_backbone, manifest, setup["image_size"], setup["train_per_class"]).scores
    summaries = {name: Summary(**summary) for name, summary in report["summaries"].items()}
    cheapest, best = recommended(summaries)
    head = summaries["head"]
    tried = [s for name, s in summaries.items() if name != RANDOM_INIT_PROBE]
    within = [s.strategy for s in tried if not apart(best, s, on_validation=True)]
    return Case(
        report=report_file.as_posix(),
        data_source=setup["data_source"],
        backbone=setup["backbone"],
        image_size=setup["image_size"],
        train_per_class=setup["train_per_class"],
        epochs=setup["epochs"],
        images=scores.images,
        probe_accuracy=round(scores.probe_accuracy, 4),
        knn_accuracy=round(scores.knn_accuracy, 4),
        logme=round(scores.logme, 4),
        multi_depth_accuracy=round(scores.multi_depth_accuracy, 4),
        label_issue_rate=round(scores.label_issue_rate, 4),
        batchnorm_shift=shift_text(scores.batchnorm_shift),
        measured_head=round(head.mean, 4),
        measured_best_strategy=best.strategy,
        measured_best=round(best.mean, 4),
        measured_gain=round(100 * (best.mean - head.mean), 2),
        measured_recommended=cheapest.strategy,
        measured_within_spread=" ".join(within),
    )


def calibrate_from_reports(params: Params, reports: Path = REPORT_DIR, out: Path = VERDICT_CALIBRATION) -> list[Case]:
    """One calibration case per committed comparison under `reports`, written to `out`."""
    cases = []
    for report_file in sorted(reports.rglob("compare.json"), key=Path.as_posix):
        if json.loads(report_file.read_text())["setup"].get("method", "grid") != "grid":
            continue  # halving's summaries are of the rung it stopped at, not of the budget its setup names
        with tempfile.TemporaryDirectory() as folder:
            cases.append(measured_case(params, report_file, Path(folder)))
        print(f"{report_file}: probe {cases[-1].probe_accuracy:.3f}, measured gain {cases[-1].measured_gain:+.1f}")
    write_cases(out, cases)
    return cases


def apply(report_file: Path) -> Verdict:
    """Set params.yaml's finetune.strategy (and unfreeze_blocks for `partial`) to a verdict's; return it."""
    if not report_file.is_file():
        raise ConfigError(f"{report_file} not found: run `dvc repro verdict` first")
    decided = Verdict(**json.loads(report_file.read_text())["verdict"])
    if decided.unfreeze_blocks is not None:
        set_param("finetune.unfreeze_blocks", decided.unfreeze_blocks)
    set_param("finetune.strategy", decided.strategy)
    return decided


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--apply",
        nargs="?",
        const=VERDICT_JSON,
        type=Path,
        metavar="REPORT",
        help="instead of scoring, set finetune.strategy in params.yaml to a verdict's (default: reports/verdict/"
        "verdict.json)",
    )
    action.add_argument(
        "--calibrate",
        action="store_true",
        help="recompute reports/verdict/calibration.csv from every reports/**/compare.json",
    )
    args = parser.parse_args()
    try:
        if args.apply:
            decided = apply(args.apply)
            print(f"params.yaml: finetune.strategy: {decided.strategy} ({decided.decision}); `dvc repro` trains it")
        elif args.calibrate:
            calibrate_from_reports(load_params())
            print(f"written: {VERDICT_CALIBRATION}")
        else:
            report = verdict(load_params())
            print("\n".join(summary_lines(report)))
            print(f"report: {VERDICT_MD}; `python -m pipeline.verdict --apply` sets this strategy in params.yaml")
    except ConfigError as exc:
        sys.exit(f"verdict: {exc}")


if __name__ == "__main__":
    main()
