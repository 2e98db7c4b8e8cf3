"""machinery/data.py: splits, determinism of the loaders, and the errors users see."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from machinery import data
from machinery.data import FileData, TensorData, load_data, make_loader
from machinery.cli import UsageError, run_cli

FASHION = "/usr/share/datasets/fashion-mnist"


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


# ---------------------------------------------------------------------------- fake data

@pytest.fixture(scope="module")
def fake():
    return load_data("fake", "search", 0)


def test_fake_is_deterministic_for_a_seed(fake):
    assert (len(fake.train), len(fake.val), fake.in_channels, fake.num_classes, fake.input_size) == (512, 128, 3, 10, 32)
    assert isinstance(fake.train, TensorData) and fake.train.augment and not fake.val.augment
    a, b = (load_data("fake", "search", seed, subset=64) for seed in (0, 1))
    assert torch.equal(a.train.images, fake.train.images[:64]) and torch.equal(a.val.labels, fake.val.labels[:64])
    assert not torch.equal(a.train.images, b.train.images)
    assert not torch.equal(fake.train.images[:128], fake.val.images)  # val drawn from other seeds
    x, y = fake.val[0]
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1 and 0 <= y < 10  # as ToTensor gives


def test_fake_subset_and_input_size():
    d = load_data("fake", "retrain", 3, input_size=16, subset=20)
    assert (len(d.train), len(d.val), d.input_size) == (20, 20, 16)
    assert d.train.images.shape == (20, 3, 16, 16)
    assert torch.equal(d.train.images, load_data("fake", "retrain", 3, input_size=16, subset=30).train.images[:20])


# ---------------------------------------------------------------------------- Fashion-MNIST

@pytest.fixture(scope="module")
def fashion_search():
    return load_data("fashion-mnist", "search", 0)


def test_fashion_search_split_is_stratified_and_disjoint(fashion_search):
    d = fashion_search
    assert (len(d.train), len(d.val), d.in_channels, d.num_classes, d.input_size) == (48000, 12000, 1, 10, 28)
    assert d.train.labels.bincount().tolist() == [4800] * 10
    assert d.val.labels.bincount().tolist() == [1200] * 10
    both = torch.cat([d.train.index, d.val.index])
    assert len(both.unique()) == 60000  # disjoint, and together the whole training file
    assert os.path.isdir(d.info["dir"]) and d.info["train"] == 48000 and json.dumps(d.info)
    x = d.train.normalise(d.train.images[:4096])
    assert abs(x.mean()) < 0.05 and abs(x.std() - 1) < 0.05  # Fashion-MNIST's mean and std


def test_fashion_split_depends_on_the_seed_only(fashion_search):
    labels = torch.arange(60000) % 10
    a, b, c = (data.stratified_split(labels, s) for s in (0, 0, 1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    d = load_data("fashion-mnist", "search", 0, subset=100)
    assert torch.equal(d.val.index, fashion_search.val.index[:100])
    assert torch.equal(d.val.images, fashion_search.val.images[:100])


def test_fashion_retrain_uses_the_test_set():
    d = load_data("fashion-mnist", "retrain", 0, input_size=32, subset=1000)
    assert (len(d.train), len(d.val), d.input_size) == (1000, 1000, 32)
    assert d.train.images.shape == (1000, 1, 32, 32) and d.train.augment and not d.val.augment
    d = load_data("fashion-mnist", "retrain", 0)
    assert (len(d.train), len(d.val)) == (60000, 10000)


def test_fashion_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", [])
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(UsageError, match="apt-get install dataset-fashion-mnist"):
        load_data("fashion-mnist", "search", 0)


def write_fashion_files(folder, n, labels=None, cut_test_images=False):
    """Fashion-MNIST's four IDX files with n black images each and the given labels (default all 0)."""
    for name in data.FASHION_MNIST_FILES:
        magic = 2051 if "images" in name else 2049
        dims = [n, 28, 28] if magic == 2051 else [n]
        header = b"".join(v.to_bytes(4, "big") for v in [magic] + dims)
        body = bytes(int(np.prod(dims))) if magic == 2051 or labels is None else bytes(labels)
        (folder / name).write_bytes(header + body[:len(body) - (cut_test_images and name.startswith("t10k-images"))])


def test_fashion_corrupt_file_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", [])
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    write_fashion_files(tmp_path, 3, cut_test_images=True)
    with pytest.raises(UsageError, match="t10k-images.*truncated"):
        load_data("fashion-mnist", "search", 0)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(UsageError, match="cannot read"):
        load_data("fashion-mnist", "search", 0)


# ---------------------------------------------------------------------------- make_loader

def test_loader_same_seed_and_epoch_same_batches(fake):
    a, b = (batches(make_loader(fake.train, 128, True, 3, 7)) for _ in range(2))
    assert len(a) == 4 and same(a, b)
    assert not same(a, batches(make_loader(fake.train, 128, True, 4, 7)))
    assert not same(a, batches(make_loader(fake.train, 128, True, 3, 8)))
    loader = make_loader(fake.train, 128, True, 3, 7)
    assert same(batches(loader), batches(loader))  # iterating again gives the same epoch


def test_loader_order_and_augmentation(fake):
    ds = fake.train
    perm = torch.randperm(512, generator=torch.Generator().manual_seed(7 * 1000 + 3))
    ds.augment = False
    x, y = next(iter(make_loader(ds, 64, True, 3, 7)))
    assert torch.equal(y, ds.labels[perm[:64]]) and torch.equal(x, ds.normalise(ds.images[perm[:64]]))
    ds.augment = True
    xa, ya = next(iter(make_loader(ds, 64, True, 3, 7)))
    assert torch.equal(ya, y) and xa.shape == x.shape and not torch.equal(xa, x)
    # an offset of PAD in both directions without flip is the identity; a flip mirrors the columns
    idx = torch.arange(4)
    c = torch.full((4,), data.PAD)
    assert torch.equal(ds.batch(idx, c, c, torch.zeros(4, dtype=torch.bool))[0], ds.normalise(ds.images[:4]))
    assert torch.equal(ds.batch(idx, c, c, torch.ones(4, dtype=torch.bool))[0], ds.normalise(ds.images[:4]).flip(3))
    ds.augment = True


@pytest.mark.parametrize("augment", [False, True])
def test_ranks_split_the_global_batch(fake, augment):
    fake.val.augment = augment
    whole = batches(make_loader(fake.val, 32, True, 1, 0))
    r0, r1 = (batches(make_loader(fake.val, 32, True, 1, 0, rank=r, world=2)) for r in (0, 1))
    fake.val.augment = False
    assert len(r0) == len(r1) == len(whole) == 4
    for (x, y), (x0, y0), (x1, y1) in zip(whole, r0, r1):
        assert len(y0) == len(y1) == 16 and torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_loader_last_batch_and_bad_world(fake):
    assert len(make_loader(fake.val, 50, False, 0, 0)) == 2
    last = batches(make_loader(fake.val, 50, False, 0, 0, drop_last=False))
    assert [len(y) for _, y in last] == [50, 50, 28] and torch.equal(torch.cat([y for _, y in last]), fake.val.labels)
    parts = [batches(make_loader(fake.val, 50, False, 0, 0, rank=r, world=2, drop_last=False)) for r in (0, 1)]
    assert [len(y) for _, y in parts[0]] == [25, 25, 14] and [len(y) for _, y in parts[1]] == [25, 25, 14]
    with pytest.raises(UsageError, match="multiple of the world size"):
        make_loader(fake.train, 30, True, 0, 0, world=4)
    with pytest.raises(UsageError, match="rank"):
        make_loader(fake.train, 32, True, 0, 0, rank=2, world=2)


# ---------------------------------------------------------------------------- image folders

def make_folder(root, classes=3, per_class=5, val_per_class=2):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            os.makedirs(root / split / f"n0{c}")
            for i in range(n):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"n0{c}" / f"img{i}.JPEG")
    (root / "train" / "n00" / "notes.txt").write_text("not an image")
    return str(root)


def test_folder_search_writes_and_reuses_the_split(tmp_path):
    root = make_folder(tmp_path / "imgs")
    split = tmp_path / "run" / "split.json"
    d = load_data(root, "search", 0, input_size=32, classes=2, split_file=str(split))
    s = json.loads(split.read_text())
    assert len(s["classes"]) == 2 and (len(d.train), len(d.val), d.num_classes, d.in_channels) == (8, 2, 2, 3)
    assert not set(s["train"]) & set(s["val"]) and d.info["split_reused"] is False
    assert all(f.split("/")[0] in s["classes"] and f.endswith(".JPEG") for f in s["train"] + s["val"])
    again = load_data(root, "search", 5, input_size=32, classes=3, split_file=str(split))  # other seed: reused
    assert again.train.files == d.train.files and again.val.files == d.val.files and again.info["split_reused"]
    x, y = d.val[0]
    assert x.shape == (3, 32, 32) and y in (0, 1)

    state = torch.get_rng_state()
    loader = make_loader(d.train, 4, True, 0, 1)
    a = batches(loader)
    assert len(a) == 2 and a[0][0].shape == (4, 3, 32, 32) and same(a, batches(loader))  # augmented, repeatable
    assert same(a, batches(make_loader(d.train, 4, True, 0, 1, workers=2)))  # worker processes: same images
    assert not same(a, batches(make_loader(d.train, 4, True, 1, 1)))
    assert torch.equal(torch.get_rng_state(), state)  # the loaders leave the global RNG alone


def test_folder_retrain(tmp_path):
    root = make_folder(tmp_path)
    d = load_data(root, "retrain", 0, input_size=32)
    assert (len(d.train), len(d.val), d.num_classes) == (15, 6, 3) and isinstance(d.val, FileData)
    split = tmp_path / "split.json"
    load_data(root, "search", 0, classes=2, split_file=str(split))
    d = load_data(root, "retrain", 0, input_size=32, split_file=str(split))
    assert (len(d.train), len(d.val), d.num_classes) == (10, 4, 2)
    names = json.loads(split.read_text())["classes"]
    assert all(names[label] == f.split("/")[0] for f, label in zip(d.val.files, d.val.labels))


def test_folder_fewer_classes_than_requested(tmp_path):
    d = load_data(make_folder(tmp_path), "search", 0, input_size=32)
    assert d.num_classes == 3 and "100 classes requested" in d.info["note"]


@pytest.mark.parametrize("case, match", [("missing", "existing folder"), ("no-train", "no train/"),
                                         ("one-class", "at least 2"), ("no-val", "no val/"),
                                         ("empty-class", "no valid file"), ("purpose", "purpose"),
                                         ("bad-split", "not a split file"), ("no-split", "does not exist")])
def test_folder_errors(tmp_path, case, match):
    root, purpose = tmp_path / "d", "search"
    if case == "no-train":
        root.mkdir()
    if case == "one-class":
        make_folder(root, classes=1)
    if case == "no-val":
        make_folder(root)
        shutil.rmtree(root / "val")
        purpose = "retrain"
    if case == "empty-class":
        make_folder(root)
        os.makedirs(root / "train" / "n09")
    if case == "purpose":
        purpose = "train"
    split = tmp_path / "split.json"
    if case in ("bad-split", "no-split"):
        make_folder(root)
        purpose = "retrain"
    if case == "bad-split":
        split.write_text('{"classes": ["n00"]}')
    with pytest.raises(UsageError, match=match):
        load_data(str(root), purpose, 0, split_file=str(split) if "split" in case else None)


def test_cli(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["machinery/data.py", "--data", "fake", "--subset", "64"])
    run_cli(data.main)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("fake (search, seed 0): train 64, val 64") and json.loads(out[-1])["train"] == 64
    monkeypatch.setattr(sys, "argv", ["machinery/data.py", "--data", "/nonexistent"])
    with pytest.raises(SystemExit) as e:
        run_cli(data.main)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "/nonexistent" in err


def test_hidden_folders_are_not_classes_and_links_back_are_refused(tmp_path):
    """A hidden folder (.ipynb_checkpoints) is not a class; a link back up inside a class is not followed; an image
    reached twice through links, and a class folder that links back to train/ (which would put every image in
    two classes, and in both splits), are refused."""
    root = make_folder(tmp_path / "imgs", classes=3, per_class=5)
    os.makedirs(tmp_path / "imgs" / "train" / ".ipynb_checkpoints")
    Image.new("RGB", (40, 40)).save(tmp_path / "imgs" / "train" / ".ipynb_checkpoints" / "img.JPEG")
    d = load_data(root, "search", 0, input_size=32)
    assert d.num_classes == 3 and not any(".ipynb" in f for f in d.train.files + d.val.files)
    os.symlink("..", tmp_path / "imgs" / "train" / "n01" / "up")  # a loop inside a class: not followed
    again = load_data(root, "search", 0, input_size=32)
    assert (again.train.files, again.val.files) == (d.train.files, d.val.files)
    os.symlink(os.path.abspath(tmp_path / "imgs" / "train" / "n01" / "img0.JPEG"),
               tmp_path / "imgs" / "train" / "n02" / "img9.JPEG")  # one image in two classes
    with pytest.raises(UsageError, match="reached again through a link"):
        load_data(root, "search", 0, input_size=32)
    os.remove(tmp_path / "imgs" / "train" / "n02" / "img9.JPEG")
    os.symlink(".", tmp_path / "imgs" / "train" / "loop")
    with pytest.raises(UsageError, match="which holds it"):
        load_data(root, "search", 0, input_size=32)


def test_fashion_labels_beyond_its_ten_classes_are_refused(tmp_path, monkeypatch):
    """Label files whose labels run to 255 would silently make a 256-class search."""
    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", [])
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    write_fashion_files(tmp_path, 20, labels=[k % 10 for k in range(19)] + [255])
    with pytest.raises(UsageError, match="labels up to 255"):
        load_data("fashion-mnist", "search", 0)
