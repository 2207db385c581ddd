"""The `evaluate` stage: score the trained model on the test split.

    python -m pipeline.stages.evaluate

Writes metrics/evaluate.json (accuracy, macro-F1, ECE, per-class precision and recall),
metrics/test_predictions.csv (DVC's confusion-matrix plot) and metrics/confusion_matrix.png,
and logs them to the MLflow run of the model; the experiment's description then lists this run among the others.
"""

import csv

import mlflow

from pipeline.atomic import atomic_path, check_writable, write_json
from pipeline.config import load_params
from pipeline.data.manifest import read_manifest
from pipeline.data.splits import load_split
from pipeline.model import model_file
from pipeline.model.scoring import description, plot_confusion, score, small_test_split_warning
from pipeline.paths import CONFUSION_PNG, EVALUATE_METRICS, MODEL_FILE, TEST_PREDICTIONS
from pipeline.tracking import experiment_page, runs, store


def main() -> None:
    params = load_params()
    check_writable(EVALUATE_METRICS, TEST_PREDICTIONS, CONFUSION_PNG)
    store.check_reachable()  # before anything is written: a stage that cannot log leaves no outputs
    model, card = model_file.load(MODEL_FILE)
    rows = read_manifest()
    test = load_split(
        rows, "test", card.image_size, params.data.max_image_pixels, params.data.decoded, params.data.shards
    )
    probabilities = model_file.predict_probabilities(model, test.images)
    metrics = score(probabilities, test.labels, card.classes)
    predicted = probabilities.argmax(1)
    with atomic_path(TEST_PREDICTIONS) as partial, open(partial, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "actual", "predicted"])
        writer.writerows(
            (p, card.classes[a], card.classes[b]) for p, a, b in zip(test.paths, test.labels, predicted, strict=True)
        )
    plot_confusion(test.labels.numpy(), predicted.numpy(), card.classes, CONFUSION_PNG)
    write_json(EVALUATE_METRICS, metrics)
    with runs.resume_run() as run:
        runs.log_metrics({f"test/{k}": v for k, v in metrics.items() if k != "per_class"})
        runs.log_metrics(
            {f"per_class/{kind}.{c}": v for c, both in metrics["per_class"].items() for kind, v in both.items()}
        )
        mlflow.log_artifact(str(CONFUSION_PNG))
        mlflow.log_artifact(str(EVALUATE_METRICS))
        runs.describe_run(description(card, rows, run.data.metrics, metrics["accuracy"]))
        experiment_page.describe_experiment(run.info.experiment_id, params.data_name())  # with this accuracy
    print(
        f"test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, ECE {metrics['ece']:.4f} "
        f"on {len(test.labels)} images"
    )
    if warning := small_test_split_warning(len(test.labels)):
        print(f"warning: {warning}")


if __name__ == "__main__":
    main()
