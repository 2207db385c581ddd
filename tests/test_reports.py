"""The committed reports are what their typed JSON gives: each loads, writes back byte for byte, and its
Markdown page regenerates unchanged, so a report read by calibration or the docs is the one on the page."""

import json

import pytest

from pipeline.choice.compare_markdown import markdown
from pipeline.choice.compare_report import CompareReport
from pipeline.choice.verdict_report import VerdictReport
from pipeline.choice.verdict_report import markdown as verdict_markdown
from tests.conftest import ROOT

COMPARISONS = sorted((ROOT / "reports").rglob("compare.json"))


def as_written(report) -> str:
    return json.dumps(report.model_dump(mode="json", exclude_unset=True), indent=2) + "\n"


@pytest.mark.parametrize("path", COMPARISONS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_a_committed_comparison_round_trips_and_its_page_regenerates(path):
    report = CompareReport.read(path)
    assert as_written(report) == path.read_text()
    assert markdown(report) == path.with_suffix(".md").read_text()


def test_the_committed_verdict_round_trips_and_its_page_regenerates():
    path = ROOT / "reports/verdict/verdict.json"
    report = VerdictReport.read(path)
    assert as_written(report) == path.read_text()
    assert verdict_markdown(report) == path.with_suffix(".md").read_text()


def test_a_report_with_an_unknown_field_is_refused(tmp_path):
    raw = json.loads(COMPARISONS[0].read_text())
    raw["setup"]["colour"] = "blue"
    (tmp_path / "compare.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="setup.colour"):
        CompareReport.read(tmp_path / "compare.json")
