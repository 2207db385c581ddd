"""The model registry's contract: what every registered version carries, and which versions may
replace the champion.

export tags each version with where it came from (data, test split, classes, strategy, backbone,
test accuracy, git commit, DVC experiment) and describes it in a sentence; the first version of a
registered model becomes its champion, later ones only through `python -m pipeline.commands.promote`, which
compares versions by these tags. Two versions are comparable only if they have the same classes and
were scored on the same test split.
"""

import json
import math
from dataclasses import dataclass
from importlib.metadata import version as package_version

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from scipy.stats import binomtest

from pipeline.model.card import ModelCard
from pipeline.release.onnx_runtime import PROVIDERS

CHAMPION = "champion"
# What must match for two test accuracies to be compared: tag -> how a difference is described.
COMPARABLE_ON = {"classes": "class list", "test_split": "test split"}
MAX_TAG_CHARS = 5000  # MLflow's limit on a model version tag's value


def log_onnx_model(proto, name: str, example: tuple[np.ndarray, np.ndarray], metadata: dict[str, str]) -> str:
    """Log the exported graph on the active run as a new version of registered model `name`; its version."""
    info = mlflow.onnx.log_model(
        proto,
        name="model",
        registered_model_name=name,
        # onnxruntime and onnxruntime-gpu write the same package folder: MLflow would list both
        pip_requirements=[f"onnx=={package_version('onnx')}", f"onnxruntime-gpu=={package_version('onnxruntime-gpu')}"],
        signature=infer_signature(*example),
        metadata=metadata,
        onnx_execution_providers=PROVIDERS,
        save_as_external_data=False,
    )
    return str(info.registered_model_version)


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


def record_version(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> bool:
    """Tag and describe a new version; make it champion if the model has none. True if it did."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=describe(tags))
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
