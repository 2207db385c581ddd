#!/bin/bash
# animal-shape again, alone on the machine: the first grid shared its cores with a test run (nice 19) for
# about four minutes. The grid (out/grid2), then halving right after it (out/e).
set -u
here=$(cd "$(dirname "$0")" && pwd)
export MLFLOW_DISABLE_TELEMETRY=true BENTOML_DO_NOT_TRACK=True ORT_DISABLE_TELEMETRY=1 DVC_NO_ANALYTICS=1
export MLFLOW_TRACKING_URI=sqlite:////tmp/halv2/mlflow.db
PY=/work/main/.venv/bin/python
dir=/tmp/halv2/animal-shape
set_method() {
  $PY -c "import yaml; f='$dir/params.yaml'; p=yaml.safe_load(open(f)); p['compare']['method']='$1'; yaml.safe_dump(p, open(f,'w'), sort_keys=False)"
}
uptime
set_method grid
(cd $dir && PYTHONPATH=/work/main $PY -m pipeline.compare --out /tmp/halv2/out/grid2/animal-shape > /tmp/halv2/grid2-animal-shape.log 2>&1)
echo "grid2 animal-shape rc=$? $(date +%T)"
set_method halving
DATASETS=animal-shape bash $here/run.sh e
uptime
