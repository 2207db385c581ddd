"""Where the stages read and write, relative to the project root: the one list of the files through
which the stages meet (dvc.yaml declares the same paths as deps and outs)."""

import os
from pathlib import Path

DVC_FILE = Path("dvc.yaml")
BUILTIN_DIR = Path("data/builtin")  # the built-in datasets as class folders (the builtin stage)
PREPARED_DIR = Path("data/prepared")
MANIFEST = PREPARED_DIR / "manifest.csv"
PREPARE_REPORT = PREPARED_DIR / "report.json"
DECODED_DIR = Path(
    "data/decoded"
)  # the decoded cache (pipeline.data.decoded), under project_root(); not in git nor DVC

MODELS_DIR = Path("models")
MODEL_FILE = MODELS_DIR / "model.pt"  # best weights and the model card (pipeline.model.model_file)
CHECKPOINT_FILE = MODELS_DIR / "checkpoint.pt"  # not a DVC output: see pipeline.finetune.checkpoint
ONNX_FILE = MODELS_DIR / "model.onnx"

METRICS_DIR = Path("metrics")
PREPARE_METRICS = METRICS_DIR / "prepare.json"
TRAIN_METRICS = METRICS_DIR / "train.json"
TRAIN_HISTORY = METRICS_DIR / "train_history.csv"
EVALUATE_METRICS = METRICS_DIR / "evaluate.json"
TEST_PREDICTIONS = METRICS_DIR / "test_predictions.csv"
CONFUSION_PNG = METRICS_DIR / "confusion_matrix.png"
EXPORT_METRICS = METRICS_DIR / "export.json"

REPORT_DIR = Path("reports")
VERDICT_DIR = REPORT_DIR / "verdict"  # the verdict stage's report, and the cases its rule is fitted on
VERDICT_JSON = VERDICT_DIR / "verdict.json"
VERDICT_MD = VERDICT_DIR / "verdict.md"
VERDICT_GALLERY = VERDICT_DIR / "label_issues.png"
VERDICT_STRATEGY = VERDICT_DIR / "strategy.json"  # its answer as finetune settings: what `strategy: verdict` trains
VERDICT_CALIBRATION = VERDICT_DIR / "calibration.jsonl"  # the listed cases, scored (pipeline.commands.calibrate)
LABEL_CHECK = VERDICT_DIR / "label_check.jsonl"  # planted label flips, found or not, per case
COMPARE_JSON = REPORT_DIR / "compare.json"  # `make compare` (pipeline.commands.compare --out: elsewhere)
CALIBRATION_CASES = REPORT_DIR / "calibration" / "cases.yaml"  # the comparisons the verdict is fitted on
CALIBRATION_DATA = Path("data/calibration")  # the cases' transformed copies of built-in sets; not in git nor DVC


def project_root() -> Path:
    """The project, also from DVC's temporary experiment copies (DVC sets DVC_ROOT to the original)."""
    return Path(os.environ.get("DVC_ROOT", ".")).resolve()
