"""The docs cannot drift from the committed results: every figure is generated (`make docs`), the README
stays a short guide, and its links resolve. Fast: no network, no torch, no pipeline run."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "docs" / "results.py"
GENERATED = ("docs/results.md", "BENCHMARKS.md")
INPUTS = ("metrics", "reports", "benchmarks/results", "BENCHMARKS.md")
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
    assert not list(project_copy.rglob("*.tmp")), "a temporary file of the atomic write was left behind"


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


def test_every_generated_block_has_a_generator_and_every_generator_a_block(results):
    text = (ROOT / "BENCHMARKS.md").read_text()
    names = GENERATED_BLOCK.findall(text)
    assert sorted(names) == sorted(results.GENERATORS)
    with pytest.raises(SystemExit, match="unknown"):
        results.render_benchmarks(ROOT, text + "\n<!-- generated:nothing --><!-- /generated:nothing -->\n")
    first = names[0]
    without = re.sub(rf"<!-- generated:{first} -->.*?<!-- /generated:{first} -->", "", text, flags=re.DOTALL)
    with pytest.raises(SystemExit, match="missing"):
        results.render_benchmarks(ROOT, without)


def test_generator_needs_only_the_standard_library():
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1], run_name='docs_results'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'numpy', 'yaml', 'pipeline'}))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(GENERATOR)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


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
