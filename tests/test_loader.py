import torch

from pipeline.finetune.batches import AugmentedImages, ImageBatches, resolve_workers
from pipeline.finetune.phase import make_augment
from tests.conftest import tiny_params


def dataset(count=12) -> AugmentedImages:
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return AugmentedImages(images, torch.arange(count) % 3, make_augment(tiny_params()), seed=7)


def test_each_image_is_augmented_from_its_own_key_and_leaves_torchs_generator_alone():
    images = dataset()
    first = images[(1, 4)][0]
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    for key in [(1, 0), (2, 4), (1, 9)]:
        images[key]
    assert torch.equal(torch.rand(3), expected_draw)  # the caller's random stream is untouched
    assert torch.equal(images[(1, 4)][0], first)  # same key, same pixels, whatever came between
    assert not torch.equal(images[(2, 4)][0], first)  # another epoch, another augmentation
    assert not torch.equal(first, images.images[4])  # augmented at all


def test_batches_follow_each_epochs_order_with_persistent_workers():
    images = dataset()
    batches = ImageBatches(images, 5, 2, torch.device("cpu"))
    for epoch, order in [(1, torch.randperm(12)), (2, torch.arange(11, -1, -1))]:
        produced = list(batches(order, epoch))
        assert [len(labels) for _, labels in produced] == [5, 5, 2]
        assert torch.equal(torch.cat([labels for _, labels in produced]), images.labels[order])
        in_process = list(ImageBatches(images, 5, 0, torch.device("cpu"))(order, epoch))
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(produced, in_process, strict=True))
    x, _ = produced[0]
    assert x.dtype == torch.uint8  # a quarter of float32's bytes to the device; the model normalises
    assert torch.equal(x[0], images[(2, 11)][0])


def test_auto_workers_stay_off_on_cpu():
    assert resolve_workers("auto", torch.device("cpu")) == 0
    assert resolve_workers(3, torch.device("cpu")) == 3
    assert resolve_workers("auto", torch.device("cuda")) >= 1
