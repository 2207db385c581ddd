"""The README's pictures of the MLflow UI: the runs table, the chart view and the compare view of
four strategies trained on the default data, taken with headless Chromium with every request
outside 127.0.0.1 blocked.

    make screenshots                                  # about 10 minutes on 2 CPU cores
    python docs/screenshots.py --store mlflow.db      # the runs of an existing store instead

Without --store, the project (its tracked and new files) is copied to a temporary git repository
where `dvc repro` trains the default strategy and `dvc exp run --temp` three more, into that copy's
own MLflow store; your workspace, store and experiments are not touched. An `mlflow server` on a
free loopback port then shows the store to Chromium (Debian's `chromium`, or CHROMIUM=path) driven
by Playwright. Writes docs/images/mlflow-runs.png, mlflow-charts.png and mlflow-compare.png.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the tests' server helpers

from tests.conftest import stage_env  # noqa: E402  (telemetry off, this venv's tools first)
from tests.servers import free_port  # noqa: E402

IMAGES = ROOT / "docs" / "images"
EXPERIMENT = "transfer-learning"
MORE_STRATEGIES = ("head", "full", "lp-ft")  # besides params.yaml's own, trained by `dvc repro`
# The columns that answer "which strategy?", ticked in the runs table's Columns menu.
COLUMNS = ("test/accuracy", "model/trainable_params", "train/seconds", "finetune.strategy")
FOLDED_SECTIONS = ("export", "model", "per_class")  # in the chart view, above the learning curves
COMPARED = ("model/trainable_params", "train/seconds", "test/accuracy")  # the parallel coordinates' axes


def run(command: list[str], cwd: Path) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=cwd, env=stage_env(), check=True)


def demo_store(folder: Path) -> Path:
    """Train the default strategy and MORE_STRATEGIES in a copy of the project; its MLflow store."""
    project = folder / "project"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        if (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    run(["git", "init", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=screenshots", "-c", "user.email=screenshots@localhost", "commit", "-qm", "."], project)
    run(["dvc", "repro"], project)
    for strategy in MORE_STRATEGIES:
        run(["dvc", "exp", "run", "--temp", "-n", strategy, "-S", f"finetune.strategy={strategy}"], project)
    return project / "mlflow.db"


@contextmanager
def mlflow_server(store: Path):
    port = free_port()
    command = ["mlflow", "server", "--backend-store-uri", f"sqlite:///{store.resolve()}", "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--workers", "1"],
        env=stage_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"mlflow server on {url} did not start") from None
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(30)


def experiment_id(url: str) -> str:
    from mlflow import MlflowClient

    return MlflowClient(url).get_experiment_by_name(EXPERIMENT).experiment_id


def view_mode(page, mode: str):
    """The runs page's view switch (TABLE, CHART, ARTIFACT): a hidden radio input inside its label."""
    return page.locator("label", has=page.locator(f"input[name=runs-view-mode][value={mode}]"))


def shoot(url: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    runs = f"{url}/#/experiments/{experiment_id(url)}/runs?workflowType=machine_learning"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=os.environ.get("CHROMIUM") or shutil.which("chromium"), args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1800, "height": 900}, device_scale_factor=1)
        # offline: a page that needs the network shows it here as missing parts, not as a silent download
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort())
        page.goto(runs)
        page.get_by_text(re.compile(r"\d+ matching runs?")).wait_for()
        page.get_by_role("button", name="Close").click()  # the assistant panel
        page.get_by_role("button", name="Columns", exact=True).click()
        for column in COLUMNS:
            page.get_by_placeholder("Search columns").fill(column)
            for folded in page.locator(".du-bois-light-tree-switcher_close").all():  # its group, if folded
                folded.click()
            node = page.locator(".du-bois-light-tree-treenode", has=page.get_by_text(column, exact=True))
            node.locator(".du-bois-light-tree-checkbox").click()
        page.keyboard.press("Escape")
        page.get_by_role("button", name=re.compile("^Sort")).click()
        page.get_by_placeholder("Search", exact=True).fill("test/accuracy")
        page.get_by_text("test/accuracy", exact=True).last.click()
        page.keyboard.press("Escape")
        page.wait_for_timeout(1500)
        page.screenshot(path=out / "mlflow-runs.png")

        view_mode(page, "CHART").click()
        page.set_viewport_size({"width": 1800, "height": 1400})  # the learning curves below the results
        for section in FOLDED_SECTIONS:  # sections come in alphabetical order: the curves first
            header = page.locator(".du-bois-light-collapse-header", has=page.get_by_text(section, exact=True))
            header.locator(".du-bois-light-collapse-arrow").click()
        page.wait_for_timeout(4000)
        page.screenshot(path=out / "mlflow-charts.png")

        view_mode(page, "TABLE").click()
        page.set_viewport_size({"width": 1800, "height": 900})
        page.get_by_role("checkbox").first.click()  # the header's: every run
        page.get_by_role("button", name="Compare").click()
        page.get_by_text("Parallel Coordinates Plot").wait_for()
        page.goto(f"{page.url}&workflowType=machine_learning")  # the compare page forgets it
        metrics = page.locator(".du-bois-light-select").nth(1)  # parameters, then metrics
        for chosen in metrics.locator(".du-bois-light-select-selection-item-remove").all():
            chosen.click()
        for metric in COMPARED:
            metrics.click()
            page.keyboard.type(metric)
            page.keyboard.press("Enter")
        page.keyboard.press("Escape")
        page.wait_for_timeout(3000)
        page.screenshot(path=out / "mlflow-compare.png")
        browser.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, help="an MLflow sqlite file with runs in `transfer-learning`")
    parser.add_argument("--out", type=Path, default=IMAGES)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as folder:
        store = args.store or demo_store(Path(folder))
        with mlflow_server(store) as url:
            shoot(url, args.out)
    print(f"wrote {', '.join(sorted(p.name for p in args.out.glob('mlflow-*.png')))} in {args.out}")


if __name__ == "__main__":
    main()
