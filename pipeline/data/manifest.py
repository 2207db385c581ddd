"""The prepared split: data/prepared/manifest.csv (written by prepare), its fingerprints and classes.
Its images, decoded, come from pipeline.data.decoded."""

import csv
import hashlib
from pathlib import Path

from pipeline.paths import MANIFEST

COLUMNS = ("path", "label", "split", "sha256")
SPLITS = ("train", "val", "test")


def write_manifest(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(sorted(rows))


def read_manifest(manifest: Path = MANIFEST) -> list[dict]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


def fingerprint(manifest: Path = MANIFEST) -> str:
    """SHA-256 of the manifest: the files, their contents (each row has its hash), labels and splits."""
    return hashlib.sha256(manifest.read_bytes()).hexdigest()


def split_fingerprint(rows: list[dict], split: str) -> str:
    """SHA-256 of one split's rows (file, label, content hash): two models scored on the same test images."""
    chosen = sorted((row["path"], row["label"], row["sha256"]) for row in rows if row["split"] == split)
    return hashlib.sha256("\n".join(",".join(row) for row in chosen).encode()).hexdigest()


def split_sizes(rows: list[dict]) -> dict[str, int]:
    """Images per split, in SPLITS order."""
    return {split: sum(row["split"] == split for row in rows) for split in SPLITS}


def class_names(rows: list[dict]) -> list[str]:
    return sorted({row["label"] for row in rows})
