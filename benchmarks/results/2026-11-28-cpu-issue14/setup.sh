#!/bin/bash
# Temp projects for halving experiments on both built-in datasets (prepare + verdict done once).
set -eu
export HALV=${HALV:-/tmp/halv}  # the scratch folder
export MLFLOW_DISABLE_TELEMETRY=true BENTOML_DO_NOT_TRACK=True ORT_DISABLE_TELEMETRY=1 DVC_NO_ANALYTICS=1
export MLFLOW_TRACKING_URI=sqlite:///$HALV/mlflow.db
PY=/work/main/.venv/bin/python
for name in animal-shape digits; do
  dir=$HALV/$name; rm -rf $dir; mkdir -p $dir/data; ln -s /work/main/data/builtin $dir/data/builtin
  cp /work/main/reports/verdict/calibration.csv $HALV/calibration.csv
  $PY - $name <<'PYEOF'
import os, sys, yaml
p = yaml.safe_load(open("/work/main/params.yaml"))
p["data"]["source"] = f"data/builtin/{sys.argv[1]}"
p["compare"]["method"] = "halving"
yaml.safe_dump(p, open(f"{os.environ['HALV']}/{sys.argv[1]}/params.yaml", "w"), sort_keys=False)
PYEOF
  mkdir -p $dir/reports/verdict && cp /work/main/reports/verdict/calibration.csv $dir/reports/verdict/
  cd $dir && PYTHONPATH=/work/main nice $PY -m pipeline.prepare > prepare.log 2>&1 && PYTHONPATH=/work/main nice $PY -m pipeline.verdict > verdict.log 2>&1
  tail -n 3 $dir/verdict.log
done
