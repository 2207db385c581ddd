"""Issue 28 row 11: a read-only or full output folder stops a stage before its work, naming the folder, and the
clean-up of a failed write never replaces the error that stopped it. The folders are made read-only or full for
real: a read-only bind mount, a full tmpfs, in a mount namespace of the stage's own (`unshare`), so this holds
for root too, whom permission bits do not stop."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, stage_env, stage_project


def in_namespace(folder: Path, setup: str, *command: str) -> subprocess.CompletedProcess:
    """`command` run in `folder` after the shell lines `setup` (mounts), in a user and mount namespace of its own."""
    probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount in a namespace of our own: {probe.stderr.decode()[-200:]}")
    script = f'{setup}\nexec "$@"'
    return subprocess.run(
        ["unshare", "-rm", "sh", "-euc", script, "sh", *command],
        cwd=folder,
        env=stage_env(),
        capture_output=True,
        text=True,
        check=False,
    )


def read_only(folder: str) -> str:
    return f"mkdir -p {folder}\nmount --bind {folder} {folder}\nmount -o remount,bind,ro {folder}"


def small(folder: str, megabytes: int, filled: bool) -> str:
    """A file system of `megabytes` at `folder`, filled up or empty."""
    fill = f"head -c {megabytes + 1}M /dev/zero > {folder}/fill 2>/dev/null || true" if filled else ""
    return f"mkdir -p {folder}\nmount -t tmpfs -o size={megabytes}m tmpfs {folder}\n{fill}"


def test_train_with_a_read_only_models_folder_stops_before_it_trains(tmp_path):
    """Before, the stage trained and then failed on writing models/model.pt, with the error of unlinking the
    partial file (also refused on a read-only file system) in place of torch's."""
    project = stage_project(tmp_path / "project", **{"train.epochs": 1, "finetune.head_epochs": 1})
    started = time.monotonic()
    result = in_namespace(project, read_only("models"), sys.executable, "-m", "pipeline.stages.train")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == "pipeline.atomic.OutputNotWritable: cannot write in models: Read-only file system", result.stderr
    assert not (project / "mlflow.db").exists()  # no MLflow run was started either
    assert time.monotonic() - started < 60


@pytest.mark.parametrize(
    ("megabytes", "filled", "message"),
    [
        (1, True, "cannot write in metrics: No space left on device"),
        (8, False, "metrics is on a file system with 8.0 MB free, under the 64 MB a stage needs to write its outputs"),
    ],
)
def test_prepare_with_a_full_metrics_folder_stops_before_it_decodes_and_says_so(tmp_path, megabytes, filled, message):
    """Before, prepare decoded every image, replaced data/prepared, and then failed on metrics/prepare.json."""
    project = stage_project(tmp_path / "project")
    manifest = (project / "data" / "prepared" / "manifest.csv").read_text()
    (project / "images" / "red" / "new.png").write_bytes((project / "images" / "red" / "0.png").read_bytes())
    result = in_namespace(project, small("metrics", megabytes, filled), sys.executable, "-m", "pipeline.stages.prepare")
    assert (result.returncode, result.stderr.strip()) == (1, f"prepare: {message}")
    assert (project / "data" / "prepared" / "manifest.csv").read_text() == manifest  # the old split, untouched


def test_a_failed_write_on_a_read_only_folder_reports_its_own_error_not_the_clean_up_s(tmp_path):
    code = (
        "from pathlib import Path\n"
        "from pipeline.atomic import atomic_path\n"
        "with atomic_path(Path('models/model.pt')):\n"
        "    raise RuntimeError('the error that stopped the write')\n"
    )
    result = in_namespace(
        tmp_path, read_only("models"), sys.executable, "-c", f"import sys; sys.path[:0] = [{str(ROOT)!r}]\n{code}"
    )
    assert result.stderr.strip().splitlines()[-1] == "RuntimeError: the error that stopped the write", result.stderr
    assert "During handling of the above exception" not in result.stderr
