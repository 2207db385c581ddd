"""Progress a person sees on long work: tqdm's bar on a terminal; without one (DVC's log, CI, `nohup`), where a
bar would be disabled or garble the log, a plain line at least every `LINE_EVERY_S` seconds with what is done,
the rate and the time left. Under torchrun only rank 0 reports.

    for batch in progress(batches, "full: train", total=66, unit="img", per_item=32):
        ...
"""

import os
import sys
import time
from collections.abc import Iterable, Iterator

from tqdm import tqdm

LINE_EVERY_S = 30.0  # a log that stays silent longer reads as a hang


def reporting() -> bool:
    return os.environ.get("RANK", "0") == "0"


def progress_line(desc: str, done: int, total: int | None, unit: str, seconds: float) -> str:
    """`full: train: 1,280 of 2,100 img, 38 img/s, 22 s left`."""
    rate = done / seconds if seconds > 0 else 0.0
    if total is None:
        return f"{desc}: {done:,} {unit}, {rate:,.0f} {unit}/s"
    left = f", {(total - done) / rate:,.0f} s left" if rate > 0 else ""
    return f"{desc}: {done:,} of {total:,} {unit}, {rate:,.1f} {unit}/s{left}"


def progress(items: Iterable, desc: str, total: int | None = None, unit: str = "it", per_item: int = 1) -> Iterator:
    """`items`, reporting progress as they are taken; `per_item` units each (e.g. the images of a batch),
    and `total` in units."""
    if not reporting():
        yield from items
        return
    if sys.stderr.isatty():
        with tqdm(total=total, desc=desc, unit=unit, leave=False) as bar:
            for item in items:
                yield item
                bar.update(per_item if total is None else min(per_item, total - bar.n))
        return
    started = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done = done + per_item if total is None else min(done + per_item, total)
        if (now := time.monotonic()) - last >= LINE_EVERY_S:
            last = now
            print(progress_line(desc, done, total, unit, now - started), flush=True)
