"""The `export` stage: export the trained model to ONNX, gate it on parity with PyTorch, register it.

    python -m pipeline.stages.export

The graph (pipeline.release.onnx_export) takes uint8 RGB images (any batch size) at the model card's image size
and returns class probabilities: normalisation is inside it, and the card rides in its metadata.
ONNX Runtime and PyTorch are run on the test images; the stage fails, leaving no model behind, if
their probabilities differ by more than export.parity_tolerance (export.fp16_parity_tolerance
for a float16 graph). The model is then logged to the MLflow run and registered as a new version
of the registered model (mlflow.registered_model, by default named after the data folder), tagged
with its data, test split, test accuracy and weights hash (pipeline.tracking.registry); the first version
becomes champion.

The graph is written before the version is registered, and put in place only after: a stage that fails
after registering deletes the version it made and marks its run FAILED; a killed one leaves a version
complete with its tags, which the rerun of the same model (same weights hash) reuses instead of adding another.
"""

import sys

import numpy as np
from mlflow import MlflowClient

from pipeline.atomic import OutputNotWritable, atomic_path, check_writable, write_json
from pipeline.config import load_params
from pipeline.data.manifest import read_manifest, split_fingerprint
from pipeline.data.splits import load_split
from pipeline.model import model_file
from pipeline.model.card import ModelCard
from pipeline.paths import EXPORT_METRICS, MODEL_FILE, ONNX_FILE
from pipeline.release.onnx_export import export_checked, onnx_metadata
from pipeline.tracking import registry, runs, store


def version_tags(
    card: ModelCard, rows: list[dict], correct: np.ndarray, accuracy: float, opset: int, fp16: bool
) -> dict[str, str]:
    return (
        registry.version_tags(
            card, split_fingerprint(rows, "test"), len(correct), accuracy, runs.git_commit(), runs.dvc_experiment()
        )
        | registry.correctness_tag(correct)
        | registry.export_tags(runs.weights_sha256(MODEL_FILE), opset, fp16)
    )


def main() -> None:
    params = load_params()
    try:
        check_writable(ONNX_FILE, EXPORT_METRICS)
    except OutputNotWritable as exc:
        sys.exit(f"export: {exc}")
    store.check_reachable()  # before anything is written: a stage that cannot log leaves no outputs
    model, card = model_file.load(MODEL_FILE)
    rows = read_manifest()
    test = load_split(
        rows, "test", card.image_size, params.data.max_image_pixels, params.data.decoded, params.data.shards
    )
    settings = params.export
    tolerance = settings.fp16_parity_tolerance if settings.fp16 else settings.parity_tolerance
    name = params.registered_model()
    pending = registry.PendingVersion(MlflowClient(store.tracking_uri()), name)
    with pending.undone_on_failure(), atomic_path(ONNX_FILE) as onnx_file:  # in place once registered
        proto, session, probabilities, difference = export_checked(
            model, card, test.images, onnx_file, settings.opset, tolerance, settings.fp16
        )
        correct = probabilities.argmax(1) == test.labels.numpy()
        accuracy = float(correct.mean())
        metrics = {"parity_max_abs_diff": difference, "onnx_test_accuracy": accuracy}
        tags = version_tags(card, rows, correct, accuracy, settings.opset, settings.fp16)
        with runs.resume_run() as run:
            runs.log_metrics({f"export/{key}": value for key, value in metrics.items()})
            version = registry.find_version(pending.client, name, tags)
            if version is None:
                example = (test.images[:2].numpy(), probabilities[:2])
                logged = registry.log_onnx_model(proto, example, onnx_metadata(card, settings.fp16))
        pending.run_id = run.info.run_id
        if version is None:
            version = pending.created = registry.create_version(pending.client, name, logged, run.info.run_id, tags)
        write_json(EXPORT_METRICS, metrics | {"registered_version": int(version)})
        crowned = registry.crown_if_first(pending.client, name, version)
    registered = "registered" if pending.created else "already registered (the same weights):"
    alias = standing(pending.client, name, version, crowned)
    print(
        f"exported {ONNX_FILE} ({', '.join(session.get_providers())}): parity {difference:.2e}, "
        f"test accuracy {accuracy:.4f}; {registered} {name} v{version}{alias}"
    )


def standing(client: MlflowClient, name: str, version: str, crowned: bool) -> str:
    if crowned:
        return f", now @{registry.CHAMPION} (the model had none)"
    holder = registry.champion(client, name)
    if holder is not None and str(holder.version) == version:
        return f", @{registry.CHAMPION}"
    return " (`python -m pipeline.commands.promote` to serve it)"


if __name__ == "__main__":
    main()
