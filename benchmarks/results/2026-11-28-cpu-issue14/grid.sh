#!/bin/bash
# The grid on both datasets, right after the halving runs: their times side by side.
set -u
export HALV=${HALV:-/tmp/halv}  # the scratch folder
export MLFLOW_DISABLE_TELEMETRY=true BENTOML_DO_NOT_TRACK=True ORT_DISABLE_TELEMETRY=1 DVC_NO_ANALYTICS=1
export MLFLOW_TRACKING_URI=sqlite:///$HALV/mlflow.db
PY=/work/main/.venv/bin/python
for name in animal-shape digits; do
  dir=$HALV/$name
  $PY -c "
import yaml; f='$dir/params.yaml'; p=yaml.safe_load(open(f)); p['compare']['method']='grid'; yaml.safe_dump(p, open(f,'w'), sort_keys=False)"
  cd $dir && PYTHONPATH=/work/main $PY -m pipeline.compare --out $HALV/out/grid/$name > $HALV/grid-$name.log 2>&1
  echo "grid $name rc=$? $(date +%T)"
  $PY -c "
import yaml; f='$dir/params.yaml'; p=yaml.safe_load(open(f)); p['compare']['method']='halving'; yaml.safe_dump(p, open(f,'w'), sort_keys=False)"
done
