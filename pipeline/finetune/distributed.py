"""Data-parallel training on N processes with torchrun and DistributedDataParallel.

    torchrun --standalone --nproc_per_node 2 -m pipeline.stages.train   # what dvc.yaml runs (train.distributed)

Without torchrun (no WORLD_SIZE in the environment) every function here is a no-op and training is
single-process. Under torchrun each process takes its share of every global batch of
`train.batch_size` images (the same seeded order on every rank, cut by rank), DDP averages the
gradients, and the loss is scaled so that the average equals the single-process mean over the
global batch, even for a last batch that does not split evenly: N processes train the same
weights as one, within float rounding. Rank 0 alone logs to MLflow and writes files.
The backend is NCCL on CUDA and gloo on CPU.
"""

import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def start(device: torch.device) -> None:
    """Join the process group when launched by torchrun: NCCL on CUDA (one GPU per process), else gloo."""
    if not launched():
        return
    if device.type == "cuda":
        local = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=local)
    else:
        dist.init_process_group("gloo")


def local(device: torch.device) -> torch.device:
    """This process's own GPU under torchrun (`cuda` alone would mean GPU 0 on every rank)."""
    return torch.device("cuda", torch.cuda.current_device()) if device.type == "cuda" and active() else device


def barrier() -> None:
    if active():
        dist.barrier()


def stop() -> None:
    if active():
        dist.barrier()  # no rank leaves while rank 0 still writes the outputs
        dist.destroy_process_group()


def seed_rank(seed: int) -> None:
    """Give each rank other than 0 its own draws from torch's generator (dropout; rank 0 keeps the
    single-process ones). Augmentation does not draw from it: each image has its own seed
    (pipeline.finetune.batches)."""
    if rank() > 0:
        torch.manual_seed(int(np.random.SeedSequence([seed, rank()]).generate_state(1)[0]))


def share(index: torch.Tensor) -> torch.Tensor:
    """This rank's part of a global batch (all of it in one process)."""
    return index[rank() :: size()]


def loss_scale(global_count: int) -> float:
    """Multiplies this rank's summed loss so that DDP's average of the ranks' gradients is the
    gradient of the mean loss over the whole global batch, however it was split."""
    return size() / global_count


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """DDP around the module that trains (gradients averaged over ranks); the module itself in one process."""
    if not active():
        return net
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def all_sum(*values: float) -> list[float]:
    """Sums over ranks (the epoch's loss and correct counts)."""
    if not active():
        return list(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors only
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.tolist()


def assemble(parts: torch.Tensor) -> torch.Tensor:
    """The whole tensor, from each rank's copy holding its own rows and zeros elsewhere: a sum over ranks
    with one non-zero addend per element, so exact."""
    if active():
        dist.all_reduce(parts)
    return parts


def gather(value) -> list:
    """Every rank's `value`, in rank order (picklable objects; small, e.g. RNG states)."""
    if not active():
        return [value]
    values = [None] * size()
    dist.all_gather_object(values, value)
    return values
