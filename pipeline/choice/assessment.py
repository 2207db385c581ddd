"""Every score of the verdict, from one pass of the frozen backbone over train + val (never test).

The pass yields the last layer's features, every block's pooled features and the BatchNorm statistics
shift; from them (pipeline.choice.transferability): a cross-validated linear probe, kNN, LogME, a
multi-depth probe (Head2Toe) and cleanlab's label issues on the probe's out-of-fold probabilities.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.choice.batchnorm_shift import recording_batchnorm_shift
from pipeline.choice.label_check import LabelCheckRow, precision_at
from pipeline.choice.transferability import cross_validated_probe, folds, knn_accuracy, label_issues, logme
from pipeline.choice.verdict_report import LabelIssue, gallery
from pipeline.choice.verdict_rule import Scores
from pipeline.config import Params
from pipeline.data.manifest import class_names, read_manifest
from pipeline.data.splits import Split, cap_per_class, load_rows
from pipeline.model.backbones import Backbone, block_label, build
from pipeline.model.blocks import modules_of
from pipeline.model.features import extract_features, pick_device

BATCH = 64  # images per forward pass: eval mode, so it changes the speed, not the features


@dataclass
class Pass:
    """What one pass of the frozen backbone over the scored images gives."""

    final: np.ndarray  # N x D: the head's inputs
    pooled: dict[str, np.ndarray]  # block label -> N x channels, its output averaged over space
    batchnorm_shift: dict[str, float]


def pooled_output(output) -> torch.Tensor:
    """A block's output as one vector per image: averaged over space (N x C x H x W, or N x H x W x C as Swin's
    stages give it) or over tokens (N x T x C, a transformer block's)."""
    output = output[0] if isinstance(output, tuple) else output
    if output.ndim == 4:
        channels_last = output.shape[1] == output.shape[2] != output.shape[3]
        return output.mean(dim=(1, 2) if channels_last else (2, 3))
    return output.mean(dim=1) if output.ndim == 3 else output.flatten(1)


@torch.no_grad()
def backbone_pass(backbone: Backbone, images: torch.Tensor, device: torch.device) -> Pass:
    """The feature cache's pass (pipeline.model.features.extract_features), also recording every block's output
    pooled (on its last module: a block of parameters alone, a ViT's position embedding, has none) and the
    BatchNorm inputs' statistics."""
    model = backbone.model.to(device)
    last_modules = {
        block_label(block): modules_of(model, block)[-1] for block in backbone.blocks if modules_of(model, block)
    }
    pooled: dict[str, list[torch.Tensor]] = {label: [] for label in last_modules}

    def keep(label: str):
        def hook(module, inputs, output):
            pooled[label].append(pooled_output(output).float().cpu())

        return hook

    hooks = [module.register_forward_hook(keep(label)) for label, module in last_modules.items()]
    try:
        with recording_batchnorm_shift(backbone) as shifts:
            final = extract_features(model, images, BATCH, device)
            shift = shifts()
    finally:
        for hook in hooks:
            hook.remove()
    return Pass(final.cpu().numpy(), {label: torch.cat(parts).numpy() for label, parts in pooled.items()}, shift)


def scored_images(params: Params, manifest: Path, image_size: int, train_per_class: int | None):
    """Train (at most `train_per_class` per class, seeded as compare draws them) and val, as one split; the
    classes, and how many of the images are training ones."""
    rows = read_manifest(manifest)
    train = cap_per_class([row for row in rows if row["split"] == "train"], train_per_class, params.seed)
    val = [row for row in rows if row["split"] == "val"]
    classes = class_names(rows)
    # decoded as one selection (one cache folder on disk), not concatenated: that would copy it all into memory
    data = params.data
    both = load_rows(train + val, classes, image_size, data.max_image_pixels, data.decoded, "train+val", data.shards)
    return both, classes, len(train)


@dataclass
class Assessment:
    split: Split
    classes: list[str]
    blocks: list[str]  # the backbone's block labels, input to output
    scores: Scores
    folds: int  # of the cross-validation: verdict.folds, fewer if a class has fewer images
    probabilities: np.ndarray  # out-of-fold probe probabilities, N x classes
    issues: np.ndarray  # indices into split, most suspicious first


def block_probes(features: Pass, labels: np.ndarray, cv) -> dict[str, float]:
    """A probe on each block's pooled output, where they decide where to tune: without BatchNorm (with it, its
    shift decides, pipeline.choice.where_to_tune). On EfficientNet-Lite0 they would be a fifth of the verdict."""
    if features.batchnorm_shift:
        return {}
    return {label: cross_validated_probe(pooled, labels, cv)[0] for label, pooled in features.pooled.items()}


def assess(
    params: Params,
    manifest: Path,
    image_size: int,
    train_per_class: int | None = None,
    label_check: list[LabelCheckRow] = (),
) -> Assessment:
    """Every score of the verdict on the prepared split of `manifest`; `label_check` says how much of cleanlab's
    flags to take for wrong labels."""
    torch.manual_seed(params.seed)
    split, classes, train_images = scored_images(params, manifest, image_size, train_per_class)
    backbone = build(params.model.backbone, params.model.weights, len(classes), image_size)
    features = backbone_pass(backbone, split.images, pick_device(params.train.device))
    labels = split.labels.numpy()
    settings = params.verdict
    cv = folds(labels, settings.folds, params.seed)
    probe_accuracy, probabilities = cross_validated_probe(features.final, labels, cv)
    multi_depth_accuracy, _ = cross_validated_probe(np.concatenate(list(features.pooled.values()), axis=1), labels, cv)
    issues = label_issues(labels, probabilities)
    scores = Scores(
        images=len(labels),
        images_per_class=train_images / len(classes),
        probe_accuracy=probe_accuracy,
        knn_accuracy=knn_accuracy(features.final, labels, cv, settings.knn_neighbors),
        logme=logme(features.final, labels),
        multi_depth_accuracy=multi_depth_accuracy,
        block_probe_accuracy=block_probes(features, labels, cv),
        label_issue_rate=len(issues) / len(labels),
        batchnorm_shift=features.batchnorm_shift,
    ).with_wrong_labels(precision_at(list(label_check), probe_accuracy))
    blocks = [block_label(block) for block in backbone.blocks]
    return Assessment(split, classes, blocks, scores, cv.get_n_splits(), probabilities, issues)


def issue_rows(assessment: Assessment, count: int) -> list[LabelIssue]:
    """The `count` most suspicious images, for the report and its gallery."""
    split, classes, probabilities = assessment.split, assessment.classes, assessment.probabilities
    rows = []
    for index in assessment.issues[:count]:
        given = int(split.labels[index])
        rows.append(
            LabelIssue(
                path=split.paths[index],
                given=classes[given],
                predicted=classes[int(probabilities[index].argmax())],
                given_probability=float(probabilities[index, given]),
            )
        )
    return rows


def write_gallery(assessment: Assessment, rows: list[LabelIssue], path: Path) -> None:
    images = [assessment.split.images[index].permute(1, 2, 0).numpy() for index in assessment.issues[: len(rows)]]
    captions = [f"given {row.given}\nprobe: {row.predicted} ({1 - row.given_probability:.2f})" for row in rows]
    gallery(images, captions, path)
