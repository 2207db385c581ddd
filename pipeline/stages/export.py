"""The `export` stage: export the trained model to ONNX, gate it on parity with PyTorch, register it.

    python -m pipeline.stages.export

The graph (pipeline.release.onnx_export) takes uint8 RGB images (any batch size) at the model card's image size
and returns class probabilities: normalisation is inside it, and the card rides in its metadata.
ONNX Runtime and PyTorch are run on the test images; the stage fails, leaving no model behind, if
their probabilities differ by more than export.parity_tolerance (export.fp16_parity_tolerance
for a float16 graph). The model is then logged to the MLflow run and registered as a new version
of the registered model (mlflow.registered_model, by default named after the data folder), tagged
with its data, test split and test accuracy (pipeline.tracking.registry); the first version becomes champion.
"""

from mlflow import MlflowClient

from pipeline.atomic import atomic_path, write_json
from pipeline.config import load_params
from pipeline.data.manifest import read_manifest, split_fingerprint
from pipeline.data.splits import load_split
from pipeline.model import model_file
from pipeline.paths import EXPORT_METRICS, MODEL_FILE, ONNX_FILE
from pipeline.release.onnx_export import export_checked, onnx_metadata
from pipeline.tracking import registry, runs, store


def main() -> None:
    params = load_params()
    store.check_reachable()  # before anything is written: a stage that cannot log leaves no outputs
    model, card = model_file.load(MODEL_FILE)
    rows = read_manifest()
    test = load_split(
        rows, "test", card.image_size, params.data.max_image_pixels, params.data.decoded, params.data.shards
    )
    settings = params.export
    tolerance = settings.fp16_parity_tolerance if settings.fp16 else settings.parity_tolerance
    with atomic_path(ONNX_FILE) as onnx_file:  # in place only once it is registered too
        proto, session, probabilities, difference = export_checked(
            model, card, test.images, onnx_file, settings.opset, tolerance, settings.fp16
        )
        correct = probabilities.argmax(1) == test.labels.numpy()
        accuracy = float(correct.mean())
        metrics = {"parity_max_abs_diff": difference, "onnx_test_accuracy": accuracy}
        name = params.registered_model()
        with runs.resume_run():
            runs.log_metrics({f"export/{key}": value for key, value in metrics.items()})
            example = (test.images[:2].numpy(), probabilities[:2])
            version = registry.log_onnx_model(proto, name, example, onnx_metadata(card, settings.fp16))
            tags = registry.version_tags(
                card,
                split_fingerprint(rows, "test"),
                len(test.labels),
                accuracy,
                runs.git_commit(),
                runs.dvc_experiment(),
            )
            crowned = registry.record_version(
                MlflowClient(store.tracking_uri()), name, version, tags | registry.correctness_tag(correct)
            )
    metrics["registered_version"] = int(version)
    write_json(EXPORT_METRICS, metrics)
    alias = (
        f", now @{registry.CHAMPION} (the model had none)"
        if crowned
        else " (`python -m pipeline.commands.promote` to serve it)"
    )
    print(
        f"exported {ONNX_FILE} ({', '.join(session.get_providers())}): parity {difference:.2e}, "
        f"test accuracy {accuracy:.4f}; registered {name} v{version}{alias}"
    )


if __name__ == "__main__":
    main()
