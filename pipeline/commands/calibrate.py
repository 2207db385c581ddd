"""The verdict's calibration set, from the explicit list of comparisons in reports/calibration/cases.yaml: each
case's scores on its comparison's data and budget beside what the comparison measured
(reports/verdict/calibration.jsonl), and the label check on the same data (reports/verdict/label_check.jsonl).

    python -m pipeline.commands.calibrate           # score the listed comparisons that are built
    python -m pipeline.commands.calibrate --build   # only run the comparison of each listed case that has none

The cases and their build: pipeline.choice.calibration_cases. A case's comparison runs in a temporary copy of the
project (its own prepared split, this project's MLflow store); one whose report exists is not run again, so a
killed --build resumes case by case.
"""

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

from pipeline.choice.calibration_cases import build_missing, read_cases
from pipeline.choice.case_scores import measured_case, with_label_check
from pipeline.choice.verdict_rule import write_cases
from pipeline.config import PARAMS_FILE, ConfigError, read_yaml
from pipeline.paths import LABEL_CHECK, VERDICT_CALIBRATION


def score_all(listed_cases) -> None:
    """Every listed case's scores and label check, into reports/verdict/."""
    raw, cases, checks = read_yaml(PARAMS_FILE), [], []
    if unbuilt := [listed.name for listed in listed_cases if not listed.report.is_file()]:
        print(f"not built yet, left out: {', '.join(unbuilt)} (`--build` runs them)", flush=True)
    for listed in (listed for listed in listed_cases if listed.report.is_file()):
        with tempfile.TemporaryDirectory() as folder:
            case, check = measured_case(listed, raw, Path(folder))
        cases.append(case)
        checks.append(check)
        print(
            f"{listed.name}: probe {case.scores.probe_accuracy:.3f}, measured gain {case.gain:+.1f}; label check "
            f"precision {check.precision:.2f}, recall {check.recall:.2f}",
            flush=True,
        )
    write_cases(VERDICT_CALIBRATION, with_label_check(cases, checks))
    LABEL_CHECK.write_text("".join(check.model_dump_json() + "\n" for check in checks))
    print(f"written: {VERDICT_CALIBRATION}, {LABEL_CHECK}")


def stop_on_sigterm(command: int) -> None:
    """`kill PID` ends a build as Ctrl-C does: its temporary project copy is removed on the way out. In this
    process only: the workers the scoring forks inherit the handler, and their pool ends them with SIGTERM."""

    def stop(signum, frame) -> None:
        if os.getpid() == command:
            sys.exit("calibration: stopped")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--build", action="store_true", help="only run the comparison of each listed case that has none"
    )
    args = parser.parse_args()
    stop_on_sigterm(os.getpid())
    try:
        listed_cases = read_cases()
        if args.build:
            failed = build_missing(listed_cases)
            sys.exit(f"calibration: cases that failed: {', '.join(failed)}" if failed else 0)
        score_all(listed_cases)
    except ConfigError as exc:
        sys.exit(f"calibration: {exc}")


if __name__ == "__main__":
    main()
