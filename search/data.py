"""Datasets as uint8 tensors, the train/val/test split, and a batch loader that lives on the model's device.

Following airbench's CifarLoader: a dataset is read once per process through torchvision's own dataset
classes, kept as uint8, moved once to the device, and every batch is normalized and augmented there with
tensor ops. No DataLoader workers: with many short trials their start-up and the per-step host-to-device
copies cost more than the training of a small image model.

    python -m search.data fake --dataset cifar100 --out ./data --train 5000 --test 1000
    python -m search.data check --dataset cifar100 --data-dir ./data
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import io
import numbers
import os
import pickle
import shutil
import socket
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import Tensor
from torchvision import datasets as tv
from torchvision.datasets.mnist import read_image_file, read_label_file

DEFAULT_DATA_DIR: str = os.environ.get("SEARCH_DATA_DIR", "./data")

# Where Debian's `dataset-fashion-mnist` package installs the four gzipped idx files. A module constant so
# that tests (and other distributions) can point it elsewhere.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# Seconds a download may wait on one socket operation (not the whole file): a machine without internet fails
# within this instead of hanging a trial, while a slow but live link still finishes.
DOWNLOAD_TIMEOUT_S = 30.0

# Zero padding before the random crop, in pixels: torchvision's RandomCrop(32, padding=4), the CIFAR standard.
CROP_PADDING = 4


class DataError(Exception):
    """A dataset missing, corrupt or asked for wrongly; the message is one line and says what to do."""


class _CIFAR10(tv.CIFAR10):
    # torchvision checks the md5 of every extracted pickle, which rejects files written by `write_fake`. Only
    # the existence of the files is checked here; `_read` validates shapes and labels after loading instead.
    # The downloaded archive's md5 (tgz_md5) is still checked by torchvision's download.
    train_list = [[name, None] for name, _ in tv.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in tv.CIFAR10.test_list]
    meta = {**tv.CIFAR10.meta, "md5": None}


class _CIFAR100(tv.CIFAR100):
    # See _CIFAR10.
    train_list = [[name, None] for name, _ in tv.CIFAR100.train_list]
    test_list = [[name, None] for name, _ in tv.CIFAR100.test_list]
    meta = {**tv.CIFAR100.meta, "md5": None}


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is and where torchvision keeps it.

    Attributes:
        name: its key in DATASETS.
        num_classes: number of labels, 0..num_classes-1.
        channels: 3 for color, 1 for grayscale.
        size: height and width in pixels (32 or 28).
        train_count: images in the real training set (fakes are smaller).
        test_count: images in the real test set.
        torchvision_class: the torchvision dataset class that reads and downloads it.
        folder: the folder holding its files, relative to the data dir.
        files: the file names torchvision reads in `folder`.
    """

    name: str
    num_classes: int
    channels: int
    size: int
    train_count: int
    test_count: int
    torchvision_class: type
    folder: str
    files: tuple[str, ...]

    @property
    def is_cifar(self) -> bool:
        return issubclass(self.torchvision_class, tv.CIFAR10)


def _cifar(name: str, num_classes: int, cls: type[tv.CIFAR10]) -> DatasetInfo:
    files = tuple(f for f, _ in cls.train_list + cls.test_list) + (cls.meta["filename"],)
    return DatasetInfo(name, num_classes, 3, 32, 50_000, 10_000, cls, cls.base_folder, files)


def _mnist(name: str, cls: type[tv.MNIST]) -> DatasetInfo:
    files = tuple(f.removesuffix(".gz") for f, _ in cls.resources)  # torchvision reads them decompressed
    return DatasetInfo(name, 10, 1, 28, 60_000, 10_000, cls, os.path.join(cls.__name__, "raw"), files)


DATASETS: dict[str, DatasetInfo] = {
    "cifar100": _cifar("cifar100", 100, _CIFAR100),
    "cifar10": _cifar("cifar10", 10, _CIFAR10),
    "fashion_mnist": _mnist("fashion_mnist", tv.FashionMNIST),
    "mnist": _mnist("mnist", tv.MNIST),
}


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"dataset: unknown '{name}'; choose from: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_arrays(name: str, data_dir: str | None = None, download: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reads a whole dataset with torchvision's dataset class, downloading it on first use.

    Files are fetched (or, for fashion_mnist, copied from Debian's dataset-fashion-mnist) under a file lock,
    `<data_dir>/.<name>.lock`, so concurrent trials and processes never race on them. The result is cached
    per process: a Ray worker running many trials reads the files once. Treat the tensors as read-only.

    Args:
        name: a key of DATASETS.
        data_dir: the folder torchvision reads (default: DEFAULT_DATA_DIR, `$SEARCH_DATA_DIR` or ./data).
        download: fetch missing files from the dataset's home page.

    Returns:
        train_x (uint8 [N, C, H, W]), train_y (int64 [N]), test_x, test_y, all on the CPU.

    Raises:
        DataError: unknown name, files missing and not downloadable, corrupt files, data_dir not a folder.
    """
    info = _info(name)
    root = os.path.abspath(os.path.expanduser(data_dir or DEFAULT_DATA_DIR))
    return _load_cached(info.name, root, download)


@functools.lru_cache(maxsize=len(DATASETS))
def _load_cached(name: str, root: str, download: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    info = DATASETS[name]
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"data dir {root} is a file, not a folder; pass a folder (or set SEARCH_DATA_DIR)")
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise DataError(f"data dir {root} cannot be created ({exc.strerror}); pass a writable one") from None
    if os.access(root, os.W_OK):
        with FileLock(os.path.join(root, f".{name}.lock")):
            _ensure_files(info, root, download)
    # Nobody can change a read-only folder (a shared dataset mount): there is nothing to guard or fetch.
    elif _missing(info, root):
        raise DataError(_missing_message(info, root, "the data dir is read-only"))
    return _read(info, root)


def _missing(info: DatasetInfo, root: str) -> list[str]:
    return [f for f in info.files if not os.path.isfile(os.path.join(root, info.folder, f))]


def _ensure_files(info: DatasetInfo, root: str, download: bool) -> None:
    if info.name == "fashion_mnist" and _missing(info, root):
        _copy_debian_fashion_mnist(info, root)
    reason = "download=False"
    if _missing(info, root) and download:
        try:
            _download(info, root)
        # urllib, socket and torchvision raise many types; each of them means "no data from there"
        except Exception as exc:
            reason = f"download failed: {_one_line(exc)}"
    if _missing(info, root):
        raise DataError(_missing_message(info, root, reason))


def _download(info: DatasetInfo, root: str) -> None:
    # torchvision's urllib calls have no timeout: without one, a machine behind a silent firewall hangs.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        # Fetches and extracts every file, then reads the test split, the smaller one.
        info.torchvision_class(root, train=False, download=True)
    finally:
        socket.setdefaulttimeout(previous)


def _copy_debian_fashion_mnist(info: DatasetInfo, root: str) -> None:
    """Decompresses Debian's files into the folder and names that torchvision's FashionMNIST reads."""
    sources = {}
    for name in info.files:
        for candidate in (f"{name}.gz", name):
            path = os.path.join(DEBIAN_FASHION_MNIST_DIR, candidate)
            if os.path.isfile(path):
                sources[name] = path
                break
    if len(sources) < len(info.files):
        return
    folder = os.path.join(root, info.folder)
    os.makedirs(folder, exist_ok=True)
    for name, source in sources.items():
        target = os.path.join(folder, name)
        if os.path.isfile(target):
            continue
        tmp = f"{target}.tmp{os.getpid()}"
        try:
            with (gzip.open if source.endswith(".gz") else open)(source, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError) as exc:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise DataError(
                f"{source}: cannot decompress ({_one_line(exc)}); "
                "reinstall it with: apt-get install --reinstall dataset-fashion-mnist"
            ) from None
        os.replace(tmp, target)  # atomic: a crash never leaves a half-written file under the final name


def _missing_message(info: DatasetInfo, root: str, reason: str) -> str:
    folder = os.path.join(root, info.folder)
    cls = info.torchvision_class
    source = f"extract {cls.url} into {root}" if info.is_cifar else f"or their .gz from {cls.mirrors[0]}"
    debian = ""
    if info.name == "fashion_mnist":
        debian = (
            f", or install Debian's copy (apt-get install dataset-fashion-mnist, read from {DEBIAN_FASHION_MNIST_DIR})"
        )
    return (
        f"{info.name}: {', '.join(_missing(info, root))} not found in {folder} ({reason}); "
        f"put {', '.join(info.files)} there ({source}){debian}, or for an offline smoke run write fake data: "
        f"python -m search.data fake --dataset {info.name} --out {root} --train 5000 --test 1000"
    )


# What torchvision raises on a truncated or corrupt file: pickle and EOF errors for the CIFAR pickles,
# asserts, TypeError and view RuntimeErrors for the idx files, KeyError for a pickle without the usual keys.
_READ_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    RuntimeError,
    KeyError,
    AssertionError,
    TypeError,
)


def _read(info: DatasetInfo, root: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    try:
        train = info.torchvision_class(root, train=True)
        test = info.torchvision_class(root, train=False)
    except _READ_ERRORS as exc:
        raise _corrupt_error(info, root, exc) from None
    folder = os.path.join(root, info.folder)
    arrays = []
    for split, ds in (("train", train), ("test", test)):
        x, y = torch.as_tensor(ds.data), torch.as_tensor(ds.targets, dtype=torch.int64)
        x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)  # CIFAR is NHWC, MNIST NHW
        expected = (info.channels, info.size, info.size)
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != expected or len(x) == 0:
            raise DataError(
                f"{folder}: {split} images are {x.dtype} {list(x.shape)}, expected uint8 "
                f"[N, {', '.join(map(str, expected))}] for {info.name}; replace the files"
            )
        if len(y) != len(x) or y.min() < 0 or y.max() >= info.num_classes:
            span = f" in {y.min().item()}..{y.max().item()}" if len(y) else ""
            raise DataError(
                f"{folder}: {split} has {len(y)} labels{span} for {len(x)} images, expected one label "
                f"in 0..{info.num_classes - 1} per image; replace the files"
            )
        arrays += [x.contiguous(), y]
    return tuple(arrays)


def _corrupt_error(info: DatasetInfo, root: str, exc: Exception) -> DataError:
    folder = os.path.join(root, info.folder)
    for name in info.files:
        path = os.path.join(folder, name)
        try:
            _check_file(info, path)
        except Exception as file_exc:  # diagnosis only: whatever fails to read names the culprit
            return DataError(
                f"{path}: truncated or corrupt ({_one_line(file_exc)}); delete it and load again to "
                f"re-fetch it, or replace it (fake data: python -m search.data fake --dataset {info.name} "
                f"--out {root} ...)"
            )
    return DataError(f"{folder}: cannot read {info.name} ({_one_line(exc)}); replace the files")


def _check_file(info: DatasetInfo, path: str) -> None:
    """Reads one file the way torchvision does, raising whatever a bad file raises."""
    if not info.is_cifar:
        (read_image_file if "images" in os.path.basename(path) else read_label_file)(path)
        return
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    meta = info.torchvision_class.meta
    if os.path.basename(path) == meta["filename"]:
        if meta["key"] not in entry:
            raise KeyError(f"no '{meta['key']}' in the metadata")
        return
    labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
    if entry["data"].reshape(-1, 3 * 32 * 32).shape[0] != len(labels):
        raise ValueError(f"{entry['data'].shape[0]} images but {len(labels)} labels")


def _one_line(exc: BaseException) -> str:
    # The last line: torchvision's multi-line download errors end with the cause.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


@dataclass
class Splits:
    """A dataset split three ways, as uint8 images and int64 labels on the CPU.

    Attributes:
        train_x, train_y: the training split, a seeded random part of the training set.
        val_x, val_y: the validation split, the rest of the training set.
        test_x, test_y: the dataset's own test set, never mixed into the other two.
        mean, std: per-channel pixel statistics of train_x in 0..1 scale (float32 [C]), for normalizing.
        info: what dataset this is.
    """

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    mean: Tensor
    std: Tensor
    info: DatasetInfo


def load_splits(
    name: str,
    data_dir: str | None = None,
    *,
    val_fraction: float = 0.1,
    train_subset: int | None = None,
    val_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    download: bool = True,
) -> Splits:
    """Loads a dataset and holds out a seeded random validation split of its training set.

    Args:
        name: a key of DATASETS.
        data_dir: see `load_arrays`.
        val_fraction: part of the training set held out for validation; 0.1 gives 45,000/5,000 for CIFAR.
        train_subset: keep only the first N training images (after the seeded shuffle); None keeps all.
        val_subset: keep only the first N validation images (after the seeded shuffle); None keeps all.
        test_subset: keep only the first N test images; None keeps all.
        seed: seeds the split, so one seed gives the same split in every process.
        download: see `load_arrays`.

    Returns:
        Splits, with mean and std computed from the training split alone.

    Raises:
        DataError: a bad option (named with its value), or anything `load_arrays` raises.
    """
    if not _is_real(val_fraction) or not 0 < val_fraction < 1:
        raise DataError(f"val_fraction: must be between 0 and 1 (exclusive), got {val_fraction!r}")
    subsets = {"train_subset": train_subset, "val_subset": val_subset, "test_subset": test_subset}
    for option, value in subsets.items():
        if value is not None and not _is_int(value, 1):
            raise DataError(f"{option}: must be a positive integer or None, got {value!r}")
    return _split(name, data_dir, val_fraction, train_subset, val_subset, test_subset, seed, download)


# A split copies the images it keeps: a worker running trial after trial reuses the one split of its
# (dataset, options, seed) rather than building a new one per trial. Nothing writes to a Splits' tensors.
@functools.lru_cache(maxsize=2)
def _split(name, data_dir, val_fraction, train_subset, val_subset, test_subset, seed, download) -> Splits:
    train_x, train_y, test_x, test_y = load_arrays(name, data_dir, download)
    train_idx, val_idx = _split_indices(len(train_x), val_fraction, seed)
    train_idx = _first(train_idx, train_subset, "train_subset", "training images after the validation split")
    val_idx = _first(val_idx, val_subset, "val_subset", "validation images")
    test_n = len(_first(torch.arange(len(test_x)), test_subset, "test_subset", "test images"))
    split_x = train_x[train_idx]
    mean, std = _channel_stats(split_x)
    return Splits(
        train_x=split_x,
        train_y=train_y[train_idx],
        val_x=train_x[val_idx],
        val_y=train_y[val_idx],
        test_x=test_x[:test_n],
        test_y=test_y[:test_n],
        mean=mean,
        std=std,
        info=DATASETS[name],
    )


# numbers.* rather than int/float: values from samplers and configs may be numpy scalars. bool is excluded.
def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: object, minimum: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def _split_indices(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded permutation of range(n), cut into (train, val) indices."""
    n_val = round(n * val_fraction)
    if not 0 < n_val < n:
        raise DataError(f"val_fraction: {val_fraction} of {n} training images leaves an empty split")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]


def _first(idx: Tensor, count: int | None, option: str, what: str) -> Tensor:
    if count is not None and count > len(idx):
        raise DataError(f"{option}: {count} is more than the {len(idx)} {what}")
    return idx[:count]


def _channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Exact per-channel mean and (population) std in 0..1 scale from a 256-bin histogram per channel.

    A histogram avoids a float copy of the whole split (600 MB for CIFAR's training split).
    """
    levels = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(x.shape[1]):
        p = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        p /= p.sum()
        mean = (p * levels).sum()
        means.append(mean)
        stds.append((p * (levels - mean) ** 2).sum().sqrt())
    return torch.stack(means).float(), torch.stack(stds).float()


class Batches:
    """Normalized, optionally augmented batches, made on the device from uint8 images kept there.

    The augmentation is torchvision's RandomCrop(size, padding=4) then RandomHorizontalFlip(), done for the
    whole batch at once. Shuffle order and augmentation depend only on (seed, epoch), and their random numbers
    are drawn on the CPU, so a resumed run, on any device, sees exactly the same batches.

    Each pass uses the current epoch and then advances it by one; `set_epoch` picks the next pass's epoch.

    Args:
        x: images, uint8 [N, C, H, W]; moved to `device` once, here.
        y: labels [N].
        batch_size: images per batch.
        mean: per-channel mean in 0..1 scale [C].
        std: per-channel std in 0..1 scale [C].
        device: where batches are made and returned.
        shuffle: a new random order every epoch.
        augment: random crop with zero padding and random horizontal flip.
        drop_last: leave out the last batch when it is smaller than batch_size.
        seed: seeds the order and augmentation, together with the epoch.
        channels_last: return images in channels_last memory format.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        batch_size: int,
        mean: Tensor,
        std: Tensor,
        device: str | torch.device = "cpu",
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise DataError(f"Batches: x must be uint8 [N, C, H, W], got {x.dtype} {list(x.shape)}")
        if y.shape != (len(x),):
            raise DataError(f"Batches: y must have one label per image ({len(x)}), got shape {list(y.shape)}")
        if batch_size < 1:
            raise DataError(f"batch_size: must be >= 1, got {batch_size}")
        if seed < 0:
            raise DataError(f"seed: must be >= 0, got {seed}")
        channels = x.shape[1]
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if mean.shape != (channels,) or std.shape != (channels,) or not bool((std > 0).all()):
            raise DataError(f"Batches: mean and std must be [{channels}] with std > 0, got {mean} and {std}")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last
        self.seed = seed
        self.channels_last = channels_last
        self.epoch = 0
        # (x / 255 - mean) / std == x * scale + shift: one fused multiply-add per batch.
        self._scale = (1 / (255 * std)).float().view(1, -1, 1, 1).to(self.device)
        self._shift = (-mean / std).float().view(1, -1, 1, 1).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch of the next pass, which fixes its order and augmentation."""
        if epoch < 0:
            raise DataError(f"epoch: must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Yields (x float32 [B, C, H, W] normalized, y int64 [B]), both on the device."""
        epoch, self.epoch = self.epoch, self.epoch + 1
        n, bs = len(self.x), self.batch_size
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=gen).to(self.device) if self.shuffle else None
        if self.augment:
            offsets = torch.randint(0, 2 * CROP_PADDING + 1, (n, 2), generator=gen).to(self.device)
            flips = (torch.rand(n, generator=gen) < 0.5).to(self.device)
        for start in range(0, len(self) * bs, bs):
            stop = min(start + bs, n)
            idx = order[start:stop] if order is not None else slice(start, stop)
            x = self.x[idx]
            if self.augment:
                # On uint8, before normalizing: the padding is black pixels, exactly as in torchvision.
                x = _crop_flip(x, offsets[start:stop], flips[start:stop], CROP_PADDING)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)  # the float ops below keep the layout
            yield torch.addcmul(self._shift, x.float(), self._scale), self.y[idx]


def _epoch_seed(seed: int, epoch: int) -> int:
    # SeedSequence mixes the pair, so neighbouring (seed, epoch) pairs give unrelated streams.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


def _crop_flip(x: Tensor, offsets: Tensor, flips: Tensor, padding: int) -> Tensor:
    """Random crops of the zero-padded images at per-image (dy, dx) offsets, mirrored where `flips` is set."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # [B, H] rows of the padded image
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # [B, W]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


# Per-pixel gaussian noise of fake images, in 0..255 units: small against the spread of the class patterns
# (about 70), so a linear model nearly separates the classes, yet no two images are equal.
FAKE_NOISE = 40.0


def write_fake(name: str, out: str, train: int, test: int, seed: int = 0) -> None:
    """Writes a small learnable dataset in the real on-disk format, for offline smoke runs and tests.

    Each class is a fixed random low-frequency pattern (left-right symmetric, so flips keep the class) plus
    gaussian noise; labels are balanced and shuffled. The files are the ones torchvision reads: the CIFAR
    pickles (with Python 2 string keys, as in the originals) or the uncompressed MNIST idx files.

    Args:
        name: a key of DATASETS.
        out: the data dir to write into (created if missing).
        train: number of training images.
        test: number of test images.
        seed: seeds the patterns, noise and labels.

    Raises:
        DataError: unknown name or a count below 1.
    """
    info = _info(name)
    for option, value in (("train", train), ("test", test)):
        if not _is_int(value, 1):
            raise DataError(f"{option}: must be a positive integer, got {value!r}")
    if not _is_int(seed, 0):
        raise DataError(f"seed: must be an integer >= 0, got {seed!r}")
    # The name joins the seed so that fake MNIST and fake Fashion-MNIST differ, as the real ones do.
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    half = rng.uniform(0, 255, (info.num_classes, info.channels, 4, 2))
    grid = torch.from_numpy(np.concatenate([half, half[..., ::-1]], axis=-1))
    patterns = F.interpolate(grid, size=(info.size, info.size), mode="bilinear", align_corners=False).numpy()
    train_x, train_y = _fake_images(patterns, train, rng)
    test_x, test_y = _fake_images(patterns, test, rng)
    folder = os.path.join(out, info.folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{folder}: cannot create it ({exc.strerror}); pass --out a writable folder") from None
    if info.is_cifar:
        _write_cifar(info, folder, train_x, train_y, test_x, test_y)
    else:
        train_images, train_labels, test_images, test_labels = info.files
        _atomic_write(os.path.join(folder, train_images), _idx_bytes(train_x[:, 0]))
        _atomic_write(os.path.join(folder, train_labels), _idx_bytes(train_y))
        _atomic_write(os.path.join(folder, test_images), _idx_bytes(test_x[:, 0]))
        _atomic_write(os.path.join(folder, test_labels), _idx_bytes(test_y))
    # The files under `out` changed: a cached copy read before would now be stale.
    _load_cached.cache_clear()


def _fake_images(patterns: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.arange(count) % len(patterns)).astype(np.uint8)
    images = np.empty((count, *patterns.shape[1:]), dtype=np.uint8)
    for start in range(0, count, 4096):  # in chunks: 50,000 float CIFAR images would take 600 MB at once
        y = labels[start : start + 4096]
        noisy = patterns[y] + rng.normal(0, FAKE_NOISE, (len(y), *patterns.shape[1:]))
        images[start : start + 4096] = np.clip(np.rint(noisy), 0, 255)
    return images, labels


def _write_cifar(info: DatasetInfo, folder: str, train_x, train_y, test_x, test_y) -> None:
    cls = info.torchvision_class
    names = [f"fake_class_{i}" for i in range(info.num_classes)]
    if info.name == "cifar10":
        chunks = np.array_split(np.arange(len(train_x)), len(cls.train_list))
        for i, ((file, _), idx) in enumerate(zip(cls.train_list, chunks, strict=True)):
            batch = _cifar_batch(train_x[idx], train_y[idx], f"training batch {i + 1} of {len(chunks)}", "labels")
            _write_pickle(os.path.join(folder, file), batch)
        test_file = cls.test_list[0][0]
        _write_pickle(os.path.join(folder, test_file), _cifar_batch(test_x, test_y, "testing batch 1 of 1", "labels"))
        meta = {"num_cases_per_batch": len(chunks[0]), "label_names": names, "num_vis": 3 * 32 * 32}
    else:
        for file, x, y, label in (
            ("train", train_x, train_y, "training"),
            ("test", test_x, test_y, "testing"),
        ):
            batch = _cifar_batch(x, y, f"{label} batch 1 of 1", "fine_labels")
            batch["coarse_labels"] = [int(v) // 5 for v in y]  # CIFAR-100 has 20 superclasses of 5 classes
            _write_pickle(os.path.join(folder, file), batch)
        meta = {"fine_label_names": names, "coarse_label_names": [f"fake_superclass_{i}" for i in range(20)]}
    _write_pickle(os.path.join(folder, cls.meta["filename"]), meta)


def _cifar_batch(x: np.ndarray, y: np.ndarray, batch_label: str, label_key: str) -> dict:
    return {
        "batch_label": batch_label,
        label_key: [int(v) for v in y],
        "data": np.ascontiguousarray(x.reshape(len(x), 3 * 32 * 32)),  # rows of 1024 red, 1024 green, 1024 blue
        "filenames": [f"fake_{i:05d}.png" for i in range(len(x))],
    }


class _Py2Str(bytes):
    """A Python 2 `str`, the type of every key and name in the original CIFAR pickles."""


class _Py2Pickler(pickle._Pickler):
    # Python 3 cannot pickle a Python 2 `str`, but the originals are full of them: they load as `str` with
    # encoding="latin1" (torchvision) and as `bytes` with encoding="bytes" (the CIFAR home page's recipe).
    # Writing the same opcode makes fake files read the same both ways.
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)

    dispatch[_Py2Str] = _save_py2_str


def _py2(obj: object) -> object:
    if isinstance(obj, str):
        return _Py2Str(obj.encode("latin1"))
    if isinstance(obj, list):
        return [_py2(v) for v in obj]
    if isinstance(obj, dict):
        return {_py2(k): _py2(v) for k, v in obj.items()}
    return obj


def _write_pickle(path: str, obj: dict) -> None:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=4).dump(_py2(obj))
    _atomic_write(path, buffer.getvalue())


def _idx_bytes(array: np.ndarray) -> bytes:
    """The idx format of MNIST: magic (0x08 = unsigned byte, then the rank), big-endian dims, raw bytes."""
    return struct.pack(f">{1 + array.ndim}i", 0x0800 + array.ndim, *array.shape) + array.astype(np.uint8).tobytes()


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # a reader never sees a half-written file


def _digest(arrays: tuple[Tensor, ...]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(list(a.shape)).encode())
        h.update(a.numpy().tobytes())
    return h.hexdigest()[:16]


def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got '{text}'")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    from search.cli import UsageError

    class Parser(argparse.ArgumentParser):
        def error(self, message: str):  # one line via search.cli.run_main, not argparse's usage block
            raise UsageError(f"{self.prog}: {message}")

    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser = Parser(prog="python -m search.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    fake = commands.add_parser("fake", parents=[common], help="write a small learnable fake dataset")
    fake.add_argument("--dataset", required=True, choices=list(DATASETS))
    fake.add_argument("--out", required=True, help="data dir to write into")
    fake.add_argument("--train", required=True, type=_at_least(1), help="training images")
    fake.add_argument("--test", required=True, type=_at_least(1), help="test images")
    fake.add_argument("--seed", type=_at_least(0), default=0)
    check = commands.add_parser("check", parents=[common], help="load a dataset and print its counts")
    check.add_argument("--dataset", required=True, choices=list(DATASETS))
    check.add_argument("--data-dir", default=None, help=f"default: {DEFAULT_DATA_DIR} ($SEARCH_DATA_DIR)")
    check.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`fake` writes a fake dataset; `check` loads one and prints its counts and a content digest."""
    args = _parser().parse_args(argv)
    info = DATASETS[args.dataset]
    shape = f"{info.channels}x{info.size}x{info.size}"
    if args.command == "fake":
        write_fake(args.dataset, args.out, args.train, args.test, seed=args.seed)
        print(
            f"wrote fake {info.name}: {args.train} train + {args.test} test images ({shape}, "
            f"{info.num_classes} classes) to {os.path.join(args.out, info.folder)}; use data dir {args.out}"
        )
    else:
        arrays = load_arrays(args.dataset, args.data_dir, download=not args.no_download)
        root = os.path.abspath(args.data_dir or DEFAULT_DATA_DIR)
        print(
            f"{info.name} in {root}: {len(arrays[0])} train + {len(arrays[2])} test images, {shape}, "
            f"{info.num_classes} classes, sha256 {_digest(arrays)}"
        )
    return 0


if __name__ == "__main__":
    # Run the importable copy of this module, not __main__: its DataError is the class run_main catches.
    from search import data
    from search.cli import run_main

    run_main(data.main)
