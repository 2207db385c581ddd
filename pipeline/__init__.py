"""Fine-tune a pretrained image classifier with a chosen strategy; see README.md and dvc.yaml."""

import os

for _name, _value in {
    # Every library of the stack phones home unless told not to; the stages must not.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "True",
    "ORT_DISABLE_TELEMETRY": "1",
    "DVC_NO_ANALYTICS": "1",
    # MLflow's client retries a lost tracking server 7 times with doubling waits, each call for up to
    # 120 s: a server lost mid-training hung it for minutes. These bound a call to under a minute.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}.items():
    os.environ.setdefault(_name, _value)
