"""`dvc plots show` draws every plot with no network: .dvc/config's plots.html_template is a page that inlines
Vega, Vega-Lite and vega-embed (DVC's own page loads them from a CDN), and the real dvc.yaml draws each plot
once. Runs the real `dvc plots show` in a temporary git + DVC repository holding tiny metrics files."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline.model.scoring import confusion_figure
from tests.conftest import ROOT, stage_env

LOADING_TAGS = {"script", "link", "img", "iframe", "embed", "object", "source"}
REMOTE = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)  # http://, https://, //cdn..., ftp://
SPEC_CALL = re.compile(r"var spec = (\{.*\});\s*vegaEmbed\('#\w+', spec\);", re.DOTALL)


class Page(HTMLParser):
    """A page's external references (src, href, data of the tags that load something) and inline scripts."""

    def __init__(self, html: str):
        super().__init__()
        self.references: list[str] = []
        self.images: list[str] = []
        self.scripts: list[str] = []
        self._script: list[str] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag in LOADING_TAGS:
            self.references += [attributes[name] for name in ("src", "href", "data") if attributes.get(name)]
        if tag == "img":
            self.images.append(attributes.get("src", ""))
        if tag == "script" and not attributes.get("src"):
            self._script = []

    def handle_data(self, data):
        if self._script is not None:
            self._script.append(data)

    def handle_endtag(self, tag):
        if tag == "script" and self._script is not None:
            self.scripts.append("".join(self._script))
            self._script = None


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory) -> tuple[Path, Page]:
    """dvc_plots/index.html as `dvc plots show` writes it for this checkout's dvc.yaml and .dvc/ settings."""
    project = tmp_path_factory.mktemp("plots")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, project / name)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=project, env=stage_env(), check=True)
    # the committed settings and plot templates: not the cache, tmp/ or a machine's config.local
    local = shutil.ignore_patterns("cache", "tmp", "config.local")
    shutil.copytree(ROOT / ".dvc", project / ".dvc", ignore=local, dirs_exist_ok=True)
    metrics = project / "metrics"
    metrics.mkdir()
    (metrics / "train_history.csv").write_text(
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy\n1,0.9,0.6,0.8,0.65\n2,0.5,0.8,0.6,0.75\n"
    )
    (metrics / "test_predictions.csv").write_text("path,actual,predicted\na.png,cat,cat\nb.png,dog,cat\n")
    Image.new("RGB", (8, 8), "white").save(metrics / "confusion_matrix.png")
    (project / "reports" / "verdict").mkdir(parents=True)
    Image.new("RGB", (8, 8), "white").save(project / "reports" / "verdict" / "label_issues.png")
    shown = subprocess.run(
        ["dvc", "plots", "show"], cwd=project, env=stage_env(), capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0 and not shown.stderr, shown.stdout + shown.stderr
    page = project / "dvc_plots" / "index.html"
    return page, Page(page.read_text(encoding="utf-8"))


def test_page_loads_nothing_from_the_network(plots_page):
    _, page = plots_page
    remote = [reference for reference in page.references if REMOTE.match(reference)]
    assert not remote, f"the plots page loads {remote}: offline, its plots stay empty"


def test_page_inlines_vega_vega_lite_and_vega_embed(plots_page):
    """The three globals each plot's `vegaEmbed(...)` call needs are defined by the page's own scripts."""
    _, page = plots_page
    inline = "\n".join(page.scripts)
    for library in ("vega", "vegaLite", "vegaEmbed"):
        assert re.search(rf"\.{library}\s*=", inline), f"no inline script defines {library}"


def test_every_plot_is_drawn_once(plots_page):
    """dvc.yaml's top-level plots, each with its data, the confusion one with DVC's confusion template, and
    each image once: the confusion matrix and the verdict's label-issue gallery (a plot declared both in a
    stage and at the top level is drawn twice)."""
    path, page = plots_page
    specs = [json.loads(match) for script in page.scripts for match in SPEC_CALL.findall(script)]
    titles = [spec["title"]["text"] for spec in specs]
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    assert sorted(titles) == sorted(name for plot in declared if isinstance(plot, dict) for name in plot)
    assert all(spec["data"]["values"] for spec in specs)
    confusion = specs[titles.index("Test confusion matrix")]["spec"]
    axes = confusion_figure([0, 1], [1, 1], ["a", "b"]).axes[0]  # metrics/confusion_matrix.png's
    shown = (confusion["encoding"]["x"]["field"], confusion["encoding"]["y"]["field"])
    assert shown == (axes.get_xlabel(), axes.get_ylabel()) == ("predicted", "actual")
    assert confusion["layer"][0]["mark"] == "rect"
    images = sorted(page.images)
    assert len(images) == 2
    assert images[0].endswith("confusion_matrix.png") and images[1].endswith("label_issues.png")
    assert all((path.parent / image).is_file() for image in images)
