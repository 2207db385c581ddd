#!/bin/bash
# animal-shape again, alone on the machine: the first grid shared its cores with a test run (nice 19) for
# about four minutes. The grid (out/grid2), then halving right after it (out/e).
set -u
first=$(cd "$(dirname "$0")/../2026-11-28-cpu-issue14" && pwd)
export HALV=/tmp/halv2
export MLFLOW_DISABLE_TELEMETRY=true BENTOML_DO_NOT_TRACK=True ORT_DISABLE_TELEMETRY=1 DVC_NO_ANALYTICS=1
export MLFLOW_TRACKING_URI=sqlite:///$HALV/mlflow.db
PY=/work/main/.venv/bin/python
dir=$HALV/animal-shape
set_method() {
  $PY -c "import yaml; f='$dir/params.yaml'; p=yaml.safe_load(open(f)); p['compare']['method']='$1'; yaml.safe_dump(p, open(f,'w'), sort_keys=False)"
}
uptime
set_method grid
(cd $dir && PYTHONPATH=/work/main $PY -m pipeline.compare --out $HALV/out/grid2/animal-shape > $HALV/grid2-animal-shape.log 2>&1)
echo "grid2 animal-shape rc=$? $(date +%T)"
set_method halving
DATASETS=animal-shape bash $first/run.sh e
uptime
