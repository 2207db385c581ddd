"""What the verdict's scoring spends its time on, part by part in one run on the prepared split: the backbone's
pass (decoding included) and each score, beside the per-block probes, which the verdict now runs only for a
backbone without BatchNorm (where they decide where to tune) and ran before on every backbone.

    python -m benchmarks.verdict             # after `dvc repro prepare`: params.yaml's data, backbone and size
    python -m benchmarks.verdict --out benchmarks/results/cpu-verdict-cost/verdict.json

The parts are pipeline.choice.assessment's own functions, called as `assess` calls them, each timed once.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import bench_params
from benchmarks.figures import VerdictArgs, VerdictCostResult, VerdictPart
from benchmarks.report import capture
from pipeline.choice.assessment import backbone_pass, scored_images
from pipeline.choice.transferability import cross_validated_probe, folds, knn_accuracy, label_issues, logme
from pipeline.model.backbones import build
from pipeline.model.features import pick_device
from pipeline.paths import MANIFEST


def timed(parts: list[VerdictPart], name: str, work):
    started = time.perf_counter()
    value = work()
    parts.append(VerdictPart(name=name, seconds=time.perf_counter() - started))
    return value


def measure(manifest: Path) -> VerdictCostResult:
    params = bench_params()
    parts: list[VerdictPart] = []
    size = params.train.image_size

    def the_pass():
        split, classes, _ = scored_images(params, manifest, size, None)
        backbone = build(params.model.backbone, params.model.weights, len(classes), size)
        return split, backbone_pass(backbone, split.images, pick_device(params.train.device))

    split, features = timed(parts, "decoding and the backbone's pass", the_pass)
    labels = split.labels.numpy()
    cv = folds(labels, params.verdict.folds, params.seed)
    _, probabilities = timed(parts, "linear probe", lambda: cross_validated_probe(features.final, labels, cv))
    pooled = np.concatenate(list(features.pooled.values()), axis=1)
    timed(parts, "multi-depth probe", lambda: cross_validated_probe(pooled, labels, cv))
    timed(parts, "kNN", lambda: knn_accuracy(features.final, labels, cv, params.verdict.knn_neighbors))
    timed(parts, "LogME", lambda: logme(features.final, labels))
    timed(parts, "label issues", lambda: label_issues(labels, probabilities))
    every_block = [lambda f=f: cross_validated_probe(f, labels, cv) for f in features.pooled.values()]
    timed(parts, f"per-block probes ({len(every_block)})", lambda: [probe() for probe in every_block])
    settings = VerdictArgs(
        backbone=params.model.backbone, image_size=size, images=len(labels), batchnorm=bool(features.batchnorm_shift)
    )
    return VerdictCostResult(environment=capture(), args=settings, parts=parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the result as JSON to this file")
    args = parser.parse_args()
    result = measure(MANIFEST)
    for part in result.parts:
        print(f"{part.name:>36}: {part.seconds:6.1f} s")
    print(
        f"scoring {result.args.images:,} images with {result.args.backbone}: {result.without_block_probes:.1f} s "
        f"without the per-block probes, {result.with_block_probes:.1f} s with them (x{result.speedup:.2f}); the "
        f"verdict runs them {'only without BatchNorm' if result.args.batchnorm else 'here: no BatchNorm'}"
    )
    if args.out:
        result.write(args.out)


if __name__ == "__main__":
    main()
