"""Batching inside the HTTP worker: the images of concurrent requests are merged into one ONNX Runtime call of this
process's own session, with no hop to a model service. BENCHMARKS.md found that hop, a BentoML call over a socket
for every batch, to be the bound: about 150 calls a second whatever each carried.

While a call runs, requests queue; when it ends, the next call takes every queued request that fits in
`max_batch_size` images (the first always, however large). So an idle server answers a lone request at once and a
busy one forms batches as large as its load, with no waiting window. A request whose wait, estimated from the calls
so far, would exceed `max_latency_ms` is refused at once (`ModelBusy`), as BentoML's adaptive batching did.
`merge=False` (serving.adaptive_batching: false) makes every request a call of its own.
"""

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import bentoml
import numpy as np

from pipeline.release import onnx_runtime
from serving.model_follower import Served

BATCH_IMAGES = bentoml.metrics.Histogram(
    name="model_batch_images",
    documentation="images in each ONNX Runtime call of an HTTP worker (requests merged by its batcher)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, float("inf")),
)


class ModelBusy(Exception):
    """The request would wait over max_latency_ms behind the calls queued before it."""


class CallTimes:
    """Seconds a call of n images takes, fitted as `per_call + per_image * n` over the latest calls."""

    def __init__(self, keep: int = 64) -> None:
        self.calls: deque[tuple[int, float]] = deque(maxlen=keep)
        self.per_call = self.per_image = 0.0  # nothing measured yet: no request is refused

    def add(self, images: int, seconds: float) -> None:
        self.calls.append((images, seconds))
        sizes, times = np.array(self.calls, dtype=float).T
        if np.ptp(sizes) > 0:
            slope, intercept = np.polyfit(sizes, times, 1)
            self.per_call, self.per_image = max(float(intercept), 0.0), max(float(slope), 0.0)
        else:  # one size so far (batching off, or a steady load): all of it per image, the cautious reading
            self.per_call, self.per_image = 0.0, float(times.mean() / sizes[0])

    def seconds(self, images: int, calls: int) -> float:
        return calls * self.per_call + images * self.per_image


@dataclass
class Pending:
    images: np.ndarray
    answer: asyncio.Future  # (probabilities, the Served that computed them)


def run_model(served: Served, images: np.ndarray) -> np.ndarray:
    # I/O binding: on CUDA the batch is copied to the device once and the probabilities back once.
    binding = served.session.io_binding()
    binding.bind_cpu_input(onnx_runtime.INPUT, images)
    binding.bind_output(onnx_runtime.OUTPUT)
    served.session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0]


class Batcher:
    """`await predict(images)`: their probabilities and the model that computed them, in a call shared with the
    requests queued beside them."""

    def __init__(self, served: Callable[[], Served], max_batch_size: int, max_latency_ms: int, merge: bool) -> None:
        self.served, self.max_images, self.max_wait_s, self.merge = served, max_batch_size, max_latency_ms / 1000, merge
        self.queue: deque[Pending] = deque()
        self.queued_images = 0
        self.times = CallTimes()
        self.running: tuple[float, int] | None = None  # (started, images) of the call in progress
        # One thread: ONNX Runtime already spreads a call over the cores; two calls at once would contend for them.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.work = asyncio.Event()
        self.loop_task: asyncio.Task | None = None

    async def predict(self, images: np.ndarray) -> tuple[np.ndarray, Served]:
        if self.expected_wait_s(len(images)) > self.max_wait_s:
            raise ModelBusy
        pending = Pending(images, asyncio.get_running_loop().create_future())
        self.queue.append(pending)
        self.queued_images += len(images)
        self.work.set()
        if self.loop_task is None:  # started here, in the event loop the server runs
            self.loop_task = asyncio.create_task(self.run_calls())
        return await pending.answer

    def expected_wait_s(self, images: int) -> float:
        """How long a request of `images` would take from now: the rest of the running call, then the queue."""
        ahead = 0.0
        if self.running is not None:
            started, running_images = self.running
            ahead = max(0.0, started + self.times.seconds(running_images, 1) - time.monotonic())
        queued = self.queued_images + images
        calls = -(-queued // self.max_images) if self.merge else len(self.queue) + 1
        return ahead + self.times.seconds(queued, calls)

    async def run_calls(self) -> None:
        while True:
            await self.work.wait()
            self.work.clear()
            while self.queue:
                batch = self.next_batch()
                if batch:
                    await self.call(batch)

    def next_batch(self) -> list[Pending]:
        """The queued requests the next call takes, oldest first; those whose client left are dropped."""
        batch, images = [], 0
        while self.queue and (not batch or (self.merge and images + len(self.queue[0].images) <= self.max_images)):
            pending = self.queue.popleft()
            self.queued_images -= len(pending.images)
            if not pending.answer.done():  # a request cancelled while it waited
                batch.append(pending)
                images += len(pending.images)
        return batch

    async def call(self, batch: list[Pending]) -> None:
        served = self.served()  # once: a switch of model during this call does not change what runs it
        images = batch[0].images if len(batch) == 1 else np.concatenate([p.images for p in batch])
        self.running = (time.monotonic(), len(images))
        try:
            probabilities = await asyncio.get_running_loop().run_in_executor(self.executor, run_model, served, images)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own errors: each request of the call gets it
            for pending in batch:
                if not pending.answer.done():
                    pending.answer.set_exception(exc)
            return
        finally:
            self.times.add(len(images), time.monotonic() - self.running[0])
            self.running = None
        BATCH_IMAGES.observe(len(images))
        first = 0
        for pending in batch:
            rows = probabilities[first : first + len(pending.images)]
            first += len(pending.images)
            if not pending.answer.done():
                pending.answer.set_result((rows, served))
