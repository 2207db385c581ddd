"""Write the prepared splits as LitData shards, for training on several machines (data.decoded: shards).

    python -m pipeline.commands.shards                      # train, val and test at train.image_size into data.shards
    python -m pipeline.commands.shards --out /mnt/shared/shards --chunk-bytes 16MB

How they are laid out and read: pipeline.data.shards and docs/teams.md.
"""

import argparse

from pipeline.config import load_params
from pipeline.data.manifest import SPLITS, class_names, read_manifest
from pipeline.data.shards import DEFAULT_CHUNK_BYTES, ensure, writable_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="a folder or local: folder to write into (default: data.shards)")
    parser.add_argument("--chunk-bytes", default=DEFAULT_CHUNK_BYTES, help="shard size (smaller: finer reads)")
    args = parser.parse_args()
    params = load_params()
    location = args.out or params.data.shards
    if writable_path(location) is None:
        raise SystemExit(f"{location}: write shards to a folder, then copy its folders to the object store")
    rows = read_manifest()
    classes = class_names(rows)
    size, max_pixels = params.train.image_size, params.data.max_image_pixels
    for split in SPLITS:
        chosen = [row for row in rows if row["split"] == split]
        print(ensure(location, chosen, classes, size, max_pixels, split, args.chunk_bytes), flush=True)


if __name__ == "__main__":
    main()
