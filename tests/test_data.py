import gzip
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from support import write_dataset
from vit_lightning.data.augment import RandomAffine, RandomErasing
from vit_lightning.training.datamodule import MNISTDataModule, shard_sampler
from vit_lightning.data.datasets import DATASETS
from vit_lightning.data.idx import find_idx_files, load_split, read_idx, write_idx
from vit_lightning.data.preprocess import load_images
from vit_lightning.errors import SettingError, UserError


def datamodule(root: Path, **overrides) -> MNISTDataModule:
    return MNISTDataModule(**{"root": str(root), "download": False, "val_size": 40, "batch_size": 32, **overrides})


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    array = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 3, 4)
    tensor = read_idx(write_idx(tmp_path / ("x.idx" + (".gz" if gz else "")), array))
    assert tensor.dtype == torch.uint8
    assert tensor.tolist() == array.tolist()


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("gz", [False, True])
def test_both_layouts_plain_and_gz_load_through_the_datamodule(tmp_path, layout, gz):
    folder = tmp_path if layout == "flat" else tmp_path / "FashionMNIST" / "raw"
    write_dataset(folder, n_train=100, n_test=30, gz=gz)
    dm = datamodule(tmp_path, dataset="fashion_mnist")
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.datasets["train"]), len(dm.datasets["val"]), len(dm.datasets["test"])) == (60, 40, 30)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.max() < 10


def test_split_is_seeded_disjoint_and_accepts_a_fraction(data_root):
    def split(**kwargs):
        dm = datamodule(data_root, **kwargs)
        dm.setup("fit")
        return dm.datasets["train"], dm.datasets["val"]

    train, val = split()
    again_train, _ = split()
    assert torch.equal(train.images, again_train.images)
    other_train, _ = split(seed=7)
    assert not torch.equal(train.images, other_train.images)
    train_set = {bytes(image.numpy()) for image in train.images}
    assert not train_set & {bytes(image.numpy()) for image in val.images}
    train, val = split(val_size=0.25)
    assert (len(train), len(val)) == (180, 60)


def test_train_subset_trains_on_the_first_images_and_validates_on_others(data_root):
    dm = datamodule(data_root, train_subset=50)
    dm.setup("fit")
    images, labels = load_split(find_idx_files(data_root, "mnist"), "train", 28, 10)
    assert torch.equal(dm.datasets["train"].images, images[:50])
    assert torch.equal(dm.datasets["train"].targets, labels[:50])
    val = {bytes(image.numpy()) for image in dm.datasets["val"].images}
    assert len(dm.datasets["val"]) == 40 and not val & {bytes(image.numpy()) for image in images[:50]}
    with pytest.raises(UserError, match="--data.train_subset 230 must be between 1 and 200"):
        datamodule(data_root, train_subset=230).setup("fit")


def test_augmentation_keeps_shape_differs_between_calls_and_is_off_in_eval(data_root):
    dm = datamodule(data_root)
    dm.setup("fit")
    images, _ = next(iter(dm.val_dataloader()))
    train_a, train_b = dm.transform(images, train=True), dm.transform(images, train=True)
    assert train_a.shape == (40, 1, 28, 28) and train_a.dtype == torch.float32
    assert not torch.allclose(train_a, train_b)
    eval_a, eval_b = dm.transform(images, train=False), dm.transform(images, train=False)
    torch.testing.assert_close(eval_a, eval_b)
    expected = (images.float() / 255 - dm.info.mean) / dm.info.std
    torch.testing.assert_close(eval_a[:, 0], expected)


def test_random_affine_is_reproducible_from_its_seed():
    images = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(RandomAffine(seed=3)(images), RandomAffine(seed=3)(images))
    assert RandomAffine(degrees=0, translate=0, scale=(1.0, 1.0))(images) is images


def test_random_affine_flip_mirrors_exactly():
    images = torch.rand(3, 1, 28, 28)
    flipped = RandomAffine(degrees=0, translate=0, scale=(1.0, 1.0), hflip=1.0)(images)
    torch.testing.assert_close(flipped, images.flip(-1), atol=1e-5, rtol=0)


def test_random_erasing_puts_one_rectangle_of_noise_on_the_chosen_share_of_images():
    images = torch.zeros(400, 1, 28, 28)
    erased = RandomErasing(1.0, torch.Generator().manual_seed(0))(images)
    for image in erased[:, 0]:
        rows, columns = image.nonzero(as_tuple=True)  # noise is never exactly 0
        height, width = rows.max() - rows.min() + 1, columns.max() - columns.min() + 1
        assert len(rows) == height * width  # one filled rectangle
        assert 0.02 * 784 - 2 * (height + width) <= len(rows) <= 0.4 * 784 + 2 * (height + width)
        assert max(height / width, width / height) <= 1 / 0.3 + 1
    assert erased.max() <= 1 and erased.std() > 0.1
    share = (RandomErasing(0.25, torch.Generator().manual_seed(1))(images) != 0).flatten(1).any(1).float().mean()
    assert 0.2 < share < 0.3
    torch.testing.assert_close(RandomErasing(0.5, torch.Generator().manual_seed(2))(images),
                               RandomErasing(0.5, torch.Generator().manual_seed(2))(images))
    assert RandomErasing(0.0, torch.Generator())(images) is images
    with pytest.raises(SettingError, match="--data.erasing is the probability"):
        RandomErasing(1.5, torch.Generator())


def test_erasing_is_a_training_augmentation_only(data_root):
    dm = datamodule(data_root, degrees=0.0, translate=0.0, scale=(1.0, 1.0), erasing=1.0)
    dm.setup("fit")
    images, _ = next(iter(dm.val_dataloader()))
    plain = dm.transform(images, train=False)
    changed = (dm.transform(images, train=True) != plain).flatten(1).any(1)
    assert changed.all()  # every training image has its rectangle
    torch.testing.assert_close(dm.transform(images, train=False), plain)


def test_horizontal_flips_by_default_only_for_mirror_symmetric_datasets():
    flips = {name: MNISTDataModule(dataset=name).augmentation.hflip for name in ("mnist", "fashion_mnist", "kmnist")}
    assert flips == {"mnist": 0.0, "fashion_mnist": 0.5, "kmnist": 0.0}
    assert MNISTDataModule(dataset="fashion_mnist", hflip=0.0).augmentation.hflip == 0.0


def test_shard_sampler_train_shards_are_disjoint_and_eval_covers_everything_once():
    dataset = list(range(101))
    train = [list(shard_sampler(dataset, 2, rank, train=True, seed=0)) for rank in (0, 1)]
    assert len(train[0]) == len(train[1]) == 50 and not set(train[0]) & set(train[1])
    sampler = shard_sampler(dataset, 2, 0, train=True, seed=0)
    sampler.set_epoch(1)
    assert list(sampler) != train[0]  # reshuffled per epoch
    evaluation = [list(shard_sampler(dataset, 2, rank, train=False)) for rank in (0, 1)]
    assert sorted(evaluation[0] + evaluation[1]) == dataset


def test_missing_root_is_one_clear_line(tmp_path):
    with pytest.raises(UserError) as error:
        datamodule(tmp_path / "nowhere").prepare_data()
    message = str(error.value)
    assert "\n" not in message and "--data.root" in message and "train-images-idx3-ubyte" in message


def test_missing_data_names_the_ready_command_for_installed_fashion_mnist(tmp_path, monkeypatch):
    system = write_dataset(tmp_path / "usr-share-datasets-fashion-mnist", gz=True)  # as Debian's package lays it out
    monkeypatch.setitem(DATASETS, "fashion_mnist", replace(DATASETS["fashion_mnist"], system_folder=str(system)))
    with pytest.raises(UserError) as error:
        datamodule(tmp_path / "nowhere", download=False).prepare_data()
    message = str(error.value)
    assert "\n" not in message
    assert message.endswith(f"; fashion_mnist is installed in {system}: python train.py fit --data.dataset "
                            f"fashion_mnist --data.root {system}")


def test_some_files_missing_are_named(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="missing t10k-labels-idx1-ubyte"):
        find_idx_files(tmp_path, "mnist")


@pytest.mark.parametrize("damage", ["magic", "truncated", "bad_gzip", "empty"])
def test_corrupt_idx_files_are_reported(tmp_path, damage):
    array = torch.zeros(10, 28, 28, dtype=torch.uint8)
    if damage == "magic":
        path = write_idx(tmp_path / "x", array)
        path.write_bytes(b"\x00\x00\x0d\x03" + path.read_bytes()[4:])
        match = "not an IDX file"
    elif damage == "truncated":
        path = write_idx(tmp_path / "x.gz", array)
        path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
        match = "corrupt"
    elif damage == "bad_gzip":
        path = write_idx(tmp_path / "x.gz", array)
        path.write_bytes(path.read_bytes()[:40])
        match = "cannot read"
    else:
        path = tmp_path / "x"
        path.write_bytes(b"")
        match = "x is empty; replace it"
    with pytest.raises(UserError, match=match):
        read_idx(path)


def test_predict_images_from_a_folder_skip_unreadable_files(tmp_path):
    from PIL import Image

    Image.new("L", (28, 28), 255).save(tmp_path / "white.png")
    Image.new("RGB", (56, 40), (0, 0, 0)).save(tmp_path / "black.jpg")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    images, names, failures = load_images(tmp_path, 28, auto_invert=False)  # a white image stays white
    assert names == ["black.jpg", "white.png"]
    assert images.shape == (2, 28, 28) and images[1].min() == 255 and images[0].max() == 0
    assert len(failures) == 1 and "broken.png" in failures[0]
    (tmp_path / "white.png").unlink()
    (tmp_path / "black.jpg").unlink()
    with pytest.raises(UserError, match="no readable images"):
        load_images(tmp_path, 28)


def test_16_bit_pngs_are_scaled_not_saturated(tmp_path):
    from PIL import Image

    levels = np.array([0, 257, 32896, 65535])  # 0, 1, 128 and 255 in 8 bits
    pixels = np.repeat(levels, 7)[None, :].repeat(28, axis=0)  # four vertical bands
    Image.fromarray(pixels.astype(np.uint16)).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    images, _, failures = load_images(tmp_path, 28)
    assert not failures
    assert images[0, 0, ::7].tolist() == [0, 1, 128, 255]


def test_a_decompression_bomb_is_skipped_like_other_unreadable_images(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("L", (28, 28), 0).save(tmp_path / "small.png")
    Image.new("L", (40, 40), 0).save(tmp_path / "huge.png")  # "huge" once Pillow's pixel limit is lowered
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 28 * 28 // 2)  # a 28x28 image is still under twice the limit
    images, names, failures = load_images(tmp_path, 28)
    assert names == ["small.png"] and len(images) == 1
    assert failures == [f"{tmp_path / 'huge.png'}: not a readable image (DecompressionBombError)"]
