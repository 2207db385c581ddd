"""A user's folder of images, one sub-folder per class, validated and split: data/prepared/manifest.csv.

Every candidate file is decoded, in the bounded decoder processes of pipeline.data.decode_box; the ones
that fail (or exceed the box) are skipped and listed with the reason in data/prepared/report.json.
The split is seeded and stratified (pipeline.stages.prepare runs it).
"""

import hashlib
import os
import random
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from pipeline.atomic import atomic_dir, write_json
from pipeline.config import ConfigError, DataConfig
from pipeline.data.decode_box import DecodeBox, DecodeLimits
from pipeline.data.images import BadImage
from pipeline.data.manifest import SPLITS, write_manifest
from pipeline.paths import MANIFEST, PREPARE_REPORT, PREPARED_DIR

# The operating system's own folders: a data.source there is a slip (`/`, a mistyped variable), and walking
# one reads thousands of files or hits ones that never end (/proc) before any error could say so.
SYSTEM_FOLDERS = {Path(p) for p in ("/", "/bin", "/boot", "/etc", "/lib", "/lib32", "/lib64", "/run", "/sbin")} | {
    Path(p)
    for p in ("/usr", "/usr/bin", "/usr/lib", "/usr/local", "/var", "/var/lib", "/opt", "/srv", "/home", "/root")
}
PSEUDO_FILESYSTEMS = (Path("/proc"), Path("/sys"), Path("/dev"))


def printable(path: Path) -> str:
    """The path as text, with bytes that are not UTF-8 shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8(path: Path) -> bool:
    return printable(path) == str(path)


def check_source(source: Path) -> None:
    """Refuse, in words, a data.source that cannot be a folder of class folders, before any file is read."""
    if source.is_file():
        raise ConfigError(f"data.source: {source} is a file; it should be a folder with one sub-folder per class")
    if not source.is_dir():
        raise ConfigError(f"data.source: folder {source} does not exist")
    resolved = source.resolve()
    if resolved in SYSTEM_FOLDERS or any(resolved.is_relative_to(pseudo) for pseudo in PSEUDO_FILESYSTEMS):
        raise ConfigError(
            f"data.source: {source} is a system folder ({resolved}), not a folder of images; "
            "point it at a folder with one sub-folder per class"
        )
    if not os.access(source, os.R_OK | os.X_OK):
        raise ConfigError(f"data.source: folder {source} cannot be read (permission denied)")


def files_of(folder: Path) -> list[Path]:
    """The files under a class folder (sorted; hidden files and folders ignored)."""

    def refuse(exc: OSError) -> None:  # os.walk would skip an unreadable sub-folder in silence
        raise ConfigError(f"data.source: cannot read {exc.filename}: {exc.strerror}")

    found = []
    for parent, folders, names in os.walk(folder, onerror=refuse):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        found += [Path(parent) / name for name in names if not name.startswith(".")]
    return sorted(f for f in found if f.is_file())


def list_classes(source: Path) -> dict[str, list[Path]]:
    """Class name -> its files (sorted; hidden files and folders ignored); errors name what is wrong."""
    check_source(source)
    folders = [d for d in sorted(source.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    for folder in folders:
        if not is_utf8(folder):
            raise ConfigError(f"data.source: the class folder name {printable(folder)} is not valid UTF-8; rename it")
    classes = {d.name: files_of(d) for d in folders}
    if len(classes) < 2:
        raise ConfigError(f"data.source: {source} needs at least 2 class sub-folders, found {len(classes)}")
    return classes


def submitted(paths: list[Path], max_pixels: int, box: DecodeBox):
    """Each path with (its sha256, its decode's future), or with the reason it is skipped unread."""
    for path in paths:
        if not is_utf8(path):  # the manifest and report are UTF-8 text
            yield path, {"path": printable(path), "reason": "the file name is not valid UTF-8"}
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:  # unreadable (permissions), or gone since it was listed
            yield path, {"path": str(path), "reason": f"cannot be read: {exc.strerror}"}
            continue
        if not data:
            yield path, {"path": str(path), "reason": "empty file"}
            continue
        yield path, (hashlib.sha256(data).hexdigest(), box.submit(data, max_pixels, None, None))


def validate(files: list[Path], cap: int | None, max_pixels: int, rng: random.Random, box: DecodeBox):
    """Decode files in seeded order until `cap` are good; return (good [(path, sha256)], skipped). The box
    decodes a window of files at a time in parallel; they are judged in order, so the result is the same
    as one at a time."""
    order = files[:]
    rng.shuffle(order)
    good, skipped = [], []
    window = 4 * box.workers
    for start in range(0, len(order), window):
        if cap is not None and len(good) == cap:
            break
        outcomes = list(submitted(order[start : start + window], max_pixels, box))
        for path, outcome in outcomes:
            if cap is not None and len(good) == cap:
                break
            if isinstance(outcome, dict):
                skipped.append(outcome)
                continue
            digest, future = outcome
            try:
                box.result(future, again_if_broken=True)
            except BadImage as exc:
                skipped.append({"path": str(path), "reason": str(exc)})
                continue
            good.append((path, digest))
        for _, outcome in outcomes:  # the ones past the cap: not needed
            if not isinstance(outcome, dict):
                outcome[1].cancel()
    return sorted(good), skipped


def split_class(items: list, val_fraction: float, test_fraction: float, rng: random.Random) -> dict[str, list]:
    """Seeded split of one class; every split gets at least one item."""
    if len(items) < 3:
        raise ValueError("needs at least 3 images, one for each of train, val and test")
    order = items[:]
    rng.shuffle(order)
    n_test = max(1, round(len(order) * test_fraction))
    n_val = max(1, round(len(order) * val_fraction))
    if n_test + n_val >= len(order):
        n_test, n_val = 1, 1
    return {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}


def manifest_path(path: Path) -> str:
    """Relative to the project when inside it, so DVC's temp copies of the workspace still work."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def prepare(data: DataConfig, seed: int, out_dir: Path = PREPARED_DIR) -> dict:
    source = Path(data.source)
    classes = list_classes(source)
    rows, skipped, per_class = [], [], {}
    limits = DecodeLimits(data.decode_memory_mb, data.decode_seconds, "data")
    with DecodeBox(limits, workers=os.cpu_count() or 1) as box:
        for label, files in tqdm(classes.items(), desc="validating classes", disable=None):
            rng = random.Random(f"{seed}-{label}")
            good, bad = validate(files, data.max_per_class, data.max_image_pixels, rng, box)
            skipped += bad
            if not good:
                raise ConfigError(f"data.source: class folder {source / label} has no readable images")
            try:
                splits = split_class(good, data.val_fraction, data.test_fraction, rng)
            except ValueError as exc:
                raise ConfigError(f"data.source: class folder {source / label} {exc}; it has {len(good)}") from None
            per_class[label] = {split: len(items) for split, items in splits.items()}
            rows += [(manifest_path(p), label, split, d) for split, items in splits.items() for p, d in items]

    with atomic_dir(out_dir) as partial:
        write_manifest(partial / MANIFEST.name, rows)
        write_json(partial / PREPARE_REPORT.name, {"source": str(source), "classes": per_class, "skipped": skipped})

    split_counts = Counter(split for _, _, split, _ in rows)
    return {
        "images": len(rows),
        "classes": len(classes),
        "skipped": len(skipped),
        **{f"{s}_images": split_counts[s] for s in SPLITS},
    }
