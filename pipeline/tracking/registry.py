"""The model registry's contract: what every registered version carries, and which versions may
replace the champion.

export tags each version with where it came from (data, test split, classes, strategy, backbone,
test accuracy, git commit, DVC experiment, the hash of its weights) and describes it in a sentence, both in
the call that creates it; the first version of a registered model becomes its champion, later ones only
through `python -m pipeline.commands.promote`, which compares versions by these tags. Two versions are
comparable only if they have the same classes and were scored on the same test split; a version without
these tags (left by an export of an older version of the pipeline that was killed) is never promoted.
"""

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version as package_version

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from scipy.stats import binomtest

from pipeline.model.card import ModelCard
from pipeline.release.onnx_runtime import PROVIDERS

CHAMPION = "champion"
# What must match for two test accuracies to be compared: tag -> how a difference is described.
COMPARABLE_ON = {"classes": "class list", "test_split": "test split"}
MAX_TAG_CHARS = 5000  # MLflow's limit on a model version tag's value
COMPARED_BY = ("classes", "test_split", "test_accuracy", "test_images")  # a version without them is never promoted
SAME_EXPORT_ON = ("weights_sha256", "onnx_export", "test_split")  # tags of one model: a rerun reuses its version


def log_onnx_model(proto, example: tuple[np.ndarray, np.ndarray], metadata: dict[str, str]) -> ModelInfo:
    """Log the exported graph on the active run (not yet a version of any registered model: create_version)."""
    return mlflow.onnx.log_model(
        proto,
        name="model",
        # onnxruntime and onnxruntime-gpu write the same package folder: MLflow would list both
        pip_requirements=[f"onnx=={package_version('onnx')}", f"onnxruntime-gpu=={package_version('onnxruntime-gpu')}"],
        signature=infer_signature(*example),
        metadata=metadata,
        onnx_execution_providers=PROVIDERS,
        save_as_external_data=False,
    )


def export_tags(weights_sha256: str, opset: int, fp16: bool) -> dict[str, str]:
    """What makes two exports the same model: the weights file (models/model.pt: weights and card) and the graph's
    settings. A rerun of export on the same ones reuses its version (find_version) instead of adding another."""
    return {"weights_sha256": weights_sha256, "onnx_export": f"opset {opset}, {'fp16' if fp16 else 'fp32'}"}


def find_version(client: MlflowClient, name: str, tags: dict[str, str]) -> str | None:
    """The version of `name` that an earlier run of this same export registered (same weights, graph settings and
    test split), if any."""
    for version in client.search_model_versions(f"name='{name}'"):
        if all(version.tags.get(key) == tags[key] for key in SAME_EXPORT_ON):
            return str(version.version)
    return None


def version_tags(
    card: ModelCard, test_split: str, test_images: int, test_accuracy: float, commit: str, experiment: str
) -> dict[str, str]:
    return {
        "data_source": card.data_source,
        "data_fingerprint": card.data_fingerprint,
        "test_split": test_split,
        "classes": json.dumps(card.classes),
        "test_images": str(test_images),
        "test_accuracy": f"{test_accuracy:.6f}",
        "strategy": card.strategy,
        "strategy_chosen_by": card.strategy_chosen_by,
        "backbone": card.backbone,
        "git_commit": commit,
        "dvc_experiment": experiment,
    }


def describe(tags: dict[str, str]) -> str:
    classes = json.loads(tags["classes"])
    experiment = f", DVC experiment {tags['dvc_experiment']}" if tags["dvc_experiment"] else ""
    return (
        f"{tags['backbone']} fine-tuned with `{tags['strategy']}` on {tags['data_source']} ({len(classes)} classes); "
        f"test accuracy {float(tags['test_accuracy']):.4f} on {tags['test_images']} images "
        f"(test split {tags['test_split'][:12]}); git {tags['git_commit'][:12]}{experiment}."
    )


def create_version(client: MlflowClient, name: str, model: ModelInfo, run_id: str, tags: dict[str, str]) -> str:
    """A new version of `name` for a logged model, created with its tags and description in one call: a
    version is never seen without them (tagging it afterwards left one with no tags when export was killed)."""
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    created = client.create_model_version(
        name, model.model_uri, run_id=run_id, tags=tags, description=describe(tags), model_id=model.model_id
    )
    return str(created.version)


@dataclass
class PendingVersion:
    """The version an export stands to leave behind, undone if the stage fails before its outputs are in place:
    a version it created is deleted, and its MLflow run (ended before registering, so that a kill leaves it
    FINISHED rather than RUNNING) is marked FAILED."""

    client: MlflowClient
    name: str
    run_id: str | None = None
    created: str | None = None

    @contextmanager
    def undone_on_failure(self) -> Iterator["PendingVersion"]:
        try:
            yield self
        except BaseException:
            if self.created is not None:
                self.client.delete_model_version(self.name, self.created)
            if self.run_id is not None:
                self.client.set_terminated(self.run_id, "FAILED")
            raise


def crown_if_first(client: MlflowClient, name: str, version: str) -> bool:
    """Make `version` champion if the model has none. True if it did."""
    if champion(client, name) is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        return True
    return False


def champion(client: MlflowClient, name: str, alias: str = CHAMPION) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


@dataclass
class Candidate:
    version: int
    tags: dict[str, str]

    @property
    def accuracy(self) -> float | None:
        return float(self.tags["test_accuracy"]) if "test_accuracy" in self.tags else None

    @property
    def complete(self) -> bool:
        """It carries what promote compares versions by."""
        return all(key in self.tags for key in COMPARED_BY)

    @property
    def test_images(self) -> int:
        return int(self.tags.get("test_images", 0))

    def correct(self) -> np.ndarray:
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(self.tags["test_correct"]), np.uint8))
        return bits[: self.test_images].astype(bool)

    def differences(self, other: "Candidate") -> list[str]:
        """What makes the two test accuracies incomparable, in words; empty if nothing."""
        return [
            f"{what} differs ({self.tags.get(tag, 'untagged')[:40]} vs {other.tags.get(tag, 'untagged')[:40]})"
            for tag, what in COMPARABLE_ON.items()
            if self.tags.get(tag) is None or self.tags.get(tag) != other.tags.get(tag)
        ]


def candidates(client: MlflowClient, name: str) -> list[Candidate]:
    return sorted(
        (Candidate(int(v.version), dict(v.tags)) for v in client.search_model_versions(f"name='{name}'")),
        key=lambda c: c.version,
    )


def correctness_tag(correct: np.ndarray) -> dict[str, str]:
    """Which test images a version got right, as a hex bit string (in the manifest's test order), so
    two versions can be compared image by image; left out where it would pass MLflow's tag size limit."""
    bits = np.packbits(correct.astype(bool)).tobytes().hex()
    return {"test_correct": bits} if len(bits) <= MAX_TAG_CHARS else {}


def separation_p_value(better: Candidate, worse: Candidate) -> float:
    """How likely a gap at least this large is by chance on this test split: an exact McNemar test on the
    images only one of them got right where both carry `test_correct`; otherwise a two-proportion z-test."""
    if "test_correct" in better.tags and "test_correct" in worse.tags:
        a, b = (c.correct() for c in (better, worse))
        only_better, only_worse = int((a & ~b).sum()), int((b & ~a).sum())
        if only_better + only_worse == 0:
            return 1.0
        return float(binomtest(only_better, only_better + only_worse, 0.5).pvalue)
    pooled = (better.accuracy + worse.accuracy) / 2
    spread = math.sqrt(max(pooled * (1 - pooled), 1 / better.test_images) * 2 / better.test_images)
    return float(math.erfc(abs(better.accuracy - worse.accuracy) / spread / math.sqrt(2)))
