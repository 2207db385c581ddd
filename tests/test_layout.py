"""The folder tree is the architecture: sub-packages by role, short functions, one home for the telemetry
opt-outs and for the private BentoML import. Fast: it reads the source, it runs nothing."""

import ast
import re

import yaml

from pipeline import TELEMETRY_OPT_OUTS
from tests.conftest import ROOT

TOP_LEVEL = {"__init__.py", "config.py", "paths.py", "atomic.py", "progress.py"}
LONGEST_FUNCTION = 60
SERVICE_LINES = 220


def functions(root):
    for path in sorted((ROOT / root).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1


def test_only_the_shared_modules_sit_directly_in_pipeline():
    assert {path.name for path in (ROOT / "pipeline").glob("*.py")} == TOP_LEVEL
    packages = {path.parent.name for path in (ROOT / "pipeline").glob("*/__init__.py")}
    assert packages == {"stages", "commands", "data", "model", "finetune", "choice", "release", "tracking"}


def test_no_function_is_longer_than_sixty_lines():
    too_long = {where: lines for root in ("pipeline", "serving") for where, lines in functions(root)}
    assert {where: lines for where, lines in too_long.items() if lines > LONGEST_FUNCTION} == {}


def test_the_service_module_holds_the_services_and_their_routes_only():
    assert len((ROOT / "serving/service.py").read_text().splitlines()) <= SERVICE_LINES


def test_bentomls_private_modules_are_imported_in_one_place_only():
    importers = [
        path.relative_to(ROOT).as_posix()
        for root in ("pipeline", "serving", "benchmarks", "docs")
        for path in (ROOT / root).rglob("*.py")
        if re.search(r"^\s*(from|import) bentoml\._internal", path.read_text(), re.MULTILINE)
    ]
    assert len(importers) <= 1, importers


def opt_outs() -> dict[str, str]:
    lines = TELEMETRY_OPT_OUTS.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_the_telemetry_opt_outs_have_one_home():
    assert set(opt_outs()) == {
        "MLFLOW_DISABLE_TELEMETRY",
        "BENTOML_DO_NOT_TRACK",
        "ORT_DISABLE_TELEMETRY",
        "DVC_NO_ANALYTICS",
    }
    for path in (ROOT / "pipeline", ROOT / "serving", ROOT / "tests", ROOT / "benchmarks", ROOT / "Makefile"):
        for source in [path] if path.is_file() else path.rglob("*.py"):
            if source.name != "test_layout.py":
                assert "DO_NOT_TRACK" not in source.read_text(), f"{source} sets an opt-out of its own"
    # a Bento's server starts before any project code runs: its envs repeat the service's opt-outs, equal
    bento = {env["name"]: env["value"] for env in yaml.safe_load((ROOT / "serving/bentofile.yaml").read_text())["envs"]}
    service = {"MLFLOW_DISABLE_TELEMETRY", "BENTOML_DO_NOT_TRACK", "ORT_DISABLE_TELEMETRY"}
    assert {name: bento.get(name) for name in service} == {name: opt_outs()[name] for name in service}
