"""The docs cannot drift from the committed results: every figure is generated (`make docs`) from result files
that say where they were measured, every result file is read by a doc, the README stays a short guide, and its
links resolve. Fast: no network, no torch, no pipeline run."""

import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from benchmarks.figures import KINDS, DecodeResult
from benchmarks.report import RECORDED, Result, write_result
from pipeline.choice.compare_report import CompareReport

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "docs" / "results.py"
GENERATED = ("docs/results.md", "BENCHMARKS.md")
INPUTS = ("metrics", "reports", "benchmarks/results", "BENCHMARKS.md", "dvc.lock", ".ci/results-machine")
RESULTS = ROOT / "benchmarks" / "results"
INDEX = RESULTS / "index.yaml"
# Hand-written pages: prose only, every measured figure lives in a generated page or block.
HAND_WRITTEN = ("README.md", "BENCHMARKS.md", *(path.relative_to(ROOT).as_posix() for path in ROOT.glob("docs/*.md")))
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
GENERATED_BLOCK = re.compile(r"<!-- generated:([a-z0-9-]+) -->.*?<!-- /generated:\1 -->", re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_results", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results():
    return load_generator()


@pytest.fixture
def project_copy(tmp_path) -> Path:
    """The committed inputs of the docs, and nothing else, in a temporary project folder."""
    for name in INPUTS:
        source, target = ROOT / name, tmp_path / name
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return tmp_path


def generate(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(GENERATOR), "--root", str(root)], capture_output=True, text=True, timeout=60, check=True
    )


def prose(text: str) -> str:
    """Markdown without code blocks, inline code and generated blocks."""
    text = GENERATED_BLOCK.sub("", FENCE.sub("", text))
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_generator_reproduces_the_committed_docs(project_copy):
    generate(project_copy)
    for name in GENERATED:
        assert (project_copy / name).read_bytes() == (ROOT / name).read_bytes(), (
            f"{name} is not what the committed result files give: run `make docs` and commit the result"
        )
    assert not list(project_copy.rglob("*.partial")), "a temporary file of the atomic write was left behind"


def test_generator_is_deterministic_and_leaves_up_to_date_files_alone(project_copy):
    first = generate(project_copy)
    written = {name: (project_copy / name).read_bytes() for name in GENERATED}
    second = generate(project_copy)
    assert {name: (project_copy / name).read_bytes() for name in GENERATED} == written
    assert "written" in first.stdout or "up to date" in first.stdout
    assert second.stdout.count("up to date") == len(GENERATED), second.stdout


def test_a_changed_metric_or_a_hand_edited_figure_shows_up(project_copy, results):
    evaluate = project_copy / "metrics/evaluate.json"
    original = evaluate.read_text()
    evaluate.write_text(json.dumps(json.loads(original) | {"accuracy": 0.5}))
    assert results.outputs(project_copy)[results.RESULTS_MD] != (ROOT / "docs/results.md").read_text()
    evaluate.write_text(original)

    benchmarks = project_copy / "BENCHMARKS.md"
    committed = benchmarks.read_text()
    stale = GENERATED_BLOCK.sub(
        lambda m: f"<!-- generated:{m[1]} -->\n\n| 1 |\n\n<!-- /generated:{m[1]} -->",
        committed,
    )
    benchmarks.write_text(stale)
    assert results.outputs(project_copy)[results.BENCHMARKS_MD] == committed


def test_every_generated_block_has_an_index_entry_and_every_entry_a_block(results):
    text = (ROOT / "BENCHMARKS.md").read_text()
    names = GENERATED_BLOCK.findall(text)
    blocks = results.read_index(ROOT).blocks
    assert sorted(names) == sorted(blocks)
    renderers = {str(block.get("render", name)) for name, block in blocks.items() if "parts" not in block}
    assert renderers == set(results.RENDERERS), "a renderer no block uses, or a block naming no renderer"
    with pytest.raises(SystemExit, match="unknown"):
        results.render_benchmarks(ROOT, text + "\n<!-- generated:nothing --><!-- /generated:nothing -->\n")
    first = names[0]
    without = re.sub(rf"<!-- generated:{first} -->.*?<!-- /generated:{first} -->", "", text, flags=re.DOTALL)
    with pytest.raises(SystemExit, match="missing"):
        results.render_benchmarks(ROOT, without)


def test_generator_needs_no_ml_stack():
    """`make docs` reads JSON and YAML: no torch or numpy, and of the pipeline only the comparison's typed report."""
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1], run_name='docs_results'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'numpy', 'pipeline'}))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(GENERATOR)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(sorted(["pipeline", "pipeline.atomic", "pipeline.choice", COMPARE_REPORT]))


COMPARE_REPORT = "pipeline.choice.compare_report"


def index_text(root: Path) -> dict:
    return YAML(typ="safe").load(root / "benchmarks/results/index.yaml")


def write_index(root: Path, index: dict) -> None:
    """As JSON, which is YAML: a YAML dump would sort the keys, the columns of the tables among them."""
    (root / "benchmarks/results/index.yaml").write_text(json.dumps(index))


def test_a_block_naming_a_missing_file_or_parameter_stops_the_generator_with_its_name(project_copy, results):
    index = index_text(project_copy)
    index["blocks"]["soak"] = {"soak": "benchmarks/results/cpu-soak/nothing.json"}
    write_index(project_copy, index)
    with pytest.raises(SystemExit, match="cpu-soak/nothing.json"):
        results.outputs(project_copy)
    index["blocks"]["soak"] = {"soak_file": "benchmarks/results/cpu-soak/soak.json"}
    write_index(project_copy, index)
    with pytest.raises(SystemExit, match=r"(?s)block soak: .*soak_file"):
        results.outputs(project_copy)


def test_a_template_naming_what_its_result_lacks_stops_the_generator_with_its_name(project_copy, results):
    index = index_text(project_copy)
    index["blocks"]["bench-total"]["parts"] = [{"text": "{bench.wall_minutes}"}]
    write_index(project_copy, index)
    with pytest.raises(SystemExit, match=r"block bench-total: .*wall_minutes"):
        results.outputs(project_copy)
    index["blocks"]["bench-total"]["files"] = {"bench": "benchmarks/results/cpu-soak/soak.json"}
    write_index(project_copy, index)
    with pytest.raises(
        SystemExit, match=r"block bench-total: .*cpu-soak/soak.json: its folder's entry gives it no kind"
    ):
        results.outputs(project_copy)


def test_a_gpu_run_of_another_strategy_is_labelled_as_such(project_copy, results):
    """The committed default run and the H200 run trained different strategies: the table says so, and stops
    saying it once they are the same."""
    run = project_copy / "benchmarks/results/h200-default-pipeline/run.json"
    block = GENERATED_BLOCK.pattern.replace("([a-z0-9-]+)", "default-gpu").replace("\\1", "default-gpu")
    shown = re.search(block, results.outputs(project_copy)[results.BENCHMARKS_MD], re.DOTALL)[0]
    assert "| `full` |" in shown and "| `partial` |" in shown and "trained different strategies" in shown
    run.write_text(json.dumps(json.loads(run.read_text()) | {"strategy": "full"}))
    shown = re.search(block, results.outputs(project_copy)[results.BENCHMARKS_MD], re.DOTALL)[0]
    assert "| `partial` |" not in shown and "Both runs trained `full`." in shown


def result_files() -> list[Path]:
    return sorted(path for path in RESULTS.rglob("*") if path.is_file() and path != INDEX)


def test_every_result_file_is_read_by_the_generator_or_named_by_a_doc(project_copy, results, monkeypatch):
    read = set()
    original = Path.read_text

    def recording(path, *args, **kwargs):
        read.add(Path(path).resolve())
        return original(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", recording)
    results.outputs(project_copy)
    monkeypatch.undo()
    named = "\n".join((ROOT / page).read_text() for page in HAND_WRITTEN)
    orphans = [
        path.relative_to(ROOT).as_posix()
        for path in result_files()
        if (project_copy / path.relative_to(ROOT)).resolve() not in read
        and path.relative_to(ROOT).as_posix() not in named
    ]
    assert not orphans, f"result files no doc reads or names (delete them, or say in BENCHMARKS.md why kept): {orphans}"
    assert not [path for path in result_files() if path.suffix != ".json"], "logs and notes belong in the JSON"


def test_the_index_describes_every_result_folder_and_only_those(results):
    folders = {path.name for path in RESULTS.iterdir() if path.is_dir()}
    assert set(results.read_index(ROOT).folders) == folders


@pytest.mark.parametrize("path", [path.relative_to(ROOT).as_posix() for path in result_files()])
def test_every_result_says_where_and_how_it_was_measured(path):
    data = json.loads((ROOT / path).read_text())
    if "setup" in data:  # a comparison report, with its own date, git commit and load average
        assert CompareReport.read(ROOT / path).setup.date
        return
    environment = Result.read(ROOT / path).environment
    assert environment.date and (environment.cpu_count or environment.gpu), environment
    if environment.source != RECORDED:  # an older result, given what its own files recorded
        assert environment.not_recorded, f"{path}: say which fields its run did not record"


def test_a_benchmark_result_carries_the_environment_of_its_run(tmp_path):
    path = tmp_path / "result.json"
    write_result(path, {"rows": [1, 2]}, ["--out", str(path)])
    written = Result.read(path)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    environment = written.environment
    assert written.figures == {"rows": [1, 2]}
    assert (environment.cpu_count, environment.python) == (os.cpu_count(), platform.python_version())
    assert environment.command.endswith(f"--out {path}") and environment.git_commit.startswith(head)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", environment.date)
    assert environment.not_recorded == [] and environment.source == RECORDED
    assert not list(tmp_path.glob(".*")), "a temporary file of the atomic write was left behind"


def typed_files() -> list[tuple[str, str]]:
    folders = YAML(typ="safe").load(INDEX)["folders"]
    return [
        (f"{name}/{file}", kind) for name, folder in folders.items() for file, kind in folder.get("files", {}).items()
    ]


@pytest.mark.parametrize(("path", "kind"), typed_files())
def test_every_typed_result_loads_into_its_kind_and_writes_back_what_it_read(path, kind, tmp_path):
    read = KINDS[kind].read(RESULTS / path)
    read.write(tmp_path / "written.json")
    assert KINDS[kind].read(tmp_path / "written.json") == read


def test_a_result_with_a_figure_its_kind_does_not_know_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "decode.json"
    data = json.loads((RESULTS / "h200-decode/decode.json").read_text())
    path.write_text(json.dumps(data | {"rows": [data["rows"][0] | {"nvjpeg_images_per_s": 1.0}]}))
    with pytest.raises(SystemExit, match=rf"(?s){re.escape(str(path))}: .*nvjpeg_images_per_s"):
        DecodeResult.read(path)


def test_an_older_result_loads_into_the_current_fields_of_its_kind():
    """gpu_decode once named its CPU figure by its thread count; training once wrote {} for a skipped part."""
    decode = DecodeResult.read(RESULTS / "h200-decode/decode.json").rows[0]
    assert (decode.cpu_threads, round(decode.cpu_images_per_s)) == (16, 1654)
    assert KINDS["training"].read(RESULTS / "h200-training-run1/train_small.json").head_only is None


def test_readme_is_a_short_guide():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move detail to docs/, figures to docs/results.py"


@pytest.mark.parametrize(
    "page", ["README.md", "BENCHMARKS.md", "docs/results.md", "docs/strategies.md", "docs/serving.md", "docs/teams.md"]
)
def test_relative_links_resolve(page):
    path = ROOT / page
    if not path.is_file():
        pytest.skip(f"{page} does not exist")
    broken = []
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", FENCE.sub("", linked.read_text()), re.MULTILINE)
            if anchor not in {slug(heading) for heading in headings}:
                broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, f"{page}: broken links: {broken}"


FIGURE_PATTERNS = {
    "a mean ± std": r"\d\s*±\s*\d",
    "an accuracy-like fraction": r"(?<![\w.])0\.\d{2,}(?![\w.])",
    "a speed ratio": r"(?<![\w`])[x×]\d+(?:\.\d+)?(?![\w.])",
    "a throughput or latency": r"\d[\d,.]*\s*(?:img/s|images/s|req/s|requests/s|ms)\b",
    "a duration": r"(?<!under )\d[\d,.]*\s*(?:s|min|minutes|seconds)\b",
}


@pytest.mark.parametrize("page", HAND_WRITTEN)
def test_hand_written_prose_carries_no_measured_figures(page):
    if page == "docs/results.md":
        pytest.skip("generated whole")
    text = prose((ROOT / page).read_text())
    found = [
        f"{what}: {match.group(0)!r} in {text[max(0, match.start() - 40) : match.end() + 20]!r}"
        for what, pattern in FIGURE_PATTERNS.items()
        for match in re.finditer(pattern, text)
    ]
    assert not found, f"{page}: figures outside generated blocks (generate them in docs/results.py): {found}"
