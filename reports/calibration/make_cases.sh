#!/bin/bash
# The verdict's extra calibration cases (issue 14): a full grid comparison of every strategy at other
# budgets, image sizes and random init, each in a temporary copy of the project (its own prepared split),
# logged to this project's MLflow store. Then `python -m pipeline.verdict --calibrate` adds them to
# reports/verdict/calibration.csv. About 45 minutes on 2 CPU cores; a case whose report exists is skipped.
#
#     bash reports/calibration/make_cases.sh
set -u
export MLFLOW_DISABLE_TELEMETRY=true BENTOML_DO_NOT_TRACK=True ORT_DISABLE_TELEMETRY=1 DVC_NO_ANALYTICS=1
root=$(cd "$(dirname "$0")/../.." && pwd)
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$root/mlflow.db}
python=$root/.venv/bin/python

run_case() {  # name data_source weights image_size train_per_class
  local name=$1 out=$root/reports/calibration/$1 work
  [ -f "$out/compare.json" ] && { echo "$name: done before"; return; }
  work=$(mktemp -d)
  mkdir -p "$work/data" && ln -s "$root/data/builtin" "$work/data/builtin"
  "$python" - "$root/params.yaml" "$work/params.yaml" "$2" "$3" "$4" "$5" <<'PYEOF'
import sys, yaml
source_file, target_file, data, weights, size, per_class = sys.argv[1:]
params = yaml.safe_load(open(source_file))
params["data"]["source"] = data
params["model"]["weights"] = weights
params["compare"] |= {"method": "grid", "image_size": int(size), "train_per_class": int(per_class)}
yaml.safe_dump(params, open(target_file, "w"), sort_keys=False)
PYEOF
  (cd "$work" && PYTHONPATH=$root "$python" -m pipeline.prepare && \
    PYTHONPATH=$root "$python" -m pipeline.compare --out "$out") > "$work/log" 2>&1
  local status=$?
  echo "$name: exit $status, log $work/log"
  [ $status -eq 0 ] && rm -rf "$work"
}

run_case animal-shape-random-init data/builtin/animal-shape none 64 50
run_case digits-random-init data/builtin/digits none 64 50
run_case animal-shape-25-per-class data/builtin/animal-shape DEFAULT 64 25
run_case digits-25-per-class data/builtin/digits DEFAULT 64 25
run_case animal-shape-96px data/builtin/animal-shape DEFAULT 96 40
