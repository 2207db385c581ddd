"""serving.batcher on a stand-in session: what it merges, what it refuses, and that every request gets its own rows."""

import asyncio
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from serving.batcher import Batcher, CallTimes, ModelBusy


class CountingSession:
    """ONNX Runtime's I/O-binding calls, answering each image's first pixel as its row; records each call's size
    and takes `seconds` per call, so that requests arrive while a call runs."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.seconds, self.calls, self.lock = seconds, [], threading.Lock()

    def io_binding(self):
        session, state = self, {}
        return SimpleNamespace(
            bind_cpu_input=lambda name, images: state.update(images=images),
            bind_output=lambda name: None,
            copy_outputs_to_cpu=lambda: [state["answer"]],
            run=lambda: session.run(state),
        )

    def run_with_iobinding(self, binding) -> None:
        binding.run()

    def run(self, state: dict) -> None:
        time.sleep(self.seconds)
        with self.lock:
            self.calls.append(len(state["images"]))
        state["answer"] = state["images"][:, :1, 0, 0].astype(np.float32)


def images(first: int, count: int = 1) -> np.ndarray:
    return np.arange(first, first + count, dtype=np.uint8)[:, None, None, None] * np.ones((1, 3, 2, 2), np.uint8)


def batcher(session, **settings) -> Batcher:
    served = SimpleNamespace(session=session)
    options = {"max_batch_size": 64, "max_latency_ms": 20_000, "merge": True} | settings
    return Batcher(lambda: served, **options)


async def predict_all(model: Batcher, requests: list[np.ndarray]) -> list[np.ndarray]:
    return [rows for rows, _ in await asyncio.gather(*(model.predict(r) for r in requests))]


def test_concurrent_requests_share_calls_and_each_gets_its_own_rows():
    session = CountingSession()
    requests = [images(i, 1 + i % 3) for i in range(20)]
    answers = asyncio.run(predict_all(batcher(session), requests))
    for request, rows in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(rows[:, 0], request[:, 0, 0, 0])
    assert sum(session.calls) == sum(len(r) for r in requests)
    assert len(session.calls) < len(requests) and max(session.calls) > 3  # merged, after the first call


def test_a_call_holds_at_most_max_batch_size_images_unless_one_request_is_larger():
    session = CountingSession()
    asyncio.run(predict_all(batcher(session, max_batch_size=4), [images(i, 3) for i in range(6)] + [images(9, 7)]))
    assert max(session.calls) == 7 and all(size <= 4 for size in session.calls if size != 7)


def test_batching_off_makes_one_call_per_request():
    session = CountingSession(seconds=0.005)
    asyncio.run(predict_all(batcher(session, merge=False), [images(i, 2) for i in range(10)]))
    assert session.calls == [2] * 10


def test_a_request_that_would_wait_over_max_latency_is_refused_and_the_others_answered():
    session = CountingSession(seconds=0.05)
    model = batcher(session, max_latency_ms=120)

    async def burst():
        await model.predict(images(0))  # a first call to time: nothing is refused before one
        return await asyncio.gather(*(model.predict(images(i)) for i in range(12)), return_exceptions=True)

    outcomes = asyncio.run(burst())
    refused = [o for o in outcomes if isinstance(o, ModelBusy)]
    assert refused and all(isinstance(o, ModelBusy | tuple) for o in outcomes)
    assert len(refused) < len(outcomes)


def test_call_times_are_fitted_per_call_and_per_image():
    times = CallTimes()
    for size in (1, 2, 4, 8, 16):
        times.add(size, 0.002 + 0.001 * size)
    assert (times.per_call, times.per_image) == pytest.approx((0.002, 0.001))
    assert times.seconds(images=10, calls=2) == pytest.approx(0.014)
