#!/bin/bash
# One dataset again, alone on the machine: the grid (out/grid2), then halving right after it (out/$TAG).
# As run in this sitting: animal-shape, tag e, in /tmp/halv2 (the first grid shared its cores with a test
# run at nice 19 for about four minutes). The third sitting runs it for digits.
set -u
first=$(cd "$(dirname "$0")/../2026-11-28-cpu-issue14" && pwd)
export HALV=${HALV:-/tmp/halv2}
DATA=${DATA:-animal-shape}
TAG=${TAG:-e}
export MLFLOW_DISABLE_TELEMETRY=true BENTOML_DO_NOT_TRACK=True ORT_DISABLE_TELEMETRY=1 DVC_NO_ANALYTICS=1
export MLFLOW_TRACKING_URI=sqlite:///$HALV/mlflow.db
PY=/work/main/.venv/bin/python
dir=$HALV/$DATA
set_method() {
  $PY -c "import yaml; f='$dir/params.yaml'; p=yaml.safe_load(open(f)); p['compare']['method']='$1'; yaml.safe_dump(p, open(f,'w'), sort_keys=False)"
}
uptime
set_method grid
(cd $dir && PYTHONPATH=/work/main $PY -m pipeline.compare --out $HALV/out/grid2/$DATA > $HALV/grid2-$DATA.log 2>&1)
echo "grid2 $DATA rc=$? $(date +%T)"
set_method halving
DATASETS=$DATA bash $first/run.sh $TAG
uptime
