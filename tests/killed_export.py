"""The export stage, which kills itself (SIGKILL) right after it registers the model version: a kill at a known
point, instead of a race between a test's signal and the stage.

    python -m tests.killed_export          # in a project folder, PYTHONPATH=<repo>
"""

import os
import signal

from pipeline.stages import export
from pipeline.tracking import registry


def main() -> None:
    create_version = registry.create_version

    def create_then_die(*args, **kwargs) -> str:
        create_version(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    registry.create_version = create_then_die  # the stage registers through the module: it calls this one
    export.main()


if __name__ == "__main__":
    main()
