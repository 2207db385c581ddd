"""The train stage, which kills itself (SIGKILL) right after the checkpoint of epoch N is written: a kill at a
known point, instead of a race between a test's signal and the training loop. Every rank dies at once.

    python -m tests.killed_training N                                   # in a project folder, PYTHONPATH=<repo>
    torchrun --standalone --nproc_per_node 2 -m tests.killed_training N
"""

import os
import signal
import sys

from pipeline.finetune import checkpoint, distributed
from pipeline.stages import train


def main(epoch: int) -> None:
    save = checkpoint.save

    def save_then_die(state: checkpoint.TrainingState, run_fingerprint: str, *args) -> None:
        save(state, run_fingerprint, *args)
        if state.epoch == epoch:
            distributed.barrier()  # every rank has its share of the checkpoint written
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.save = save_then_die  # the stage saves through the module: it calls this one
    train.main()


if __name__ == "__main__":
    main(int(sys.argv[1]))
