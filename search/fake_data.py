"""Small learnable datasets in the real on-disk formats, for offline smoke runs and tests.

.venv/bin/python -m search.fake_data --dataset cifar100 --out data-fake --train 2000 --test 500

Each dataset folder it writes gets a FAKE_MARKER file, so that no command takes the fake images for the real ones.
"""

from __future__ import annotations

import json
import numbers
import os
import pickle
import struct
import sys
import zlib

import numpy as np
import torch
import torch.nn.functional as F

from search import cli
from search.data import DATASETS, FAKE_MARKER, DatasetInfo, clear_cache, dataset_info, torchvision_class
from search.errors import DataError

# Per-pixel gaussian noise of fake images, in 0..255 units: small against the spread of the class patterns
# (about 70), so a linear model nearly separates the classes, yet no two images are equal.
FAKE_NOISE = 40.0


def write_fake(name: str, out: str, train: int, test: int, seed: int = 0) -> None:
    """Writes a small learnable dataset in the real on-disk format, for offline smoke runs and tests.

    Each class is a fixed random low-frequency pattern (left-right symmetric, so flips keep the class) plus
    gaussian noise; labels are balanced and shuffled. The files are the ones torchvision reads: the CIFAR
    pickles or the uncompressed MNIST idx files, and FAKE_MARKER beside them (dataset, counts, seed).

    Args:
        name: a key of DATASETS.
        out: the data dir to write into (created if missing).
        train: number of training images.
        test: number of test images.
        seed: seeds the patterns, noise and labels.

    Raises:
        DataError: unknown name or a count below 1.
    """
    info = dataset_info(name)
    for option, value in (("train", train), ("test", test)):
        if not _is_count(value, 1):
            raise DataError(f"{option}: must be a positive integer, got {value!r}")
    if not _is_count(seed, 0):
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
    # The marker first: whatever fake file is there, a crash included, is marked.
    marker = {"dataset": name, "train": int(train), "test": int(test), "seed": int(seed), "writer": "search.fake_data"}
    _atomic_write(os.path.join(folder, FAKE_MARKER), json.dumps(marker, indent=2).encode() + b"\n")
    if info.is_cifar:
        _write_cifar(info, folder, train_x, train_y, test_x, test_y)
    else:
        train_images, train_labels, test_images, test_labels = info.files
        _atomic_write(os.path.join(folder, train_images), _idx_bytes(train_x[:, 0]))
        _atomic_write(os.path.join(folder, train_labels), _idx_bytes(train_y))
        _atomic_write(os.path.join(folder, test_images), _idx_bytes(test_x[:, 0]))
        _atomic_write(os.path.join(folder, test_labels), _idx_bytes(test_y))
    # The files under `out` changed: a cached copy read before would now be stale.
    clear_cache()


def _fake_images(patterns: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.arange(count) % len(patterns)).astype(np.uint8)
    images = np.empty((count, *patterns.shape[1:]), dtype=np.uint8)
    for start in range(0, count, 4096):  # in chunks: 50,000 float CIFAR images would take 600 MB at once
        y = labels[start : start + 4096]
        noisy = patterns[y] + rng.normal(0, FAKE_NOISE, (len(y), *patterns.shape[1:]))
        images[start : start + 4096] = np.clip(np.rint(noisy), 0, 255)
    return images, labels


def _write_cifar(info: DatasetInfo, folder: str, train_x, train_y, test_x, test_y) -> None:
    cls = torchvision_class(info.name)
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


def _write_pickle(path: str, obj: dict) -> None:
    _atomic_write(path, pickle.dumps(obj, protocol=2))  # the originals are protocol 2


def _idx_bytes(array: np.ndarray) -> bytes:
    """The idx format of MNIST: magic (0x08 = unsigned byte, then the rank), big-endian dims, raw bytes."""
    return struct.pack(f">{1 + array.ndim}i", 0x0800 + array.ndim, *array.shape) + array.astype(np.uint8).tobytes()


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # a reader never sees a half-written file


def _is_count(value: object, minimum: int) -> bool:
    # numbers.Integral: counts may be numpy integers; bool is not a count
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def _parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m search.fake_data", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=list(DATASETS))
    p.add_argument("--out", required=True, help="data dir to write into")
    p.add_argument("--train", required=True, type=cli.at_least(1), help="training images")
    p.add_argument("--test", required=True, type=cli.at_least(1), help="test images")
    p.add_argument("--seed", type=cli.at_least(0), default=0)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    write_fake(args.dataset, args.out, args.train, args.test, seed=args.seed)
    info = DATASETS[args.dataset]
    print(
        f"wrote fake {info.name}: {args.train} train + {args.test} test images ({info.channels}x{info.size}x"
        f"{info.size}, {info.num_classes} classes) to {os.path.join(args.out, info.folder)}, marked by {FAKE_MARKER}; "
        f"use it with --data-dir {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
