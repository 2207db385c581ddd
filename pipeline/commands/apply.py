"""Set finetune.strategy in params.yaml (comments kept) to what a verdict or a comparison recommends.

python -m pipeline.commands.apply verdict            # reports/verdict/verdict.json's strategy
python -m pipeline.commands.apply compare            # reports/compare.json's recommendation
python -m pipeline.commands.apply compare reports/halving/digits/compare.json
"""

import argparse
import sys
from pathlib import Path

from pipeline.choice.compare_report import CompareReport
from pipeline.choice.comparison_rule import choose_strategy
from pipeline.choice.verdict_report import VerdictReport
from pipeline.config import ConfigError, set_param
from pipeline.paths import COMPARE_JSON, VERDICT_JSON


def apply_verdict(report_file: Path) -> str:
    """The verdict's strategy (and unfreeze_blocks for `partial`)."""
    decided = VerdictReport.read(report_file).verdict
    if decided.unfreeze_blocks is not None:
        set_param("finetune.unfreeze_blocks", decided.unfreeze_blocks)
    set_param("finetune.strategy", decided.strategy)
    return f"{decided.strategy} ({decided.decision})"


def apply_comparison(report_file: Path) -> str:
    report = CompareReport.read(report_file)
    strategy = report.halving.recommended if report.halving else choose_strategy(report.summaries).chosen.strategy
    set_param("finetune.strategy", strategy)
    return strategy


APPLY = {
    "verdict": (apply_verdict, VERDICT_JSON, "dvc repro verdict"),
    "compare": (apply_comparison, COMPARE_JSON, "make compare"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=APPLY, help="whose recommendation to apply")
    parser.add_argument("report", nargs="?", type=Path, help="the report (default: the kind's own in reports/)")
    args = parser.parse_args()
    apply, default, makes_it = APPLY[args.kind]
    report_file = args.report or default
    if not report_file.is_file():
        sys.exit(f"not applied: {report_file} not found: run `{makes_it}` first")
    try:
        applied = apply(report_file)
    except ConfigError as exc:
        sys.exit(f"not applied: {exc}")
    print(f"params.yaml: finetune.strategy: {applied} (recommended by {report_file}); `dvc repro` trains it")


if __name__ == "__main__":
    main()
