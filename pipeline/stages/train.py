"""The `train` stage: fine-tune the backbone with the strategy of params.yaml; keep the best epoch.

    python -m pipeline.stages.train
    torchrun --standalone --nproc_per_node 2 -m pipeline.stages.train   # data-parallel, what dvc.yaml runs

Writes models/model.pt (the best weights and the model card; its hash tags the MLflow run, which the later
stages log to), metrics/train.json and metrics/train_history.csv: what the same code, data and machine give
again, so the training's times go to MLflow only. A killed run resumes from models/checkpoint.pt
(pipeline.finetune.checkpoint).
"""

import contextlib
import csv
import dataclasses
import sys

import mlflow
from mlflow.exceptions import MlflowException

from pipeline.atomic import atomic_path, check_writable, write_json
from pipeline.config import ConfigError, Params, load_params, with_verdict_strategy
from pipeline.data.manifest import class_names, fingerprint, read_manifest
from pipeline.data.splits import load_split
from pipeline.finetune import checkpoint, distributed
from pipeline.finetune.loop import Callbacks, train_model
from pipeline.finetune.records import HISTORY_COLUMNS, EpochRecord
from pipeline.finetune.strategies import Plan
from pipeline.model import model_file
from pipeline.model.features import pick_device
from pipeline.paths import CHECKPOINT_FILE, MODEL_FILE, TRAIN_HISTORY, TRAIN_METRICS, VERDICT_STRATEGY
from pipeline.tracking import runs, store


def log_plan(plan: Plan, trainable: int, total: int) -> None:
    runs.log_plan(plan, trainable, total)
    if (choice := plan.block_choice) is not None:
        tuned = ", ".join(choice.blocks) or "the head only"
        print(f"auto: probe accuracy {choice.probe_accuracy:.3f} on held-out images; tuning {tuned}")


def write_history(history: list[EpochRecord]) -> None:
    with atomic_path(TRAIN_HISTORY) as partial, open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(dataclasses.asdict(record) for record in history)
    mlflow.log_artifact(str(TRAIN_HISTORY))


def main() -> None:
    try:
        run_stage()
    except MlflowException as exc:  # after MLflow's own retries (pipeline/__init__.py bounds them)
        try:
            store.check_reachable()
        except store.TrackingServerUnreachable:
            pass
        else:
            raise  # the store answers: another error, with its own message
        sys.exit(
            f"training stopped: the MLflow tracking store {store.shown_uri()} did not answer "
            f"({store.redact(str(exc))[:300]}); {CHECKPOINT_FILE} holds the last finished epoch: run the "
            "stage again to resume once the store answers"
        )


def params_to_train() -> tuple[Params, str]:
    """params.yaml's, `finetune.strategy: verdict` replaced by the verdict's answer; and what chose the strategy."""
    try:
        params, chosen = with_verdict_strategy(load_params(), VERDICT_STRATEGY)
    except ConfigError as exc:
        sys.exit(f"train: {exc}")
    if chosen is None:
        return params, "params.yaml"
    print(f"finetune.strategy: verdict: {chosen.strategy} ({chosen.decision}, {VERDICT_STRATEGY})")
    return params, f"the verdict: {chosen.decision}"


def run_stage() -> None:
    params, chosen_by = params_to_train()
    check_writable(MODEL_FILE, CHECKPOINT_FILE, TRAIN_HISTORY, TRAIN_METRICS)  # before minutes of training
    store.check_reachable()  # fail fast, before minutes of loading and training
    distributed.start(pick_device(params.train.device))
    rows = read_manifest()
    size, max_pixels = params.train.image_size, params.data.max_image_pixels
    train, val = (
        load_split(rows, split, size, max_pixels, params.data.decoded, params.data.shards) for split in ("train", "val")
    )
    resume = checkpoint.load(params)
    run_fingerprint = checkpoint.fingerprint(params)
    main_rank = distributed.is_main()  # the only one that logs and writes files

    with runs.start_run(params, resume and resume.run_id) if main_rank else contextlib.nullcontext() as run:
        run_id = run.info.run_id if main_rank else None
        if main_rank and not resume:
            runs.log_dataset(params.data.source, rows, fingerprint())
            mlflow.set_tag("strategy.chosen_by", chosen_by)

        def save_checkpoint(state: checkpoint.TrainingState) -> None:
            checkpoint.save(dataclasses.replace(state, run_id=run_id), run_fingerprint)

        callbacks = Callbacks(on_state=save_checkpoint)
        if main_rank:
            callbacks.on_plan, callbacks.on_epoch = log_plan, runs.log_epoch
        result = train_model(params, class_names(rows), train, val, fingerprint(), callbacks, resume)
        if main_rank:
            card = result.card.model_copy(update={"strategy_chosen_by": chosen_by})
            model_file.save(MODEL_FILE, result.model.state_dict(), card)
            runs.tag_weights(MODEL_FILE)
            metrics = {
                "best_val_accuracy": result.best.val_accuracy,
                "best_epoch": result.best.epoch,
                "trainable_params": result.trainable_params,
                "total_params": result.total_params,
            }
            runs.log_metrics({"val/best_accuracy": result.best.val_accuracy, "train/seconds": result.seconds})
            write_json(TRAIN_METRICS, metrics)
            write_history(result.history)
    if main_rank:
        CHECKPOINT_FILE.unlink()  # the outputs are complete: nothing left to resume
    processes = f" on {distributed.size()} processes" if distributed.active() else ""
    distributed.stop()
    print(
        f"{params.finetune.strategy}: best val accuracy {result.best.val_accuracy:.4f} at epoch "
        f"{result.best.epoch}, {result.trainable_params:,} of {result.total_params:,} parameters trained, "
        f"{result.seconds:.0f} s{processes}"
    )


if __name__ == "__main__":
    main()
