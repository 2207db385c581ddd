"""The README's pictures of the MLflow UI: the runs table, the chart view and the compare view of
four strategies trained on the default data, taken with headless Chromium with every request
outside 127.0.0.1 blocked; first, a check that the link `make ui` prints shows, without a click, the runs
of params.yaml's dataset sorted by test accuracy with strategy and test accuracy in sight.

    make screenshots                                  # about 10 minutes on 2 CPU cores
    python docs/screenshots.py --store mlflow.db      # the runs of an existing store (its folder's params.yaml)

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
MORE_STRATEGIES = ("head", "full", "lp-ft")  # besides params.yaml's own, trained by `dvc repro`
# What the link's page must show without a click: the columns that answer "which strategy?", at a common width.
SHOWN = ("finetune.strategy", "test/accuracy", "model/trainable_params", "train/seconds")
CHECK_VIEWPORT = {"width": 1600, "height": 1000}
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


def make_ui_link(url: str, store: Path) -> tuple[str, str]:
    """(experiment, link) as `make ui` prints them for `store`, from the params.yaml beside it."""
    printed = subprocess.run(
        [sys.executable, "-P", "-m", "pipeline.commands.ui_link", "--url", url],  # -P: this checkout's, not the copy's
        cwd=store.resolve().parent,
        env=stage_env(MLFLOW_TRACKING_URI=f"sqlite:///{store.resolve()}", PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return re.search(r"`(.+?)`", printed).group(1), printed.split()[-1]


def check_link(page, experiment: str) -> None:
    """Fail unless the page shows `experiment`'s runs in machine-learning mode, sorted by test accuracy (best
    first), with SHOWN's columns inside the window."""
    page.get_by_text(re.compile(r"\d+ matching runs?")).wait_for()
    page.wait_for_timeout(2000)  # the saved view applies its columns after the runs load
    failures = [] if page.get_by_text(experiment, exact=True).first.is_visible() else [f"{experiment} not shown"]
    if "workflowType=machine_learning" not in page.url:
        failures.append(f"not in machine-learning mode: {page.url}")
    table = page.locator(".ag-root-wrapper").bounding_box()  # its columns beyond its right edge are scrolled off
    for column in SHOWN:
        header = page.get_by_test_id(f"sort-header-{column}")
        box = header.bounding_box() if header.count() else None
        if box is None or box["x"] + box["width"] > table["x"] + table["width"]:
            failures.append(f"column {column} not in sight")
    cells = page.locator(".ag-center-cols-container [col-id='metrics.`test/accuracy`']").all_inner_texts()
    accuracies = [float(text) for text in cells if re.fullmatch(r"[\d.]+", text.strip())]
    if not accuracies or accuracies != sorted(accuracies, reverse=True):
        failures.append(f"test accuracies not best first: {cells}")
    if failures:
        raise RuntimeError("the link `make ui` prints: " + "; ".join(failures))


def view_mode(page, mode: str):
    """The runs page's view switch (TABLE, CHART, ARTIFACT): a hidden radio input inside its label."""
    return page.locator("label", has=page.locator(f"input[name=runs-view-mode][value={mode}]"))


def shoot(url: str, store: Path, out: Path, check_shot: Path | None = None) -> None:
    from playwright.sync_api import sync_playwright

    experiment, link = make_ui_link(url, store)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=os.environ.get("CHROMIUM") or shutil.which("chromium"), args=["--no-sandbox"]
        )
        page = browser.new_page(viewport=CHECK_VIEWPORT, device_scale_factor=1)
        # offline: a page that needs the network shows it here as missing parts, not as a silent download
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort())
        page.goto(link)
        check_link(page, experiment)  # as a first visit sees it: the assistant's panel open
        if check_shot:
            page.screenshot(path=check_shot)
        print(f"checked {link}: {experiment}'s runs, best test accuracy first, {', '.join(SHOWN)} shown", flush=True)
        page.get_by_role("button", name="Close").click()  # the assistant panel
        page.set_viewport_size({"width": 1800, "height": 900})
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
    parser.add_argument("--store", type=Path, help="an MLflow sqlite file beside the params.yaml naming its dataset")
    parser.add_argument("--out", type=Path, default=IMAGES)
    parser.add_argument("--check-shot", type=Path, help="a PNG of the window the check of the `make ui` link saw")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as folder:
        store = args.store or demo_store(Path(folder))
        with mlflow_server(store) as url:
            shoot(url, store, args.out, args.check_shot)
    print(f"wrote {', '.join(sorted(p.name for p in args.out.glob('mlflow-*.png')))} in {args.out}")


if __name__ == "__main__":
    main()
