"""The `prepare` stage: validate the images of `data.source` and write a seeded, stratified split.

    python -m pipeline.stages.prepare

Writes data/prepared/manifest.csv, data/prepared/report.json (the skipped files and why) and
metrics/prepare.json; the rules are in pipeline.data.class_folder.
"""

import sys

from pipeline.atomic import OutputNotWritable, check_writable, write_json
from pipeline.config import ConfigError, load_params
from pipeline.data.class_folder import prepare
from pipeline.paths import PREPARE_METRICS, PREPARE_REPORT, PREPARED_DIR


def main() -> None:
    try:
        params = load_params()
        check_writable(PREPARED_DIR, PREPARE_METRICS)
        metrics = prepare(params.data, params.seed)
    except (ConfigError, OutputNotWritable) as exc:  # the user's to fix: the message, not a traceback
        sys.exit(f"prepare: {exc}")
    write_json(PREPARE_METRICS, metrics)
    print(
        f"prepared {metrics['images']} images of {metrics['classes']} classes, skipped {metrics['skipped']} "
        f"(listed in {PREPARE_REPORT})"
    )


if __name__ == "__main__":
    main()
