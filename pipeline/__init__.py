"""Fine-tune a pretrained image classifier with a chosen strategy; see README.md and dvc.yaml."""

import os

# Every library of the stack phones home unless told not to; the stages must not.
for _name, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "True",
    "ORT_DISABLE_TELEMETRY": "1",
    "DVC_NO_ANALYTICS": "1",
}.items():
    os.environ.setdefault(_name, _value)
