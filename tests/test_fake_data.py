"""search.fake_data: small learnable datasets in the real on-disk formats, and its command line."""

from __future__ import annotations

import pytest

from search.data import load_arrays
from search.errors import DataError, UsageError
from search.fake_data import main


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
