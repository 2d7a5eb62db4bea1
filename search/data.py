"""Datasets as uint8 tensors and their seeded train/val/test split.

A dataset is read once per process through torchvision's own dataset classes (every CIFAR pickle first passes a
restricted unpickler: a data file is data, never code) and kept as uint8; `search.batches` moves it to the device.
A search's driver reads it, and its trials map the driver's copy from Ray's object store (`adopt`).

    python -m search.data check --dataset cifar100 --data-dir ./data
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import pickle
import shlex
import shutil
import socket
import struct
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from filelock import FileLock
from torch import Tensor

from search import cli, safe_pickle
from search.errors import DataError, one_line

DEFAULT_DATA_DIR: str = os.environ.get("SEARCH_DATA_DIR") or "./data"

# Where Debian's `dataset-fashion-mnist` package installs the four gzipped idx files. A module constant so
# that tests (and other distributions) can point it elsewhere.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# Seconds a download may wait on one socket operation (not the whole file): a machine without internet fails
# within this instead of hanging a trial, while a slow but live link still finishes.
DOWNLOAD_TIMEOUT_S = 30.0

# The file search.fake_data leaves in each dataset folder it writes (what it wrote, as JSON): fake images must
# never pass for the real ones, so every command that trains on them says so first and tags its MLflow run.
FAKE_MARKER = "FAKE_DATA.json"
FAKE_TAG = "data.fake"


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is and where torchvision keeps it (its facts as torchvision's class has them: a fast test
    checks that they agree).

    Attributes:
        name: its key in DATASETS.
        num_classes: number of labels, 0..num_classes-1.
        channels: 3 for color, 1 for grayscale.
        size: height and width in pixels (32 or 28).
        train_count: images in the real training set (fakes are smaller).
        test_count: images in the real test set.
        torchvision_name: the torchvision dataset class that reads and downloads it (`torchvision_class`).
        folder: the folder holding its files, relative to the data dir.
        files: the file names torchvision reads in `folder`.
    """

    name: str
    num_classes: int
    channels: int
    size: int
    train_count: int
    test_count: int
    torchvision_name: str
    folder: str
    files: tuple[str, ...]

    @property
    def is_cifar(self) -> bool:
        return self.torchvision_name.startswith("CIFAR")


_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")

DATASETS: dict[str, DatasetInfo] = {
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, 50_000, 10_000, "CIFAR100", "cifar-100-python",
                            ("train", "test", "meta")),
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, 50_000, 10_000, "CIFAR10", "cifar-10-batches-py", _CIFAR10_FILES),
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, 1, 28, 60_000, 10_000, "FashionMNIST", "FashionMNIST/raw",
                                 _IDX_FILES),
    "mnist": DatasetInfo("mnist", 10, 1, 28, 60_000, 10_000, "MNIST", "MNIST/raw", _IDX_FILES),
}  # fmt: skip


@functools.cache
def torchvision_class(name: str) -> type:
    """The torchvision dataset class that reads and downloads the dataset `name` (a key of DATASETS).

    torchvision loads here, not at import: it takes about 1.4 s (torch._dynamo, through torchvision.ops), and a
    trial, whose data the driver decoded (`adopt`), never needs it.
    """
    from torchvision import datasets

    cls = getattr(datasets, DATASETS[name].torchvision_name)
    if not DATASETS[name].is_cifar:
        return cls
    # torchvision checks the md5 of every extracted pickle, which rejects files written by `write_fake`. Only
    # the existence of the files is checked here; `_read` validates shapes and labels after loading instead.
    # The downloaded archive's md5 (tgz_md5) is still checked by torchvision's download.
    unchecked = {
        "train_list": [[file, None] for file, _ in cls.train_list],
        "test_list": [[file, None] for file, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    }
    return type(cls.__name__, (cls,), unchecked)


def dataset_info(name: str) -> DatasetInfo:
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
    key = (dataset_info(name).name, _root(data_dir))
    return _adopted.get(key) or _load_cached(*key, download)


# Datasets this process was given decoded (a trial, by its driver), by (name, data dir): see `adopt`.
_adopted: dict[tuple[str, str], tuple[Tensor, Tensor, Tensor, Tensor]] = {}


def adopt(name: str, data_dir: str | None, arrays: tuple[np.ndarray, ...]) -> None:
    """Makes `arrays` (what `load_arrays` returned in the search's driver, as numpy arrays through Ray's object
    store: `search.trainable.shared_data`) this process's copy of the dataset `name` under data_dir: `load_arrays`
    returns them from now on, without a copy, and reads no file. Ray maps them read-only, as every reader here
    treats a dataset."""
    key = (dataset_info(name).name, _root(data_dir))
    if key not in _adopted:  # a worker process serves one search: the same dataset for each of its trials
        with warnings.catch_warnings():  # "The given NumPy array is not writable": none of this code writes to it
            warnings.simplefilter("ignore", UserWarning)
            _adopted[key] = tuple(torch.from_numpy(a) for a in arrays)


def _root(data_dir: str | None) -> str:
    return os.path.abspath(os.path.expanduser(data_dir or DEFAULT_DATA_DIR))


def is_fake(name: str, data_dir: str | None = None) -> bool:
    """Whether the dataset `name` under data_dir was written by search.fake_data (its folder holds FAKE_MARKER).

    Args:
        name: a key of DATASETS; any other name is not fake (the loader rejects it).
        data_dir: see `load_arrays`.
    """
    info = DATASETS.get(name)
    return info is not None and os.path.isfile(os.path.join(_root(data_dir), info.folder, FAKE_MARKER))


def note_if_fake(name: str, data_dir: str | None = None) -> dict[str, str]:
    """Prints a note when `name` under data_dir is fake data: a command calls this before it prints anything else.

    Returns:
        The tags that mark an MLflow run on this data: {FAKE_TAG: "true"} on fake data, {} on real data.
    """
    if not is_fake(name, data_dir):
        return {}
    print(
        f"note: {_root(data_dir)} holds fake {name} data written by search.fake_data, not the real {name}",
        flush=True,
    )
    return {FAKE_TAG: "true"}


@functools.lru_cache(maxsize=len(DATASETS))
def _load_cached(name: str, root: str, download: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    info = DATASETS[name]
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"data dir {root} is a file, not a folder; pass a folder (or set SEARCH_DATA_DIR)")
    created = not os.path.exists(root)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise DataError(f"data dir {root} cannot be created ({exc.strerror}); pass a writable one") from None
    if os.access(root, os.W_OK):
        lock = os.path.join(root, f".{name}.lock")
        try:
            with FileLock(lock):
                _ensure_files(info, root, download)
        except DataError:
            if created and [os.path.join(d, f) for d, _, files in os.walk(root) for f in files] == [lock]:
                shutil.rmtree(root, ignore_errors=True)  # a failed first load leaves no folder behind
            raise
    # Nobody can change a read-only folder (a shared dataset mount): there is nothing to guard or fetch.
    elif _missing(info, root):
        raise DataError(_missing_message(info, root, "the data dir is read-only"))
    return _read(info, root)


def _missing(info: DatasetInfo, root: str) -> list[str]:
    return [f for f in info.files if not os.path.isfile(os.path.join(root, info.folder, f))]


def _ensure_files(info: DatasetInfo, root: str, download: bool) -> None:
    marker = os.path.join(root, info.folder, FAKE_MARKER)
    if len(_missing(info, root)) == len(info.files) and os.path.exists(marker):
        os.remove(marker)  # no fake file is left: what comes next is real
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
        torchvision_class(info.name)(root, train=False, download=True)
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
    cls = torchvision_class(info.name)
    source = f"extract {cls.url} into {root}" if info.is_cifar else f"or their .gz from {cls.mirrors[0]}"
    debian = ""
    if info.name == "fashion_mnist":
        debian = (
            f", or install Debian's copy (apt-get install dataset-fashion-mnist, read from {DEBIAN_FASHION_MNIST_DIR})"
        )
    fake_dir = _fake_dir(root)
    return (
        f"{info.name}: {', '.join(_missing(info, root))} not found in {folder} ({reason}); "
        f"put {', '.join(info.files)} there ({source}){debian}; or, for an offline smoke run, write fake data to a "
        f"folder of its own: {_fake_command(info, fake_dir)}  and pass  --data-dir {_shown(fake_dir)}"
    )


def _fake_dir(root: str) -> str:
    # Beside the real data dir, never in it: a later search there would train on fake images.
    return root if "fake" in os.path.basename(root) else f"{root}-fake"


def _fake_command(info: DatasetInfo, out: str) -> str:
    """The command that writes fake data for `info` into `out`, as it runs when pasted where this one runs."""
    python = _shown(sys.executable) if sys.executable else "python"
    return f"{python} -m search.fake_data --dataset {info.name} --out {_shown(out)} --train 2000 --test 500"


def _shown(path: str) -> str:
    """A path as a person types it here: relative to the working folder when inside it, quoted for a shell."""
    path = os.path.abspath(path)
    try:
        inside = os.path.commonpath([path, os.getcwd()]) == os.getcwd()
    except (OSError, ValueError):  # no working folder any more, or another drive
        inside = False
    return shlex.quote(os.path.relpath(path) if inside else path)


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
    struct.error,  # torch.load of a torn legacy processed/*.pt
)


def _legacy_folder(info: DatasetInfo, root: str) -> str | None:
    """The folder torchvision's MNIST classes read instead of raw/ when processed/training.pt and test.pt exist."""
    folder = os.path.join(root, os.path.dirname(info.folder), "processed")
    files = ("training.pt", "test.pt")
    return folder if not info.is_cifar and all(os.path.isfile(os.path.join(folder, f)) for f in files) else None


def _read(info: DatasetInfo, root: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    try:
        if info.is_cifar:  # torchvision unpickles with the full pickle module: vet every file first
            for name in info.files:
                safe_pickle.check(os.path.join(root, info.folder, name))
        cls = torchvision_class(info.name)
        train, test = cls(root, train=True), cls(root, train=False)
    except _READ_ERRORS as exc:
        legacy = _legacy_folder(info, root)
        if legacy:  # what torchvision read, not raw/, is at fault
            raise DataError(f"{legacy}: torchvision reads training.pt and test.pt here instead of the raw folder, "
                            f"and they are unreadable ({_one_line(exc)}); delete them") from None  # fmt: skip
        raise _corrupt_error(info, root, exc) from None
    folder = _legacy_folder(info, root) or os.path.join(root, info.folder)
    arrays = []
    for split, ds in (("train", train), ("test", test)):
        try:  # strings or objects where numbers belong
            x, y = torch.as_tensor(ds.data), torch.as_tensor(ds.targets, dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DataError(
                f"{folder}: {split} images or labels are not numbers ({_one_line(exc)[:120]}); expected uint8 "
                f"images and integer labels for {info.name}; replace the files"
            ) from None
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
            fix = (
                f"write the fake data again: {_fake_command(info, root)}"
                if is_fake(info.name, root)
                else "delete it and load again to re-fetch it, or replace it"
            )
            return DataError(f"{path}: truncated or corrupt ({_one_line(file_exc)}); {fix}")
    return DataError(f"{folder}: cannot read {info.name} ({_one_line(exc)}); replace the files")


def _check_file(info: DatasetInfo, path: str) -> None:
    """Reads one file the way torchvision does, raising whatever a bad file raises."""
    if not info.is_cifar:
        from torchvision.datasets.mnist import read_image_file, read_label_file

        (read_image_file if "images" in os.path.basename(path) else read_label_file)(path)
        return
    entry = safe_pickle.load(path)
    meta = torchvision_class(info.name).meta
    if os.path.basename(path) == meta["filename"]:
        if meta["key"] not in entry:
            raise KeyError(f"no '{meta['key']}' in the metadata")
        return
    labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
    if entry["data"].reshape(-1, 3 * 32 * 32).shape[0] != len(labels):
        raise ValueError(f"{entry['data'].shape[0]} images but {len(labels)} labels")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc)}"  # torchvision's multi-line errors end with the cause


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

    The options' ranges are TrainConfig's to check (`TrainConfig.validate`); here only what depends on the data.

    Raises:
        DataError: a split left empty or a subset larger than its split, or anything `load_arrays` raises.
    """
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


def _digest(arrays: tuple[Tensor, ...]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(list(a.shape)).encode())
        h.update(a.numpy().tobytes())
    return h.hexdigest()[:16]


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m search.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=cli.ArgumentParser)
    check = commands.add_parser("check", help="load a dataset and print its counts")
    check.add_argument("--dataset", required=True, choices=list(DATASETS))
    check.add_argument("--data-dir", default=None, help=f"default: {DEFAULT_DATA_DIR} ($SEARCH_DATA_DIR)")
    check.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")
    check.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`check` loads a dataset and prints its counts and a content digest."""
    args = _parser().parse_args(argv)
    info = DATASETS[args.dataset]
    arrays = load_arrays(args.dataset, args.data_dir, download=not args.no_download)
    fake = "fake data written by search.fake_data, " if is_fake(info.name, args.data_dir) else ""
    print(
        f"{info.name} in {_root(args.data_dir)}: {fake}{len(arrays[0])} train + {len(arrays[2])} test images, "
        f"{info.channels}x{info.size}x{info.size}, {info.num_classes} classes, sha256 {_digest(arrays)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))


def clear_cache() -> None:
    """Forgets the datasets read so far: the files under a data dir changed (tests, the fake-data writer)."""
    _load_cached.cache_clear()
    _split.cache_clear()
    _adopted.clear()
