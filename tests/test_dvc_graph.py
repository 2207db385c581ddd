"""dvc.yaml knows what each stage runs: its deps are exactly the project modules the stage imports
(directly or through other modules, with the packages they sit in), no stage or command module imports
another, and the train stage's params are the keys that change its result, so `dvc repro` can neither miss
a change nor redo work for nothing."""

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, stage_env

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
# Modules run by hand rather than as DVC stages: they too meet the stages only through files.
COMMANDS = {f"pipeline.commands.{path.stem}" for path in (ROOT / "pipeline/commands").glob("[a-z]*.py")}


def stage_modules() -> dict[str, str]:
    """Stage name -> the pipeline module its command runs."""
    found = {}
    for name, stage in DVC["stages"].items():
        command = (stage.get("do") or stage)["cmd"]
        found[name] = re.search(r"-m (pipeline(?:\.\w+)+)", command).group(1)
    return found


def module_file(module: str, root: Path) -> Path | None:
    """The file of a project module or package, None for a name that is neither (an attribute, say)."""
    path = root / module.replace(".", "/")
    return next((f for f in (path.with_suffix(".py"), path / "__init__.py") if f.is_file()), None)


def direct_imports(module: str, root: Path = ROOT) -> set[str]:
    """The project modules (pipeline...) that `module` imports itself, in any form."""
    tree = ast.parse(module_file(module, root).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "pipeline"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pipeline":
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # a module, where it is one
    return {name for name in found if module_file(name, root)}


def with_packages(module: str) -> set[str]:
    """The module and every package above it: importing pipeline.data.images runs pipeline/__init__.py and
    pipeline/data/__init__.py first."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def import_closure(module: str, root: Path = ROOT) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += direct_imports(current, root) | with_packages(current)
    return seen


def as_files(modules: set[str], root: Path = ROOT) -> set[str]:
    return {module_file(m, root).relative_to(root).as_posix() for m in modules}


def declared_modules(name: str) -> set[str]:
    stage = DVC["stages"][name].get("do") or DVC["stages"][name]
    return {dep for dep in stage["deps"] if dep.endswith(".py")}


def test_each_stage_depends_on_exactly_the_modules_it_imports():
    for name, module in stage_modules().items():
        declared, expected = declared_modules(name), as_files(import_closure(module))
        missing, extra = sorted(expected - declared), sorted(declared - expected)
        assert declared == expected, f"stage {name}: missing from dvc.yaml {missing}, not imported {extra}"


def test_the_closure_follows_every_form_of_import_through_other_modules_and_packages(tmp_path):
    """The check above is not vacuous: a module imported two steps away, in any form, counts with its package."""
    (tmp_path / "pipeline" / "deep").mkdir(parents=True)
    for name, source in {
        "__init__": "",
        "stage": "from pipeline import helper\n",
        "helper": "import pipeline.deep.inner\nfrom pipeline.deep import other\n",
        "deep/__init__": "",
        "deep/inner": "from pipeline.deepest import thing\nimport json\n",
        "deep/other": "",
        "deepest": "thing = 1\n",
        "unused": "",
    }.items():
        (tmp_path / "pipeline" / f"{name}.py").write_text(source)
    closure = import_closure("pipeline.stage", tmp_path)
    assert as_files(closure, tmp_path) == {
        f"pipeline/{m}.py"
        for m in ("__init__", "stage", "helper", "deep/__init__", "deep/inner", "deep/other", "deepest")
    }


def test_a_removed_dep_is_found(monkeypatch):
    """Taking a module out of a stage's deps makes the first test fail, naming the module."""
    verdict = DVC["stages"]["verdict"]
    monkeypatch.setitem(verdict, "deps", [dep for dep in verdict["deps"] if dep != "pipeline/choice/verdict_rule.py"])
    try:
        test_each_stage_depends_on_exactly_the_modules_it_imports()
    except AssertionError as failure:
        assert "missing from dvc.yaml ['pipeline/choice/verdict_rule.py']" in str(failure)
    else:
        raise AssertionError("a stage without one of its modules passed")


def test_the_verdict_does_not_depend_on_the_training_loop_nor_the_comparison_page():
    """An edit to the comparison's Markdown, or to how training runs, must not make the verdict stale."""
    verdict = declared_modules("verdict")
    for module in (
        "pipeline/finetune/loop.py",
        "pipeline/choice/compare_markdown.py",
        "pipeline/finetune/strategies.py",
    ):
        assert module not in verdict


def test_no_stage_or_command_module_imports_another():
    entry_points = set(stage_modules().values()) | COMMANDS
    for module in entry_points:
        imported = direct_imports(module) & (entry_points - {module})
        assert not imported, f"{module} imports {imported}"


def test_no_import_cycle():
    modules = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in (ROOT / "pipeline").rglob("*.py")
        if path.name != "__init__.py"  # the packages import nothing
    ]
    for module in modules:
        for imported in direct_imports(module):
            assert module not in import_closure(imported), f"{module} imports {imported}, which imports it back"


def test_train_params_leave_out_what_does_not_change_the_model():
    """The checkpoint's fingerprint reads these same params (pipeline.finetune.checkpoint.train_params)."""
    params = DVC["stages"]["train"]["params"]
    for how_it_runs in ("train.loader_workers", "mlflow.experiment", "train.distributed", "train"):
        assert how_it_runs not in params


def stale_results(status: dict, tracked: set[str]) -> dict[str, list[str]]:
    """From `dvc status --json`: per stage, the git-tracked deps, params and outputs that differ from dvc.lock.
    What git does not hold (the built-in data, data/prepared, models/) is missing from a fresh clone: not stale."""
    stale = {}
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, str):  # "changed command", "always changed"
                stale.setdefault(stage, []).append(entry)
                continue
            for changes in entry.values():
                for path, how in changes.items():
                    if path in tracked:
                        shown = ", ".join(how) if isinstance(how, dict) else how  # params: {key: modified}
                        stale.setdefault(stage, []).append(f"{path}: {shown}")
    return stale


@pytest.mark.slow  # in step only after `dvc repro`: the edit loop (make test-fast) would fail at every edit
def test_the_committed_results_were_made_by_the_code_at_head():
    """dvc.lock, and so the committed metrics and reports, in step with the code, params and data of this
    checkout: results of older code show here, not as a fresh clone that `make run` leaves dirty."""
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split())
    shown = subprocess.run(["dvc", "status", "--json"], cwd=ROOT, env=stage_env(), capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    stale = stale_results(json.loads(shown.stdout), tracked)
    assert stale == {}, f"rerun `dvc repro` and commit its results: {stale}"
