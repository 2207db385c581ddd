#!/bin/bash
# One halving comparison per dataset with compare.halving overrides: run.sh TAG key=value ...
set -u
export HALV=${HALV:-/tmp/halv}  # the scratch folder
export MLFLOW_DISABLE_TELEMETRY=true BENTOML_DO_NOT_TRACK=True ORT_DISABLE_TELEMETRY=1 DVC_NO_ANALYTICS=1
export MLFLOW_TRACKING_URI=sqlite:///$HALV/mlflow.db
PY=/work/main/.venv/bin/python
tag=$1; shift
for name in ${DATASETS:-animal-shape digits}; do
  dir=$HALV/$name
  $PY - $dir/params.yaml "$@" <<'PYEOF'
import sys, yaml
path, *pairs = sys.argv[1:]
p = yaml.safe_load(open(path))
p["compare"]["halving"] = yaml.safe_load(open("/work/main/params.yaml"))["compare"]["halving"]
for pair in pairs:
    key, value = pair.split("=")
    p["compare"]["halving"][key] = yaml.safe_load(value)
yaml.safe_dump(p, open(path, "w"), sort_keys=False)
PYEOF
  cd $dir && PYTHONPATH=/work/main $PY -m pipeline.compare --out $HALV/out/$tag/$name > $HALV/$tag-$name.log 2>&1
  echo "$tag $name rc=$? $(date +%T)"; grep -A4 "## Successive" $HALV/out/$tag/$name/compare.md | tail -n 2
done
