"""search.fake_data: small learnable datasets in the real on-disk formats, its command line, and the marker that
keeps fake data from passing for real data in every command."""

from __future__ import annotations

import gzip
import json
import shutil
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from search import data
from search.data import DATASETS, FAKE_MARKER, FAKE_TAG, is_fake, load_arrays, note_if_fake
from search.data import main as data_main
from search.driver import prepare
from search.errors import DataError, UsageError
from search.fake_data import main, write_fake
from search.tracking import end_parent
from search.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]


def test_cli_writes_fake_data(tmp_path, capsys):
    assert main(["--dataset", "cifar100", "--out", str(tmp_path), "--train", "200", "--test", "50", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and "cifar100" in out and str(tmp_path) in out
    train_x, _, test_x, _ = load_arrays("cifar100", str(tmp_path))
    assert (len(train_x), len(test_x)) == (200, 50)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "mnist", "--out", "x", "--train", "0", "--test", "5"], "--train: must be an integer >= 1"),
        (["--dataset", "mnist", "--out", "x", "--train", "5"], "--test"),
        (["--dataset", "mnist", "--out", "x", "--train", "1", "--test", "1", "--seed", "-1"], "--seed"),
        (["--dataset", "svhn", "--out", "x", "--train", "1", "--test", "1"], "invalid choice: 'svhn'"),
    ],
)
def test_cli_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message):
        main(argv)


def test_cli_fake_into_a_file_is_a_data_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="cannot create it"):
        main(["--dataset", "mnist", "--out", str(tmp_path / "file"), "--train", "1", "--test", "1"])


def test_fake_data_is_marked_with_what_wrote_it(tmp_path, cli_exit):
    # Fake images must never pass for real ones: the writer leaves a marker a person and every command can see.
    assert main(["--dataset", "cifar10", "--out", str(tmp_path / "fake"), "--train", "60", "--test", "20"]) == 0
    marker = tmp_path / "fake" / DATASETS["cifar10"].folder / FAKE_MARKER
    assert json.loads(marker.read_text()) == {
        "dataset": "cifar10", "train": 60, "test": 20, "seed": 0, "writer": "search.fake_data"
    }  # fmt: skip
    assert is_fake("cifar10", str(tmp_path / "fake")) and not is_fake("cifar100", str(tmp_path / "fake"))
    code, out, _ = cli_exit(data_main, ["check", "--dataset", "cifar10", "--data-dir", tmp_path / "fake"])
    assert code == 0 and "fake data written by search.fake_data" in out
    # the same files without the marker, as real data would be: nothing says fake
    shutil.copytree(marker.parent, tmp_path / "real" / marker.parent.name, ignore=shutil.ignore_patterns(FAKE_MARKER))
    assert not is_fake("cifar10", str(tmp_path / "real")) and note_if_fake("cifar10", str(tmp_path / "real")) == {}
    code, out, _ = cli_exit(data_main, ["check", "--dataset", "cifar10", "--data-dir", tmp_path / "real"])
    assert code == 0 and "fake data" not in out


def test_real_files_fetched_into_an_emptied_fake_folder_are_not_marked(tmp_path, monkeypatch):
    # Someone deletes the fake files (not the folder) and the loader fetches real ones: the marker goes with them.
    write_fake("fashion_mnist", str(tmp_path / "real-source"), 50, 10)
    debian = tmp_path / "debian"
    debian.mkdir()
    for f in DATASETS["fashion_mnist"].files:  # "real" data, as Debian ships it: gzipped, no marker
        raw = tmp_path / "real-source" / DATASETS["fashion_mnist"].folder / f
        (debian / f"{f}.gz").write_bytes(gzip.compress(raw.read_bytes()))
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", str(debian))
    write_fake("fashion_mnist", str(tmp_path / "data"), 30, 10)
    for f in DATASETS["fashion_mnist"].files:
        (tmp_path / "data" / DATASETS["fashion_mnist"].folder / f).unlink()
    assert is_fake("fashion_mnist", str(tmp_path / "data"))
    assert len(load_arrays("fashion_mnist", str(tmp_path / "data"), download=False)[0]) == 50
    assert not is_fake("fashion_mnist", str(tmp_path / "data"))


def test_train_on_fake_data_says_so_in_its_first_line(fashion_dir, tmp_path, cli_exit):
    argv = ["--model", "vgg7", "--dataset", "fashion_mnist", "--data-dir", fashion_dir, "--epochs", "1",
            "--train-subset", "64", "--val-subset", "32", "--test-subset", "32", "--batch-size", "32",
            "--set", "width1=4", "--set", "width2=8", "--set", "fc1=16"]  # fmt: skip
    code, out, err = cli_exit(train_main, argv)
    assert code == 0, err
    first = out.splitlines()[0]
    assert first == f"note: {fashion_dir} holds fake fashion_mnist data written by search.fake_data, not the real " \
        "fashion_mnist"  # fmt: skip


def test_a_search_on_fake_data_says_so_first_and_tags_its_parent_run(fake_data_dir, sqlite_uri, tmp_path, capsys,
                                                                      local_ray):  # fmt: skip
    # prepare() alone: it prints the search's first lines and creates the parent run, in a second on the test's Ray
    previous = signal.getsignal(signal.SIGTERM)  # prepare() installs its own
    try:
        job = prepare(str(ROOT / "spaces/vgg_cifar10.py"), {"TRAIN_SUBSET": 64}, smoke=True, name="fake", resume=False,
                      storage=str(tmp_path / "runs"), tracking_uri=sqlite_uri, data_dir=str(fake_data_dir),
                      address="", quiet=True)  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, previous)
    end_parent(job.client, job.parent_run_id, "FINISHED")
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"note: {fake_data_dir} holds fake cifar10 data written by search.fake_data, not the real cifar10"
    tags = MlflowClient(sqlite_uri).get_run(job.parent_run_id).data.tags
    assert tags[FAKE_TAG] == "true"
