"""The `builtin` stage: a built-in dataset written as a class folder of PNGs.

python -m pipeline.stages.builtin animal-shape data/builtin/animal-shape
python -m pipeline.stages.builtin digits data/builtin/digits
python -m pipeline.stages.builtin CIFAR10 data/cifar10      # any torchvision dataset; needs internet
"""

import sys
from pathlib import Path

from pipeline.data.builtin_sets import BUILTIN, write_class_folder


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit(
            "usage: python -m pipeline.stages.builtin NAME OUT_DIR   "
            f"(NAME: {', '.join(BUILTIN)} or a torchvision dataset)"
        )
    name, out_dir = argv
    count = write_class_folder(name, Path(out_dir))
    print(f"wrote {count} images of {name} to {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
