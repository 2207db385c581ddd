"""Compare every fine-tuning strategy on the prepared data at the budget of params.yaml's `compare` section.

    make compare                                        # = dvc repro prepare && python -m pipeline.commands.compare
    python -m pipeline.commands.compare --out reports/halving/digits   # another dataset's report, elsewhere
    python -m pipeline.commands.apply compare           # finetune.strategy in params.yaml := the recommendation

How it compares: pipeline.choice.comparison and docs/strategies.md#comparing-the-strategies.
"""

import argparse
from pathlib import Path

from pipeline.choice.comparison import compare
from pipeline.config import load_params
from pipeline.paths import REPORT_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out",
        type=Path,
        default=REPORT_DIR,
        metavar="DIR",
        help="the folder of the report, e.g. reports/halving/digits for another dataset's (default: reports)",
    )
    args = parser.parse_args()
    report = compare(load_params(), out_dir=args.out)
    print("\n".join(report.recommendation))
    print(f"report: {args.out / 'compare.md'}")
    print("`python -m pipeline.commands.apply compare` sets this recommendation in params.yaml")


if __name__ == "__main__":
    main()
