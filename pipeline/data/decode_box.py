"""Decoding in a box: every image file is decoded in a pool of decoder processes whose memory and CPU time
the operating system bounds, so that a file built to cost far more than its declared size (a tile larger
than its image, a scan repeated thousands of times, thousands of inflating chunks) costs at most the box.

    with DecodeBox(DecodeLimits(memory_mb=512, seconds=10), workers=2) as box:
        square = box.result(box.submit(blob, max_pixels=40_000_000, formats=None, size=96))

The per-format checks of `load_rgb` (declared pixels, accepted formats) still run first, in the child.
Each decode may map `memory_mb` more than the child had before it (RLIMIT_AS, set per decode above the
child's own size: Python, numpy and Pillow already map hundreds of MB), use `seconds` of CPU (RLIMIT_CPU,
the operating system's backstop) and run `seconds` of wall-clock time (the pool's deadline). A child that
exceeds either is killed and replaced (pebble's ProcessPool); so is one whose decode is cancelled
(`future.cancel()`: the service's client left). The child returns the resized uint8 3 x size x size array,
never the whole image.

With `quick` limits the box has two lanes, so that costly files do not queue good ones behind them (the
service's): every decode first runs under `quick` (a fraction of a second, a share of the memory) in
`workers` children; one that exceeds them is decoded again under `limits` in a second pool of half as many
children at a lower CPU priority. A good file costs what it did; a hostile one holds a slow child, not the
decoders that good requests wait for. Without `quick` (prepare, which waits for every file anyway): one lane.
"""

import io
import math
import multiprocessing
import os
import resource
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures.process import BrokenProcessPool
from contextlib import suppress
from dataclasses import dataclass

import numpy as np
from pebble import ProcessExpired, ProcessPool

from pipeline.data.images import BadImage, load_rgb, resize_square

# A child that met its memory limit exits with this code rather than carry on with a heap that failed
# an allocation: the parent reads it as "over the memory limit" and the pool starts a fresh child.
EXIT_OVER_MEMORY = 75
# A long-lived child's mappings drift up a little with each decode (allocator arenas); a fresh one after
# this many keeps "memory_mb above the child's size" meaning memory_mb above a clean child.
DECODES_PER_CHILD = 1000
# How Pillow words a decoder's failed allocation (IMAGING_CODEC_MEMORY, from libtiff's tile buffer for one):
# at the box's limit that is the limit, not a broken file
CODEC_OUT_OF_MEMORY = "decoder error -9"
# The slow lane's children yield the CPU to the quick lane's, to the model and to the HTTP front
SLOW_LANE_NICENESS = 10
# A decode caught in a pool that pebble broke is decoded again in the new pool, this many times at most
RESTARTS_PER_DECODE = 3


@dataclass(frozen=True)
class DecodeLimits:
    """What one decode may cost; `section` names the config section the limits came from, for messages."""

    memory_mb: int
    seconds: float
    section: str = "data"


class OverLimit(BadImage):
    """A file whose decode needed more memory or time than the box gives; the message names the limit."""


class DecoderRestarted(RuntimeError):
    """The pool broke while the file was decoding (not the file's fault) and was replaced: decode it again."""


def virtual_bytes() -> int:
    """This process's mapped virtual memory (VmSize), what RLIMIT_AS bounds."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_child(niceness: int) -> None:
    """Pool initializer: a child killed by RLIMIT_CPU's SIGXCPU must not write a core file, and SIGTERM
    kills at once: pebble's Python handler would run only when the decoder's C code returns."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.nice(niceness)


def bound_this_decode(memory_mb: int, seconds: float) -> None:
    """Limits for the decode about to run, above what the child already uses: soft limits only, so that
    the next decode can set its own (an unprivileged process cannot raise a hard limit it lowered)."""
    _, hard_memory = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (virtual_bytes() + memory_mb * 2**20, hard_memory))
    _, hard_cpu = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(cpu_seconds() + seconds), hard_cpu))


def decode_in_child(
    blob: bytes, max_pixels: int, formats: tuple[str, ...] | None, size: int | None, limits: DecodeLimits
) -> np.ndarray | None:
    """Runs in a decoder process: the file's centre square at `size` (None: decode only, to validate)."""
    bound_this_decode(limits.memory_mb, limits.seconds)
    try:
        image = load_rgb(io.BytesIO(blob), max_pixels, formats)
        return None if size is None else resize_square(image, size)
    except MemoryError:
        os._exit(EXIT_OVER_MEMORY)
    except BadImage as exc:
        if str(exc).endswith(CODEC_OUT_OF_MEMORY):
            os._exit(EXIT_OVER_MEMORY)
        raise


def decode_many_in_child(
    blobs: list[bytes], max_pixels: int, formats: tuple[str, ...] | None, size: int, limits: DecodeLimits
) -> list[np.ndarray | BadImage]:
    """Runs in a decoder process: each file's square as `decode_in_child` gives it, under limits of its own,
    up to the first bad file, whose error takes its place (what comes after it is not decoded)."""
    outcomes: list[np.ndarray | BadImage] = []
    for blob in blobs:
        try:
            outcomes.append(decode_in_child(blob, max_pixels, formats, size, limits))
        except BadImage as exc:
            outcomes.append(exc)
            break
    return outcomes


def over_its_limits(error: BaseException | None) -> bool:
    """Whether a decode failed by exceeding its box (not because the file is broken or the pool broke)."""
    if isinstance(error, ProcessExpired):
        return error.exitcode in (EXIT_OVER_MEMORY, -signal.SIGXCPU)
    return isinstance(error, TimeoutError)


class Lane:
    """One pool of decoder processes under one set of limits."""

    def __init__(self, limits: DecodeLimits, workers: int, niceness: int, context) -> None:
        self.limits, self.workers, self.niceness, self.context = limits, workers, niceness, context
        self.lock = threading.Lock()  # the caller's threads and pebble's, settling a decode, schedule here
        self.pool = self.new_pool()
        self.waiting: set[Future] = set()  # scheduled in self.pool and not done

    def new_pool(self) -> ProcessPool:
        return ProcessPool(self.workers, DECODES_PER_CHILD, start_child, (self.niceness,), context=self.context)

    def schedule(self, decode: "Decode") -> Future:
        timeout = self.limits.seconds * decode.files  # each file has its own limits in the child
        with self.lock:
            stranded = self.replace_pool() if not self.pool.active else set()
            attempt = self.pool.schedule(decode.task, (*decode.arguments, self.limits), timeout=timeout)
            self.waiting.add(attempt)
        fail_as_broken(stranded)
        attempt.add_done_callback(self.forget)
        return attempt

    def forget(self, attempt: Future) -> None:
        with self.lock:
            self.waiting.discard(attempt)
            broken = not attempt.cancelled() and isinstance(attempt.exception(), BrokenProcessPool)
            stranded = self.replace_pool() if broken and not self.pool.active else set()
        fail_as_broken(stranded)

    def replace_pool(self) -> set[Future]:
        """pebble 5.2.3 breaks its pool for good ("All workers expired") when a child dies while no task is marked
        as running on it, as one that exits over its memory limit at once can: the hostile soak hit it within
        minutes. Its tasks that were still queued would wait forever; they are returned, to fail as broken (and be
        decoded again by the box) once the lock is released, since failing them runs their callbacks."""
        broken, self.pool = self.pool, self.new_pool()
        broken.stop()
        threading.Thread(target=broken.join, daemon=True).start()  # its children are killed as its loops end
        stranded, self.waiting = self.waiting, set()
        return stranded

    def close(self) -> None:
        self.pool.stop()  # kills the children now: a running decode is abandoned, not waited for
        self.pool.join()


def fail_as_broken(attempts: set[Future]) -> None:
    for attempt in attempts:
        with suppress(InvalidStateError):  # done meanwhile
            attempt.set_exception(BrokenProcessPool("the decoders were restarted"))


class Decode(Future):
    """One task of the box (a file, or several decoded one after another by one child), across the attempts the
    box makes at it: what to decode again, and how often it has been, should a pool break under it."""

    def __init__(self, task: Callable, arguments: tuple, files: int) -> None:
        super().__init__()
        self.task, self.arguments, self.files, self.restarts = task, arguments, files, 0

    def again(self) -> "Decode":
        return Decode(self.task, self.arguments, self.files)


class DecodeBox:
    """Decoder processes under `limits`, first under `quick` if given (two lanes, see above); `workers`
    children in the first lane. A context manager, or `close()` when done."""

    def __init__(self, limits: DecodeLimits, workers: int, quick: DecodeLimits | None = None) -> None:
        self.limits, self.workers = limits, workers
        # forkserver: a fresh child is a fork of a small clean process (Pillow and numpy imported once),
        # not of the caller, whose threads and memory (the service's event loop, ONNX Runtime) it would copy
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        if quick is None:
            self.lanes = [Lane(limits, workers, 0, context)]
        else:
            slow = Lane(limits, max(1, workers // 2), SLOW_LANE_NICENESS, context)
            self.lanes = [Lane(quick, workers, 0, context), slow]

    def submit(self, blob: bytes, max_pixels: int, formats: tuple[str, ...] | None, size: int | None) -> Decode:
        """Start decoding `blob`; `result` turns the future into the square or the reason it has none.
        Cancelling the future kills the child decoding it, in whichever lane."""
        return self.start(Decode(decode_in_child, (blob, max_pixels, formats, size), 1))

    def submit_many(self, blobs: list[bytes], max_pixels: int, formats: tuple[str, ...] | None, size: int) -> Decode:
        """Start decoding `blobs` one after another in one child: one round trip to the pool for them all (the
        round trip costs several times a small image's decode). `result` gives `decode_many_in_child`'s list;
        a child killed over its limits fails them all, whichever file it was on."""
        return self.start(Decode(decode_many_in_child, (blobs, max_pixels, formats, size), len(blobs)))

    def start(self, decode: Decode) -> Decode:
        self.decode_in(0, decode)
        return decode

    def decode_in(self, lane: int, decode: Decode) -> None:
        attempt = self.lanes[lane].schedule(decode)
        decode.add_done_callback(lambda _: decode.cancelled() and attempt.cancel())
        attempt.add_done_callback(lambda _: self.settle(decode, attempt, lane))

    def settle(self, decode: Decode, attempt: Future, lane: int) -> None:
        """An attempt ended: caught in a broken pool, decode again in the same lane; over the quick lane's limits,
        in the slow one; else that is the answer."""
        if decode.done() or attempt.cancelled():
            return
        error = attempt.exception()
        if isinstance(error, BrokenProcessPool) and decode.restarts < RESTARTS_PER_DECODE:
            decode.restarts += 1  # not the file's doing: the lane has a new pool by now
            self.decode_in(lane, decode)
            return
        if lane + 1 < len(self.lanes) and over_its_limits(error):
            self.decode_in(lane + 1, decode)
            return
        with suppress(InvalidStateError):  # the caller cancelled it meanwhile
            if error is None:
                decode.set_result(attempt.result())
            else:
                decode.set_exception(error)

    def result(self, future: Decode, again_if_broken: bool = False) -> np.ndarray | list | None:
        """The decoded square (submit_many's list); BadImage for a bad file, OverLimit (a BadImage) for one that
        exceeded the box.
        If the pool broke under it: decoded again in a new pool with `again_if_broken` (a caller that may wait,
        such as prepare), else DecoderRestarted (the service answers 503 rather than wait in its event loop)."""
        try:
            return future.result()
        except TimeoutError:
            raise self.over_time() from None
        except ProcessExpired as exc:
            raise self.expired(exc.exitcode) from None
        except BrokenProcessPool:
            if again_if_broken:
                return self.result(self.start(future.again()))
            raise DecoderRestarted("the decoders restarted while it was decoding: send it again") from None

    def expired(self, exitcode: int) -> BadImage:
        if exitcode == EXIT_OVER_MEMORY:
            section = self.limits.section
            return OverLimit(f"needs more than {self.limits.memory_mb} MB to decode: {section}.decode_memory_mb")
        if exitcode == -signal.SIGXCPU:
            return self.over_time()
        return BadImage(f"the decoder process ended with exit code {exitcode} on it")

    def over_time(self) -> OverLimit:
        return OverLimit(f"needs more than {self.limits.seconds:g} s to decode: {self.limits.section}.decode_seconds")

    def close(self) -> None:
        for lane in self.lanes:
            lane.close()

    def __enter__(self) -> "DecodeBox":
        return self

    def __exit__(self, *_) -> None:
        self.close()
