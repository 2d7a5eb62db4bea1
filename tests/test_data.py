"""search.data on fake files in the real on-disk formats, read by torchvision's real dataset classes."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock

from search import data, fake_data
from search.batches import CROP_PADDING, Batches
from search.data import DATASETS, load_arrays, load_splits, main
from search.errors import DataError, UsageError
from search.fake_data import main as fake_main
from search.fake_data import write_fake

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(DATASETS)
FAKE_TRAIN, FAKE_TEST = 300, 100  # the sizes conftest's fake_data_dir writes
REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def run_python(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def image_keys(x: torch.Tensor) -> list[bytes]:
    return [bytes(row) for row in x.flatten(1).numpy()]


def read_idx(path: Path) -> np.ndarray:
    """The MNIST idx format, read without torchvision: magic, big-endian dims, then unsigned bytes."""
    raw = path.read_bytes()
    ndim = raw[3]
    dims = np.frombuffer(raw[4 : 4 + 4 * ndim], dtype=">i4")
    return np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8).reshape(dims)


@pytest.mark.parametrize("name", NAMES)
def test_torchvision_reads_the_fake_files(name, fake_data_dir):
    info = DATASETS[name]
    train_x, train_y, test_x, test_y = load_arrays(name, str(fake_data_dir))
    assert train_x.shape == (FAKE_TRAIN, info.channels, info.size, info.size) and train_x.dtype == torch.uint8
    assert test_x.shape == (FAKE_TEST, info.channels, info.size, info.size) and test_x.dtype == torch.uint8
    assert train_y.shape == (FAKE_TRAIN,) and train_y.dtype == torch.int64
    assert test_y.shape == (FAKE_TEST,) and test_y.dtype == torch.int64
    assert set(train_y.tolist()) == set(range(min(info.num_classes, FAKE_TRAIN)))  # balanced labels
    assert load_arrays(name, str(fake_data_dir))[0] is train_x  # cached per process


@pytest.mark.parametrize("name", NAMES)
def test_fake_data_is_linearly_separable(name, fake_data_dir):
    # nearest class mean, a linear classifier: the fake data must be learnable well above chance
    train_x, train_y, test_x, test_y = load_arrays(name, str(fake_data_dir))
    classes = sorted(set(train_y.tolist()))
    centroids = torch.stack([train_x[train_y == c].float().mean(0).flatten() for c in classes])
    predicted = torch.tensor(classes)[torch.cdist(test_x.float().flatten(1), centroids).argmin(1)]
    assert (predicted == test_y).float().mean() > 0.9


def test_fake_datasets_differ_by_name_and_seed(tmp_path):
    write_fake("mnist", str(tmp_path / "a"), 20, 5)
    write_fake("fashion_mnist", str(tmp_path / "a"), 20, 5)
    write_fake("mnist", str(tmp_path / "b"), 20, 5, seed=1)
    mnist, fashion, reseeded = (
        load_arrays("mnist", str(tmp_path / "a"))[0],
        load_arrays("fashion_mnist", str(tmp_path / "a"))[0],
        load_arrays("mnist", str(tmp_path / "b"))[0],
    )
    assert not torch.equal(mnist, fashion) and not torch.equal(mnist, reseeded)


@pytest.mark.parametrize("name", NAMES)
def test_splits_partition_the_training_set(name, fake_data_dir):
    train_x, train_y, test_x, test_y = load_arrays(name, str(fake_data_dir))
    s = load_splits(name, str(fake_data_dir))
    n_val = round(FAKE_TRAIN * 0.1)
    assert (len(s.train_x), len(s.train_y), len(s.val_x), len(s.val_y)) == (FAKE_TRAIN - n_val,) * 2 + (n_val,) * 2
    assert s.info is DATASETS[name]
    assert torch.equal(s.test_x, test_x) and torch.equal(s.test_y, test_y)  # the test set is never split
    label_of = dict(zip(image_keys(train_x), train_y.tolist(), strict=True))
    split_keys = image_keys(s.train_x) + image_keys(s.val_x)
    assert sorted(split_keys) == sorted(label_of)  # disjoint, and together the whole training set
    assert [label_of[k] for k in split_keys] == s.train_y.tolist() + s.val_y.tolist()  # images keep labels


@pytest.mark.parametrize("name", NAMES)
def test_subsets_take_the_first_images_of_each_split(name, fake_data_dir):
    full = load_splits(name, str(fake_data_dir), val_fraction=0.2, seed=3)
    s = load_splits(name, str(fake_data_dir), val_fraction=0.2, seed=3, train_subset=50, val_subset=7, test_subset=11)
    assert torch.equal(s.train_x, full.train_x[:50]) and torch.equal(s.train_y, full.train_y[:50])
    assert torch.equal(s.val_x, full.val_x[:7]) and torch.equal(s.val_y, full.val_y[:7])
    assert torch.equal(s.test_x, full.test_x[:11]) and torch.equal(s.test_y, full.test_y[:11])
    assert len(full.val_x) == round(FAKE_TRAIN * 0.2)
    other = load_splits(name, str(fake_data_dir), val_fraction=0.2, seed=4)
    assert not torch.equal(other.val_y, full.val_y) or not torch.equal(other.val_x, full.val_x)


def test_trials_in_one_worker_share_one_split(fake_data_dir):
    # A worker runs trial after trial: the same options must not copy the dataset again.
    first = load_splits("cifar10", str(fake_data_dir), train_subset=100, seed=5)
    again = load_splits("cifar10", str(fake_data_dir), train_subset=100, seed=5)
    assert again is first
    other = load_splits("cifar10", str(fake_data_dir), train_subset=100, seed=6)
    assert other is not first and not torch.equal(other.train_y, first.train_y)


@pytest.mark.parametrize(("n", "expected"), [(50_000, (45_000, 5_000)), (60_000, (54_000, 6_000))])
def test_default_fraction_gives_the_standard_split(n, expected):
    train_idx, val_idx = data._split_indices(n, 0.1, seed=0)
    assert (len(train_idx), len(val_idx)) == expected
    assert torch.equal(torch.cat([train_idx, val_idx]).sort().values, torch.arange(n))


@pytest.mark.parametrize("name", NAMES)
def test_mean_and_std_are_the_training_splits_own(name, fake_data_dir):
    s = load_splits(name, str(fake_data_dir), train_subset=100)
    x = s.train_x.double() / 255
    assert s.mean.dtype == s.std.dtype == torch.float32 and s.mean.shape == (DATASETS[name].channels,)
    torch.testing.assert_close(s.mean.double(), x.mean((0, 2, 3)), atol=1e-6, rtol=0)
    torch.testing.assert_close(s.std.double(), x.std((0, 2, 3), correction=0), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("val_fraction", 0.0001, "leaves an empty split"),  # 0.03 images
        ("train_subset", FAKE_TRAIN, "more than the"),  # more than is left after the validation split
        ("val_subset", FAKE_TRAIN, "more than the"),
        ("test_subset", FAKE_TEST + 1, "more than the"),
    ],
)
def test_split_options_the_data_cannot_meet_name_the_option(option, value, message, fake_data_dir):
    # Their ranges are TrainConfig's to check (tests/test_train.py); here what only the data can tell.
    with pytest.raises(DataError, match=rf"^{option}: .*{message}") as err:
        load_splits("cifar10", str(fake_data_dir), **{option: value})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_batches_are_normalized_and_complete(name, fake_data_dir):
    s = load_splits(name, str(fake_data_dir))
    n, channels = len(s.train_x), DATASETS[name].channels
    batches = Batches(s.train_x, s.train_y, batch_size=64, mean=s.mean, std=s.std)
    assert len(batches) == -(-n // 64) == len(list(batches))
    shapes = [tuple(x.shape) for x, _ in batches]
    assert shapes[0] == (64, *s.train_x.shape[1:]) and shapes[-1][0] == n - 64 * (len(batches) - 1)
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.device.type == "cpu"
    mean, std = s.mean.double().view(1, channels, 1, 1), s.std.double().view(1, channels, 1, 1)
    expected = (s.train_x.double() / 255 - mean) / std
    torch.testing.assert_close(x.double(), expected, atol=1e-5, rtol=0)
    assert torch.equal(y, s.train_y)
    assert x.mean().abs() < 0.1 and (x.std() - 1).abs() < 0.1  # normalized by the split's own statistics
    dropped = Batches(s.train_x, s.train_y, batch_size=64, mean=s.mean, std=s.std, drop_last=True)
    assert len(dropped) == n // 64 == len(list(dropped)) and all(len(y) == 64 for _, y in dropped)


def unit(channels: int) -> dict:
    """mean 0 and std 1: batches come out as pixel / 255, so their uint8 values can be recovered exactly."""
    return {"mean": torch.zeros(channels), "std": torch.ones(channels)}


def as_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8)


@pytest.mark.parametrize("name", NAMES)
def test_augmentation_keeps_images_with_their_labels(name, fake_data_dir):
    s = load_splits(name, str(fake_data_dir))
    size, channels = s.train_x.shape[2], s.train_x.shape[1]
    # every pixel of an image holds its label + 1, so a crop of it holds only that value and black padding
    x = (s.train_y + 1).to(torch.uint8).view(-1, 1, 1, 1).expand_as(s.train_x).contiguous()
    batches = Batches(x, s.train_y, batch_size=50, shuffle=True, augment=True, seed=1, **unit(channels))
    padded = 0
    for out, y in batches:
        values = as_uint8(out)
        label_value = (y + 1).to(torch.uint8).view(-1, 1, 1, 1)
        assert ((values == label_value) | (values == 0)).all()
        pad = CROP_PADDING
        inner = values[:, :, pad : size - pad, pad : size - pad]
        assert (inner == label_value).all()  # a crop of at most 4 pixels of padding never reaches the center
        padded += int((values == 0).flatten(1).any(1).sum())
    assert padded > len(x) / 2  # 80 of 81 crop offsets include some padding


def test_augmentation_is_a_padded_crop_and_flip_of_each_image():
    torch.manual_seed(0)
    x = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = torch.cat([b for b, _ in Batches(x, torch.zeros(64), batch_size=16, augment=True, seed=5, **unit(3))])
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))  # torchvision's RandomCrop(padding=4) pads with zeros

    def crop(i: int, dy: int, dx: int, flip: bool) -> torch.Tensor:
        image = padded[i, :, dy : dy + 32, dx : dx + 32]
        return image.flip(-1) if flip else image

    found = []
    for i, image in enumerate(as_uint8(out)):
        candidates = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)]
        matches = [c for c in candidates if torch.equal(image, crop(i, *c))]
        assert len(matches) == 1, i
        found += matches
    assert {flip for _, _, flip in found} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in found}) > 20  # offsets vary per image, not per batch


def order_of(batches: Batches) -> torch.Tensor:
    return torch.cat([x for x, _ in batches])


def test_shuffle_and_augmentation_are_a_function_of_seed_and_epoch():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(100)

    def make(seed: int = 7) -> Batches:
        return Batches(x, y, batch_size=32, shuffle=True, augment=True, seed=seed, **unit(3))

    first, again = make(), make()
    first.set_epoch(3)
    again.set_epoch(3)
    epoch3 = order_of(first)
    assert torch.equal(epoch3, order_of(again))  # a resumed run sees the same batches
    assert first.epoch == 4  # each pass advances the epoch
    epoch4 = order_of(first)
    assert not torch.equal(epoch3, epoch4)
    again.set_epoch(4)
    assert torch.equal(order_of(again), epoch4)
    other_seed = make(seed=8)
    other_seed.set_epoch(3)
    assert not torch.equal(order_of(other_seed), epoch3)
    labels = torch.cat([b for _, b in make()])
    assert not torch.equal(labels, y) and torch.equal(labels.sort().values, y)  # a permutation


def test_unshuffled_batches_ignore_the_epoch():
    x = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    batches = Batches(x, torch.arange(10), batch_size=4, **unit(1))
    assert torch.equal(order_of(batches), order_of(batches))
    assert torch.equal(as_uint8(order_of(batches)), x)


def test_channels_last_gives_the_same_values():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(8)
    stats = {"mean": torch.tensor([0.5, 0.4, 0.3]), "std": torch.tensor([0.2, 0.25, 0.3])}
    plain = Batches(x, y, batch_size=8, augment=True, **stats)
    channels_last = Batches(x, y, batch_size=8, augment=True, channels_last=True, **stats)
    (a, _), (b, _) = next(iter(plain)), next(iter(channels_last))
    assert b.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_batches_equal_cpu_batches():
    x = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(100)
    kwargs = {"batch_size": 32, "shuffle": True, "augment": True, "seed": 2, **unit(3)}
    gpu = Batches(x, y, device="cuda", **kwargs)
    assert gpu.x.device.type == "cuda" and gpu.x.dtype == torch.uint8
    for (a, ya), (b, yb) in zip(Batches(x, y, **kwargs), gpu, strict=True):
        assert b.device.type == "cuda" and torch.equal(a, b.cpu()) and torch.equal(ya, yb.cpu())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"x": torch.zeros(4, 3, 8, 8)}, "uint8"),
        ({"y": torch.zeros(3)}, "one label per image"),
        ({"std": torch.zeros(3)}, "std > 0"),
        ({"mean": torch.zeros(1)}, r"\[3\]"),
    ],
)
def test_bad_batches_arguments(kwargs, message):
    args = {"x": torch.zeros(4, 3, 8, 8, dtype=torch.uint8), "y": torch.zeros(4), "batch_size": 2, **unit(3)}
    with pytest.raises(DataError, match=message):
        Batches(**{**args, **kwargs})


@pytest.mark.parametrize("name", NAMES)
def test_missing_files_say_what_to_put_where(name, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "no-debian"))
    # a clone with its .venv, where `make search` runs `.venv/bin/python -m search.run`
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "executable", str(tmp_path / ".venv" / "bin" / "python"))
    with pytest.raises(DataError) as err:
        load_arrays(name, str(tmp_path / "data"), download=False)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "data" / DATASETS[name].folder) in message
    assert all(f in message for f in DATASETS[name].files)
    # the interpreter that is running (a bare `python` may have no torch), and a folder apart from the real data
    assert (
        f": .venv/bin/python -m search.fake_data --dataset {name} --out data-fake --train 2000 --test 500 " in message
    )
    assert message.endswith("pass  --data-dir data-fake")
    assert ("dataset-fashion-mnist" in message) == (name == "fashion_mnist")
    assert not (tmp_path / "data").exists()  # a failed first load leaves no folder (nor its lock file) behind


def test_missing_files_elsewhere_give_absolute_paths(tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setattr(sys, "executable", "/opt/my env/bin/python")
    fake_dir = tmp_path / "shared" / "fake-cifar"  # already a folder for fake data: no "fake-cifar-fake"
    with pytest.raises(DataError) as err:
        load_arrays("cifar10", str(fake_dir), download=False)
    assert f": '/opt/my env/bin/python' -m search.fake_data --dataset cifar10 --out {fake_dir} " in str(err.value)
    assert str(err.value).endswith(f"pass  --data-dir {fake_dir}")


def test_a_truncated_fake_file_says_how_to_write_it_again(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_fake("mnist", "data-fake", 50, 10)
    victim = tmp_path / "data-fake" / DATASETS["mnist"].folder / DATASETS["mnist"].files[0]
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(DataError, match=rf"^{victim}: truncated or corrupt .* -m search.fake_data --dataset mnist "
                                        r"--out data-fake "):  # fmt: skip
        load_arrays("mnist", "data-fake")


@pytest.mark.slow  # Python processes that import torch
def test_the_missing_data_message_gives_a_command_that_works_as_printed(tmp_path):
    # A person in a fresh folder with the project's .venv, no virtualenv active: the command they copy from the
    # message runs as printed, and writes fake data apart from ./data, which the message's --data-dir then reads.
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "SEARCH_DATA_DIR")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)

    def sh(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip

    first = sh(".venv/bin/python -m search.data check --dataset cifar10 --no-download")
    assert first.returncode == 2, first.stderr
    (message,) = first.stderr.splitlines()
    command = re.search(r"(\S*python\S* -m search\.fake_data .*?)(?:  |$)", message)[1]
    wrote = sh(command)
    assert wrote.returncode == 0, f"{command}\n{wrote.stderr}"
    fake_dir = re.search(r"--out (\S+)", command)[1]
    assert message.endswith(f"pass  --data-dir {fake_dir}")
    assert (tmp_path / fake_dir / DATASETS["cifar10"].folder / data.FAKE_MARKER).is_file()
    assert not (tmp_path / "data").exists()  # the real data dir got no fake data
    check = sh(f".venv/bin/python -m search.data check --dataset cifar10 --no-download --data-dir {fake_dir}")
    assert check.returncode == 0, check.stderr
    assert "fake data written by search.fake_data, 2000 train + 500 test images" in check.stdout


OFFLINE = """
import json, sys, time
from search import data
data.DEBIAN_FASHION_MNIST_DIR = sys.argv[2]
data.DOWNLOAD_TIMEOUT_S = 5
report = {}
for name in data.DATASETS:
    start = time.perf_counter()
    try:
        data.load_arrays(name, sys.argv[1])
        report[name] = ["loaded", 0]
    except data.DataError as exc:
        report[name] = [str(exc), time.perf_counter() - start]
print(json.dumps(report))
"""


@pytest.mark.slow  # a Python process that imports torch
def test_failed_download_fails_fast_with_the_fix(tmp_path):
    # A proxy that refuses connections makes every download fail, on machines with internet access too.
    # In a subprocess: urllib caches its proxy settings for the life of a process.
    env = {
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "no_proxy": "",
        "NO_PROXY": "",
    }
    proc = run_python("-c", OFFLINE, str(tmp_path / "data"), str(tmp_path / "no-debian"), env=env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    for name, (message, seconds) in json.loads(out.splitlines()[-1]).items():
        assert seconds < 5, (name, seconds)
        assert "download failed" in message and "\n" not in message
        assert str(tmp_path / "data" / DATASETS[name].folder) in message
        assert all(f in message for f in DATASETS[name].files)
        assert "python -m search.fake_data" in message


def test_data_dir_that_is_a_file(tmp_path):
    path = tmp_path / "data"
    path.write_text("not a folder")
    with pytest.raises(DataError, match=f"{path} is a file"):
        load_arrays("mnist", str(path))


def copy_fake(name: str, source: Path, target: Path) -> Path:
    shutil.copytree(source / DATASETS[name].folder, target / DATASETS[name].folder)
    return target / DATASETS[name].folder


@pytest.mark.parametrize("name", NAMES)
def test_truncated_file_is_named(name, fake_data_dir, tmp_path):
    folder = copy_fake(name, fake_data_dir, tmp_path)
    victim = folder / DATASETS[name].files[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"^{victim}: truncated or corrupt") as err:
        load_arrays(name, str(tmp_path))
    assert "\n" not in str(err.value)


def test_wrong_image_size_and_labels_are_rejected(fake_data_dir, tmp_path):
    folder = copy_fake("mnist", fake_data_dir, tmp_path / "size")
    (folder / "t10k-images-idx3-ubyte").write_bytes(fake_data._idx_bytes(np.zeros((FAKE_TEST, 20, 20), np.uint8)))
    with pytest.raises(DataError, match=r"test images are torch.uint8 \[100, 1, 20, 20\], expected uint8 \[N, 1, 28"):
        load_arrays("mnist", str(tmp_path / "size"))
    folder = copy_fake("mnist", fake_data_dir, tmp_path / "labels")
    (folder / "train-labels-idx1-ubyte").write_bytes(fake_data._idx_bytes(np.full(FAKE_TRAIN, 10, np.uint8)))
    with pytest.raises(DataError, match=r"train has 300 labels in 10..10 .* expected one label in 0..9"):
        load_arrays("mnist", str(tmp_path / "labels"))


def test_load_waits_for_the_data_dir_lock(fake_data_dir, tmp_path):
    copy_fake("cifar10", fake_data_dir, tmp_path)
    result = {}
    loader = threading.Thread(target=lambda: result.update(arrays=load_arrays("cifar10", str(tmp_path))), daemon=True)
    with FileLock(str(tmp_path / ".cifar10.lock")):
        loader.start()
        loader.join(timeout=1.0)
        assert loader.is_alive() and not result  # blocked while another holder has the lock
    loader.join(timeout=30)
    assert not loader.is_alive() and len(result["arrays"][0]) == FAKE_TRAIN


CONCURRENT = """
import hashlib, sys
from search import data
data.DEBIAN_FASHION_MNIST_DIR = sys.argv[3]
for name, root in (("cifar10", sys.argv[1]), ("fashion_mnist", sys.argv[2])):
    h = hashlib.sha256(b"".join(a.numpy().tobytes() for a in data.load_arrays(name, root)))
    print(name, h.hexdigest())
"""


def gzip_fake_fashion_mnist(source: Path, target: Path) -> None:
    """Debian's layout: the four idx files, gzipped, in one folder."""
    target.mkdir(parents=True)
    for f in DATASETS["fashion_mnist"].files:
        (target / f"{f}.gz").write_bytes(gzip.compress((source / "FashionMNIST" / "raw" / f).read_bytes()))


@pytest.mark.slow  # two Python processes that import torch
def test_concurrent_processes_share_one_data_dir(fake_data_dir, tmp_path):
    # Both processes find cifar10 in place and must copy fashion_mnist from the "Debian" folder: the lock
    # lets one copy while the other waits, and both read complete files.
    gzip_fake_fashion_mnist(fake_data_dir, tmp_path / "debian")
    copy_fake("cifar10", fake_data_dir, tmp_path / "shared")
    args = ("-c", CONCURRENT, str(tmp_path / "shared"), str(tmp_path / "shared"), str(tmp_path / "debian"))
    procs = [run_python(*args) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    assert outputs[0][0] == outputs[1][0] and len(outputs[0][0].splitlines()) == 2
    assert not [p for p in (tmp_path / "shared").rglob("*") if ".tmp" in p.name]


def test_fashion_mnist_comes_from_debians_folder(fake_data_dir, tmp_path, monkeypatch):
    gzip_fake_fashion_mnist(fake_data_dir, tmp_path / "debian")
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "debian"))
    arrays = load_arrays("fashion_mnist", str(tmp_path / "empty"), download=False)
    for a, b in zip(arrays, load_arrays("fashion_mnist", str(fake_data_dir)), strict=True):
        assert torch.equal(a, b)
    raw = tmp_path / "empty" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(DATASETS["fashion_mnist"].files)


@pytest.mark.skipif(not REAL_FASHION_MNIST.exists(), reason="needs Debian's dataset-fashion-mnist")
def test_real_debian_fashion_mnist(tmp_path):
    s = load_splits("fashion_mnist", str(tmp_path), download=False)
    assert (len(s.train_x), len(s.val_x), len(s.test_x)) == (54_000, 6_000, 10_000)
    assert s.train_x.shape[1:] == (1, 28, 28) and set(s.test_y.tolist()) == set(range(10))
    torch.testing.assert_close(s.mean, torch.tensor([0.286]), atol=2e-3, rtol=0)  # the published statistics
    torch.testing.assert_close(s.std, torch.tensor([0.353]), atol=2e-3, rtol=0)


def test_cli_errors_are_one_line_and_exit_2(tmp_path, cli_exit):
    # one usage error and one DataError, both through search.cli.run_main
    runs = [
        (fake_main, ["--dataset", "imagenet", "--out", tmp_path, "--train", "1", "--test", "1"], "imagenet"),
        (main, ["check", "--dataset", "mnist", "--data-dir", tmp_path / "e", "--no-download"], "not found"),
        (fake_main, ["--dataset", "mnist", "--out", "x", "--train", "0"], "--train: must be an integer >= 1"),
    ]
    for entry, argv, expected in runs:
        code, _, err = cli_exit(entry, argv)
        assert code == 2, err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and expected in err, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "--dataset", "svhn"], "invalid choice: 'svhn'"),
        (["shuffle"], "invalid choice: 'shuffle'"),
        (["check", "--dataset", "mnist", "--data-dri", "x"], "unrecognized arguments: --data-dri"),
    ],
)
def test_cli_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        main(argv)


def test_cli_check_prints_counts(fake_data_dir, capsys):
    assert main(["check", "--dataset", "mnist", "--data-dir", str(fake_data_dir), "--no-download"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and f"{FAKE_TRAIN} train + {FAKE_TEST} test images" in out


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_payload_never_runs_and_is_one_line(tmp_path, cli_exit):
    # A shared data dir is writable by many: a CIFAR file with an extra object ran its command on load.
    write_fake("cifar10", str(tmp_path), 100, 20)
    marker = tmp_path / "PWNED"
    victim = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch = pickle.loads(victim.read_bytes(), encoding="latin1")
    batch["x"] = _Payload(marker)
    victim.write_bytes(pickle.dumps(batch, protocol=2))
    code, _, err = cli_exit(main, ["check", "--dataset", "cifar10", "--data-dir", tmp_path, "--no-download"])
    assert code == 2 and not marker.exists()
    assert len(err.strip().splitlines()) == 1 and "data_batch_1: refused to unpickle posix.system" in err, err


def test_each_datasets_folder_and_files_are_the_ones_its_torchvision_class_reads():
    """DATASETS names them itself, so that torchvision loads only where files are read (`torchvision_class`)."""
    for info in DATASETS.values():
        cls = data.torchvision_class(info.name)
        if info.is_cifar:
            files = tuple(f for f, _ in cls.train_list + cls.test_list) + (cls.meta["filename"],)
            assert (info.folder, info.files) == (cls.base_folder, files)
        else:
            files = tuple(f.removesuffix(".gz") for f, _ in cls.resources)
            assert (info.folder, info.files) == (os.path.join(cls.__name__, "raw"), files)


@pytest.mark.slow
def test_a_trial_worker_imports_no_torchvision():
    """A trial gets its data decoded by the driver (`adopt`): its worker process has no use for torchvision's
    1.4 s of imports (torch._dynamo, through torchvision.ops)."""
    code = "import sys, search.trainable; print(sorted(m for m in sys.modules if m.startswith('torchvision')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.slow
def test_a_trial_trains_on_the_data_its_driver_read_with_no_data_files_where_it_runs(tmp_path, local_ray):
    """The driver reads the dataset once (`shared_data`); the trial maps it from Ray's object store and reads no
    file: here the data folder is gone by the time the trial starts, as on a node that has no copy of it."""
    from search.space import load_space
    from search.trainable import shared_data, trainable
    from search.tuner import build_tuner, fit

    folder = tmp_path / "data"
    write_fake("fashion_mnist", str(folder), train=640, test=100)
    space = load_space(ROOT / "spaces/vgg_fashion_mnist.py", smoke=True)
    base = space.base_config(str(folder))
    parameters = shared_data(base)
    shutil.rmtree(folder)
    data.clear_cache()  # nor does this process keep what it read
    tuner = build_tuner(space, trainable, path=str(tmp_path / "runs"), param_space={**base, "epochs": 1},
                        max_concurrent=1, search=False, parameters=parameters)  # fmt: skip
    (result,) = fit(tuner)
    assert result.error is None, result.error
    assert result.metrics["epoch"] == 1 and 0 <= result.metrics["val_acc"] <= 1
    assert not folder.exists()  # the trial did not fetch the dataset again either


def test_a_process_puts_a_dataset_in_rays_object_store_once_however_many_searches_it_runs(fake_data_dir, local_ray):
    """`tune.with_parameters` holds what it is given for the life of the process: a notebook's second search put a
    second copy of the dataset in the object store, and so on. It gets the one copy now, until the files are read
    again (`clear_cache`)."""
    import ray

    from search.trainable import shared_data

    base = {"dataset": "fashion_mnist", "data_dir": str(fake_data_dir)}
    first, second = shared_data(base)["data"], shared_data(base)["data"]
    assert first.hex() == second.hex()
    name, folder, arrays = ray.get(first)
    assert (name, folder) == ("fashion_mnist", str(fake_data_dir)) and len(arrays[0]) == FAKE_TRAIN
    data.clear_cache()  # the files are read again: their arrays are new
    assert shared_data(base)["data"].hex() != first.hex()
