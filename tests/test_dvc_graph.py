"""dvc.yaml knows what each stage runs: its deps are exactly the project modules the stage imports
(directly or through other modules), no stage module imports another, and its params are the keys
that change its result, so `dvc repro` can neither miss a change nor redo work for nothing."""

import ast
import re
from pathlib import Path

import yaml

from pipeline.checkpoint import TRAIN_PARAMS
from tests.conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
# Modules run as commands rather than as DVC stages: they too meet the stages only through files.
COMMANDS = {"pipeline.compare", "pipeline.promote"}


def stage_modules() -> dict[str, str]:
    """Stage name -> the pipeline module its command runs."""
    found = {}
    for name, stage in DVC["stages"].items():
        command = (stage.get("do") or stage)["cmd"]
        found[name] = re.search(r"-m (pipeline\.\w+)", command).group(1)
    return found


def direct_imports(module: str, root: Path = ROOT) -> set[str]:
    """The project modules (pipeline.X) that `module` imports itself."""
    tree = ast.parse((root / (module.replace(".", "/") + ".py")).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pipeline.")}
        elif isinstance(node, ast.ImportFrom) and node.module == "pipeline":
            found |= {f"pipeline.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline."):
            found.add(node.module)
    return found


def import_closure(module: str, root: Path = ROOT) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += direct_imports(current, root)
    return seen


def as_files(modules: set[str]) -> set[str]:
    return {m.replace(".", "/") + ".py" for m in modules} | {"pipeline/__init__.py"}  # run on any import


def test_each_stage_depends_on_exactly_the_modules_it_imports():
    for name, module in stage_modules().items():
        stage = DVC["stages"][name].get("do") or DVC["stages"][name]
        declared = {dep for dep in stage["deps"] if dep.endswith(".py")}
        expected = as_files(import_closure(module))
        missing, extra = sorted(expected - declared), sorted(declared - expected)
        assert declared == expected, f"stage {name}: missing from dvc.yaml {missing}, not imported {extra}"


def test_the_closure_follows_every_form_of_import_through_other_modules(tmp_path):
    """The check above is not vacuous: a module imported two steps away, in any of the three forms, counts."""
    (tmp_path / "pipeline").mkdir()
    for name, source in {
        "stage": "from pipeline import helper\n",
        "helper": "import pipeline.deep\n",
        "deep": "from pipeline.deepest import thing\nimport json\n",
        "deepest": "thing = 1\n",
        "unused": "",
    }.items():
        (tmp_path / "pipeline" / f"{name}.py").write_text(source)
    assert import_closure("pipeline.stage", tmp_path) == {
        f"pipeline.{m}" for m in ("stage", "helper", "deep", "deepest")
    }


def test_no_stage_module_imports_another():
    stages = set(stage_modules().values()) | COMMANDS
    for module in stages:
        assert not direct_imports(module) & (stages - {module}), f"{module} imports {direct_imports(module) & stages}"


def test_train_params_are_the_checkpoint_fingerprint_and_leave_out_what_does_not_change_the_model():
    params = DVC["stages"]["train"]["params"]
    assert tuple(params) == TRAIN_PARAMS
    for how_it_runs in ("train.loader_workers", "mlflow.experiment", "train.distributed", "train"):
        assert how_it_runs not in params
