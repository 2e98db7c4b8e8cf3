"""Data loading for search.py and retrain.py, shared so both read the same splits.

One interface over three sources: load_data() gives a Dataset (train split, val split, shapes,
a JSON-able info), make_loader() gives the batches of one epoch.
  fake            torchvision FakeData: 10 classes, 3x32x32, seeded; for smoke tests
  fashion-mnist   the real Fashion-MNIST IDX files, held in memory (1x28x28, 10 classes)
  PATH            an ImageNet-style folder: PATH/train/<class>/*.JPEG, and PATH/val/<class>/ to retrain

Search (supplement A.1): the training images are split 80/20 per class with the seed; the
weights train on the 80%, the architecture on the 20%; the official test/val set is never read.
On an image folder, `classes` classes are drawn first (100 in the paper), and the split can be
saved to a JSON file and reused, so a resumed run sees exactly the same split.
Retrain: all training images (of the saved classes, if a split file is given); val is the
official test/val set.

make_loader makes runs reproducible bit-for-bit and resumable at epoch boundaries: the order of
epoch e is a permutation drawn from torch.Generator().manual_seed(seed * 1000 + e), cut into
global batches; rank r of `world` takes the r-th contiguous slice of each. The random
augmentation of the item at each position of that order is drawn from the same generator, so it
depends on (seed, epoch, position) only: not on the rank, the world size or the worker count.

    python -m machinery.data --data fashion-mnist [--purpose search|retrain] [--seed S] [--input-size N]
    python -m machinery.data --data PATH [--classes 100] [--split-file split.json]
"""
import gzip
import json
import math
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

from machinery.cli import SEED, ArgumentParser, UsageError, integer, read_json, run_cli, save_json_atomic

# where Fashion-MNIST is looked for, after $FASHION_MNIST_DIR (read at call time)
FASHION_MNIST_DIRS = ["./data/fashion-mnist", "/usr/share/datasets/fashion-mnist"]
FASHION_MNIST_CLASSES = 10
FASHION_MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VAL_FRACTION = 0.2   # supplement A.1: 20% of each class's training images form the val split
FAKE_SIZES = 512, 128  # train, val
PAD = 2  # random-crop padding of in-memory images


@dataclass
class Dataset:
    """What search.py and retrain.py get from load_data."""
    train: torch.utils.data.Dataset  # the split weights are trained on
    val: torch.utils.data.Dataset    # search: the architecture split (20% of train); retrain: evaluation
    in_channels: int
    num_classes: int
    input_size: int
    info: dict                       # JSON-able description (source, sizes, classes, ...)


class TensorData(torch.utils.data.Dataset):
    """Images held in memory as uint8 (N, C, H, W) with int64 labels. `index` is each item's
    position in its source file (to audit splits). make_loader indexes the tensors directly and,
    if `augment`, pads by PAD pixels, crops back at random and flips half the images."""

    def __init__(self, images, labels, mean, std, augment=False, index=None):
        self.images, self.labels, self.mean, self.std, self.augment = images, labels, mean, std, augment
        self.index = torch.arange(len(labels)) if index is None else index

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.normalise(self.images[i]), int(self.labels[i])

    def normalise(self, x):
        return (x.float() / 255 - self.mean) / self.std

    def batch(self, idx, dy=None, dx=None, flip=None):
        """Items idx as one normalised float batch; crop offsets dy, dx in [0, 2*PAD] and flips if given."""
        x = self.images[idx]
        if dy is not None:
            n, c, h, w = x.shape
            x = F.pad(x, (PAD, PAD, PAD, PAD))  # zero = black, as torchvision's RandomCrop pads
            rows = dy[:, None] + torch.arange(h)
            cols = dx[:, None] + torch.arange(w)
            cols = torch.where(flip[:, None], cols.flip(1), cols)
            x = x[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]
        return self.normalise(x), self.labels[idx]


class FileData(torch.utils.data.Dataset):
    """Image files root/<class>/<file> with their labels. `augment` picks the GoogleNet-style
    training transform, else the evaluation one. Indexed with (i, seed), as make_loader does, the
    random transform draws from that seed, so it is the same in any worker process."""

    def __init__(self, root, files, labels, size, augment=False):
        self.root, self.files, self.labels, self.augment = root, files, labels, augment
        norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.train_transform = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        self.eval_transform = T.Compose([T.Resize(int(size / 0.875)), T.CenterCrop(size), T.ToTensor(), norm])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        try:
            img = default_loader(os.path.join(self.root, self.files[i]))
        except OSError as e:  # a file that passed check_images but does not decode (truncated)
            raise UsageError(f"image {os.path.join(self.root, self.files[i])} cannot be decoded ({e})") from None
        if not self.augment:
            return self.eval_transform(img), self.labels[i]
        if seed is None:
            return self.train_transform(img), self.labels[i]
        # torchvision's random transforms draw from the global CPU generator: seed it for this item,
        # then put it back (only the CPU one: torch.manual_seed would also reseed the GPUs)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.train_transform(img), self.labels[i]


def stratified_split(labels, seed, val_fraction=VAL_FRACTION):
    """Indices of an 80/20 split made per class with the seed. Both lists come back in a seeded
    random order, so that their first N items (subset) still cover the classes."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels)
    train, val = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = round(len(idx) * val_fraction)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    train, val = torch.cat(train), torch.cat(val)
    return train[torch.randperm(len(train), generator=g)], val[torch.randperm(len(val), generator=g)]


# ----------------------------------------------------------------------------------------
# fake data

def load_fake(purpose, seed, input_size, subset):
    """FakeData materialised to uint8 tensors (the values ToTensor would give, times 255); the
    val images come from other seeds than the train images. Same sizes for search and retrain."""
    size = input_size or 32
    splits, offset = [], seed * 1_000_000
    for n in FAKE_SIZES:
        fake = torchvision.datasets.FakeData(min(n, subset or n), (3, size, size), 10, T.PILToTensor(),
                                             random_offset=offset)
        images, labels = zip(*(fake[i] for i in range(len(fake))))
        splits.append((torch.stack(images), torch.tensor(labels)))
        offset += n
    (xt, yt), (xv, yv) = splits
    return TensorData(xt, yt, 0.0, 1.0, augment=True), TensorData(xv, yv, 0.0, 1.0), 3, 10, size, {}


# ----------------------------------------------------------------------------------------
# Fashion-MNIST: four IDX files, gzip or plain

def read_idx(path, magic):
    """One IDX file as a uint8 tensor: magic 2051 = images (N, rows, cols), 2049 = labels (N,)."""
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    head = 4 * (2 if magic == 2049 else 4)
    if len(raw) < head or int.from_bytes(raw[:4], "big") != magic:
        raise UsageError(f"{path} is not an IDX file with magic number {magic} (corrupt or the wrong file)")
    shape = [int.from_bytes(raw[i:i + 4], "big") for i in range(4, head, 4)]
    if len(raw) - head != math.prod(shape):
        raise UsageError(f"{path}: the header says {shape}, but {len(raw) - head} bytes follow (truncated?)")
    return torch.frombuffer(bytearray(raw[head:]), dtype=torch.uint8).reshape(shape)


def find_fashion_mnist():
    """The first directory with all four files (name or name.gz) and their paths."""
    dirs = [d for d in [os.environ.get("FASHION_MNIST_DIR")] + FASHION_MNIST_DIRS if d]
    for d in dirs:
        paths = [next((p for p in (os.path.join(d, f), os.path.join(d, f + ".gz")) if os.path.isfile(p)), None)
                 for f in FASHION_MNIST_FILES]
        if all(paths):
            return d, paths
    raise UsageError(f"Fashion-MNIST not found in {', '.join(dirs)}: `apt-get install dataset-fashion-mnist`, "
                     "or download its four .gz files from github.com/zalandoresearch/fashion-mnist "
                     "into ./data/fashion-mnist or a folder named by FASHION_MNIST_DIR")


def load_fashion_mnist(purpose, seed, input_size, subset):
    d, paths = find_fashion_mnist()
    train_x, train_y, test_x, test_y = (read_idx(p, magic) for p, magic in zip(paths, (2051, 2049, 2051, 2049)))
    if (len(train_x) != len(train_y) or len(test_x) != len(test_y) or train_x.shape[1:] != test_x.shape[1:]
            or not len(train_y) or not len(test_y)):
        raise UsageError(f"the Fashion-MNIST files in {d} do not match each other (image and label counts, sizes)")
    size = input_size or train_x.shape[1]
    num_classes = int(train_y.max()) + 1
    if num_classes > FASHION_MNIST_CLASSES or int(test_y.max()) >= FASHION_MNIST_CLASSES:
        top = max(int(train_y.max()), int(test_y.max()))
        raise UsageError(f"the Fashion-MNIST label files in {d} hold labels up to {top}, not 0-"
                         f"{FASHION_MNIST_CLASSES - 1}: they are damaged or not Fashion-MNIST's")

    def split(x, y, idx, augment):
        x = x[idx][:subset, None]  # (N, 1, H, W)
        if size != x.shape[-1]:  # resize once, up front, in chunks to bound the float copy
            x = torch.cat([F.interpolate(c.float(), size=(size, size), mode="bilinear", antialias=True)
                           .round().clamp(0, 255).to(torch.uint8) for c in x.split(4096)])
        return TensorData(x, y[idx][:subset].long(), FASHION_MEAN, FASHION_STD, augment, idx[:subset])

    if purpose == "search":
        tr, va = stratified_split(train_y, seed)
        train, val = split(train_x, train_y, tr, True), split(train_x, train_y, va, False)
    else:
        train = split(train_x, train_y, torch.arange(len(train_y)), True)
        val = split(test_x, test_y, torch.arange(len(test_y)), False)
    return train, val, 1, num_classes, size, {"dir": os.path.abspath(d)}


# ----------------------------------------------------------------------------------------
# ImageNet-style folders

def scan(folder, names):
    """Paths 'class/file' of the images of the named classes under folder, in torchvision's make_dataset order
    (classes sorted, then walked in sorted order). Links to images are read; links to folders inside a class are
    not followed, as one pointing back up would be walked without end."""
    def image(path):  # only regular files: a named pipe would block the reader
        return path.lower().endswith(IMG_EXTENSIONS) and os.path.isfile(path)
    found, seen = [], {}
    for name in sorted(names):
        files = [os.path.join(root, f) for root, _, fs in sorted(os.walk(os.path.join(folder, name)))
                 for f in sorted(fs) if image(os.path.join(root, f))]
        if not files:
            raise UsageError(f"{folder}: class folder {name} holds no valid file (an image: "
                             f"{', '.join(IMG_EXTENSIONS[:4])} ...)")
        for p in files:  # a link can reach an image twice, or one of another class
            first = seen.setdefault(os.path.realpath(p), p)
            if first != p:
                raise UsageError(f"{folder}: {os.path.relpath(p, folder)} is {os.path.relpath(first, folder)} "
                                 "reached again through a link; an image must belong to one class, once")
        found += files
    return [os.path.relpath(p, folder).replace(os.sep, "/") for p in found]


def class_folders(folder):
    """The class folders of an ImageFolder split, sorted: hidden folders (.ipynb_checkpoints, .git) are not
    classes; a link back to the split or above it would make a class of every image, and is refused."""
    names, top = [], os.path.realpath(folder)
    for entry in os.scandir(folder):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        real = os.path.realpath(entry.path)
        if top == real or top.startswith(real + os.sep):
            raise UsageError(f"{entry.path} is a link to {real}, which holds it: not a class folder")
        names.append(entry.name)
    return sorted(names)


def read_split(path):
    s = read_json(path, "split file")
    if not (isinstance(s, dict) and all(isinstance(s.get(k), list) for k in ("classes", "train", "val"))):
        raise UsageError(f"split file {path} is not a split file (lists 'classes', 'train' and 'val')")
    return s


def check_images(folder, files):
    """Open every image's header before training (threads, as this is I/O), so that a corrupt or unreadable
    file is named now, not found mid-epoch."""
    def bad(f):
        try:
            with Image.open(os.path.join(folder, f)) as im:
                im.size
            return None
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            return f"{f} ({type(e).__name__})"
    with ThreadPoolExecutor(16) as pool:
        found = [b for b in pool.map(bad, files) if b]
    if found:
        raise UsageError(f"{len(found)} unreadable image(s) in {folder}, e.g. {found[0]}; remove or replace them")


def load_folder(root, purpose, seed, input_size, subset, classes, split_file, verify_images=True):
    size = input_size or 224
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    if not os.path.isdir(root):
        raise UsageError(f"--data '{root}' is neither 'fake', 'fashion-mnist' nor an existing folder")
    if not os.path.isdir(train_dir):
        raise UsageError(f"{root} has no train/ folder (expected {root}/train/<class>/*.JPEG)")
    saved = read_split(split_file) if split_file and os.path.exists(split_file) else None
    if purpose == "retrain" and split_file and saved is None:
        raise UsageError(f"split file {split_file} does not exist (search.py writes it)")
    names = saved["classes"] if saved else class_folders(train_dir)
    if len(names) < 2:
        raise UsageError(f"{train_dir} has {len(names)} class folder(s); a classifier needs at least 2")
    info = {"root": os.path.abspath(root)}
    g = torch.Generator().manual_seed(seed)

    if purpose == "search" and saved:
        train_files, val_files = saved["train"], saved["val"]
        info.update(split_file=split_file, split_reused=True)
    elif purpose == "search":
        if classes < len(names):
            names = sorted(names[i] for i in torch.randperm(len(names), generator=g)[:classes].tolist())
        elif classes > len(names):
            info["note"] = f"{classes} classes requested, {len(names)} exist: using all"
        files = scan(train_dir, names)
        index = {c: i for i, c in enumerate(names)}
        tr, va = stratified_split([index[f.split("/")[0]] for f in files], seed)
        train_files, val_files = [files[i] for i in tr], [files[i] for i in va]
        if split_file:
            os.makedirs(os.path.dirname(os.path.abspath(split_file)), exist_ok=True)
            save_json_atomic({"root": info["root"], "seed": seed, "classes": names, "train": train_files,
                              "val": val_files}, split_file, indent=None)
            info.update(split_file=split_file, split_reused=False)
    else:
        if not os.path.isdir(val_dir):
            raise UsageError(f"{root} has no val/ folder (expected {root}/val/<class>/*.JPEG, as train/)")
        # seeded order, so that the first N (subset) cover the classes
        train_files, val_files = ([files[i] for i in torch.randperm(len(files), generator=g).tolist()]
                                  for files in (scan(train_dir, names), scan(val_dir, names)))

    index = {c: i for i, c in enumerate(names)}
    try:
        train_labels, val_labels = ([index[f.split("/")[0]] for f in files] for files in (train_files, val_files))
    except KeyError as e:
        raise UsageError(f"split file {split_file} lists a file of class {e}, which it does not name") from None
    if verify_images:
        check_images(train_dir, train_files[:subset])
        check_images(val_dir if purpose == "retrain" else train_dir, val_files[:subset])
    train = FileData(train_dir, train_files[:subset], train_labels[:subset], size, augment=True)
    val = FileData(val_dir if purpose == "retrain" else train_dir, val_files[:subset], val_labels[:subset], size)
    return train, val, 3, len(names), size, info


# ----------------------------------------------------------------------------------------

def load_data(data, purpose, seed, input_size=None, subset=None, classes=100, split_file=None, verify_images=True):
    """The train and val splits of `data` ('fake', 'fashion-mnist' or an image-folder PATH) for
    purpose 'search' (val = 20% of train, per class) or 'retrain' (val = the official test set).
    verify_images: open every image's header first (check_images); a worker whose launcher has already
    done so passes False."""
    if purpose not in ("search", "retrain"):
        raise UsageError(f"purpose must be 'search' or 'retrain', got '{purpose}'")
    for name, value, low in (("seed", seed, 0), ("input size", input_size, 1), ("subset", subset, 1),
                             ("classes", classes, 2)):
        if value is not None and value < low:
            raise UsageError(f"{name} must be at least {low}, got {value}")
    if data == "fake":
        train, val, channels, num_classes, size, info = load_fake(purpose, seed, input_size, subset)
    elif data == "fashion-mnist":
        train, val, channels, num_classes, size, info = load_fashion_mnist(purpose, seed, input_size, subset)
    else:
        train, val, channels, num_classes, size, info = load_folder(data, purpose, seed, input_size, subset,
                                                                    classes, split_file, verify_images)
    info = {"source": data if data in ("fake", "fashion-mnist") else "imagefolder", **info, "purpose": purpose,
            "seed": seed, "train": len(train), "val": len(val), "classes": num_classes, "channels": channels,
            "input_size": size, **({"subset": subset} if subset else {})}
    return Dataset(train, val, channels, num_classes, size, info)


def describe(ds):
    """A one-line summary for logs."""
    i = ds.info
    return (f"{i['source']} ({i['purpose']}, seed {i['seed']}): train {i['train']}, val {i['val']}, "
            f"{i['classes']} classes, {i['channels']}x{i['input_size']}x{i['input_size']}")


class Loader:
    """The batches of one epoch for one rank; see make_loader."""

    def __init__(self, dataset, batch_size, shuffle, epoch, seed, rank, world, workers, device, drop_last):
        self.dataset, self.shuffle, self.epoch, self.seed, self.workers = dataset, shuffle, epoch, seed, workers
        self.device = device
        self.pin_memory = device is not None and device.type == "cuda"
        self.slices = []  # (start, stop) positions in the epoch's order of this rank's batches
        n = len(dataset)
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)  # a final incomplete global batch is shared out evenly
            if m < batch_size and drop_last:
                break
            q, r = divmod(m, world)
            a = start + rank * q + min(rank, r)
            if q + (rank < r):
                self.slices.append((a, a + q + (rank < r)))

    def __len__(self):
        return len(self.slices)

    def __iter__(self):
        for x, y in self._host_batches():
            if self.device is not None:  # channels-last: oneDNN's and cuDNN's convolutions are faster in it
                x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                y = y.to(self.device, non_blocking=True)
            yield x, y

    def _host_batches(self):
        n = len(self.dataset)
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        augment = getattr(self.dataset, "augment", False)
        if isinstance(self.dataset, TensorData):
            dy, dx = torch.randint(0, 2 * PAD + 1, (2, n), generator=g)
            flip = torch.rand(n, generator=g) < 0.5
            for a, b in self.slices:
                aug = (dy[a:b], dx[a:b], flip[a:b]) if augment else ()
                x, y = self.dataset.batch(order[a:b], *aug)
                yield (x.pin_memory(), y.pin_memory()) if self.pin_memory else (x, y)
        else:
            seeds = torch.randint(0, 2 ** 62, (n,), generator=g).tolist()
            keyed = isinstance(self.dataset, FileData)
            batches = [[(i, seeds[p]) if keyed else i for p, i in zip(range(a, b), order[a:b].tolist())]
                       for a, b in self.slices]
            # our own generator, so that the DataLoader does not draw from the global RNG
            try:
                yield from torch.utils.data.DataLoader(
                    self.dataset, batch_sampler=batches, num_workers=self.workers, pin_memory=self.pin_memory,
                    generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
            except UsageError as e:  # from a worker process it comes wrapped in the worker's traceback: unwrap
                if not str(e).startswith("Caught "):
                    raise
                raise UsageError(str(e).strip().splitlines()[-1].split(": ", 1)[-1]) from None


def make_loader(dataset, batch_size, shuffle, epoch, seed, rank=0, world=1, workers=0, device=None, drop_last=True):
    """The (x, y) batches of epoch `epoch` for rank `rank` of `world`: the epoch's order (a
    permutation from seed * 1000 + epoch when shuffle) is cut into global batches of batch_size,
    of which this rank takes the rank-th contiguous slice. Tensor data is indexed directly;
    file data goes through a DataLoader with `workers` processes. With a device, every batch is
    moved there, images in channels-last. Iterating twice gives the same batches."""
    if batch_size < 1 or world < 1 or batch_size % world:
        raise UsageError(f"batch size {batch_size} must be a positive multiple of the world size {world}")
    if not 0 <= rank < world:
        raise UsageError(f"rank {rank} is not in 0..{world - 1}")
    return Loader(dataset, batch_size, shuffle, epoch, seed, rank, world, workers, device, drop_last)


def main():
    ap = ArgumentParser(__doc__)
    ap.add_argument("--data", default="fashion-mnist", help="fake, fashion-mnist or an image-folder PATH")
    ap.add_argument("--purpose", default="search", choices=["search", "retrain"], help="which splits (default search)")
    ap.add_argument("--seed", type=SEED, default=0, help="seed of the class draw and the split (default 0)")
    ap.add_argument("--input-size", type=int, default=None, help="image size (default: 32 fake, 28 fashion-mnist, 224)")
    ap.add_argument("--subset", type=int, default=None, help="keep the first N items of each split")
    ap.add_argument("--classes", type=int, default=100, help="classes drawn from an image folder (default 100)")
    ap.add_argument("--split-file", default=None, help="image folder: JSON of the search split, written or reused")
    ap.add_argument("--batch-size", type=integer(1), default=256, help="batch size of the loader check (default 256)")
    args = ap.parse_args()
    t = time.time()
    ds = load_data(args.data, args.purpose, args.seed, args.input_size, args.subset, args.classes, args.split_file)
    print(f"{describe(ds)}  [loaded in {time.time() - t:.2f} s]")
    for name, split in (("train", ds.train), ("val", ds.val)):
        counts = torch.bincount(torch.as_tensor(split.labels), minlength=ds.num_classes).tolist()
        print(f"  {name:5s} {len(split):6d} items; per label " + " ".join(f"{c}:{k}" for c, k in enumerate(counts[:10]))
              + (" ..." if len(counts) > 10 else ""))
    loader = make_loader(ds.train, min(args.batch_size, len(ds.train)), True, 0, args.seed)
    t = time.time()
    x, y = next(iter(loader))
    print(f"  first train batch: x {tuple(x.shape)} {x.dtype} mean {x.mean():.3f} std {x.std():.3f}, "
          f"y {tuple(y.shape)} [{time.time() - t:.3f} s]")
    if isinstance(ds.train, TensorData):
        t = time.time()
        n = sum(1 for _ in loader)
        print(f"  one augmented epoch: {n} batches of {loader.slices[0][1]} in {time.time() - t:.2f} s")
    print(json.dumps(ds.info))


if __name__ == "__main__":
    run_cli(main)
