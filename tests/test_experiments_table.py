"""`make experiments` (pipeline.commands.experiments): DVC's experiments as a table that fits the terminal, strategy
and test accuracy first, from `dvc exp show --csv` of a real run and of a real DVC repository."""

import csv
import io
import json
import subprocess
import sys

import pytest
import yaml

from pipeline.commands.experiments import ExperimentRow, table
from tests.conftest import ROOT, default_params, stage_env

# `dvc exp show --csv --drop '.*' --keep ...` of four strategies on digits and one on animal-shape
SHOWN = """\
Experiment,rev,typ,Created,trainable_params,accuracy,data.source,model.backbone,finetune.strategy
,workspace,baseline,,1030410,0.35,data/builtin/digits,efficientnet_lite0,partial
,master,baseline,2026-12-02T06:28:46,1030410,0.35,data/builtin/digits,efficientnet_lite0,partial
shapes,ea5143c,branch_commit,2026-12-02T06:38:32,1030410,0.3,data/builtin/animal-shape,efficientnet_lite0,partial
norm,f1ddae5,branch_commit,2026-12-02T06:34:38,54826,0.45,data/builtin/digits,efficientnet_lite0,norm
head,bcee5d8,branch_base,2026-12-02T06:31:18,12810,0.35,data/builtin/digits,efficientnet_lite0,head
"""


def rows() -> list[ExperimentRow]:
    return [ExperimentRow.of(row) for row in csv.DictReader(io.StringIO(SHOWN))]


def test_80_columns_show_strategy_and_accuracy_first_and_shorten_the_names_before_dropping_any():
    lines = table(rows(), 80).splitlines()
    assert max(map(len, lines)) <= 80
    assert lines[0].split() == ["strategy", "accuracy", "experiment", "trained", "data", "backbone"]
    assert lines[1].split() == ["partial", "0.3500", "workspace", "1,030,410", "digits", "efficientne…"]
    assert lines[3].split()[:5] == ["partial", "0.3000", "shapes", "1,030,410", "animal-shape"]
    assert lines[4].split()[:5] == ["norm", "0.4500", "norm", "54,826", "digits"]


@pytest.mark.parametrize("width", [120, 60, 30, 10])
def test_any_width_keeps_strategy_and_accuracy_and_only_a_wide_one_the_rest(width):
    lines = table(rows(), width).splitlines()
    assert [line.split()[:2] for line in lines[:2]] == [["strategy", "accuracy"], ["partial", "0.3500"]]
    if width >= len("strategy  accuracy"):
        assert max(map(len, lines)) <= width
    assert ("created" in lines[0]) == (width == 120) and "2026-12-02 06:38" in table(rows(), 120)


def test_an_experiment_without_metrics_yet_shows_empty_cells():
    [row] = [ExperimentRow.of({"Experiment": "queued", "finetune.strategy": "lora"})]
    assert (row.strategy, row.accuracy, row.trained_params, row.data) == ("lora", "", "", "")
    assert table([row], 80).splitlines()[1] == "lora                queued"


def test_a_real_dvc_experiment_fits_80_columns(tmp_path):
    """`dvc exp show` of a repository with the project's params.yaml and metric files, and one `dvc exp run`."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params(**{"data.source": "data/builtin/digits"})))
    write = (
        "import json, pathlib, yaml; p = yaml.safe_load(open('params.yaml')); m = pathlib.Path('metrics'); "
        "m.mkdir(exist_ok=True); head = p['finetune']['strategy'] == 'head'; "
        "trained = {'trainable_params': 1280 if head else 3383818}; "
        "(m / 'train.json').write_text(json.dumps(trained)); "
        "(m / 'evaluate.json').write_text(json.dumps({'accuracy': 0.8 if head else 0.9}))"
    )
    stage = {
        "cmd": f'{sys.executable} -c "{write}"',
        "params": ["finetune.strategy"],
        "metrics": [{"metrics/train.json": {"cache": False}}, {"metrics/evaluate.json": {"cache": False}}],
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
    env = stage_env(COLUMNS="80", PYTHONPATH=str(ROOT))
    for command in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "repro", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
        ["dvc", "exp", "run", "-q", "-n", "probe", "-S", "finetune.strategy=head"],
    ):
        subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True)
    command = [sys.executable, "-P", "-m", "pipeline.commands.experiments"]
    shown = subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout
    lines = shown.splitlines()
    assert lines[0].split()[:2] == ["strategy", "accuracy"] and max(map(len, lines)) <= 80
    assert lines[1].split()[:4] == ["head", "0.8000", "workspace", "1,280"]  # the experiment, applied
    assert any(line.split()[:3] == ["head", "0.8000", "probe"] for line in lines)
    assert any(line.split()[:2] == ["full", "0.9000"] for line in lines)  # the commit it branched from
    assert json.loads((tmp_path / "metrics/evaluate.json").read_text())["accuracy"] == 0.8
