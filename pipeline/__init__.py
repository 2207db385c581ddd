"""Fine-tune a pretrained image classifier with a chosen strategy; see README.md and dvc.yaml."""

import os
from pathlib import Path

TELEMETRY_OPT_OUTS = Path(__file__).with_name("telemetry.env")

for _line in TELEMETRY_OPT_OUTS.read_text().splitlines():
    if _line and not _line.startswith("#"):
        _name, _value = _line.split("=", 1)
        os.environ.setdefault(_name, _value)

for _name, _value in {
    # MLflow's client retries a lost tracking server 7 times with doubling waits, each call for up to
    # 120 s: a server lost mid-training hung it for minutes. These bound a call to under a minute.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}.items():
    os.environ.setdefault(_name, _value)
