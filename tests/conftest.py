"""Shared fixtures: small fake datasets in the real on-disk formats, written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.data import DATASETS, write_fake

# Images per fake training set (3 per class for cifar100, 30 for the others) and test set; test_data.py
# checks these sizes.
FAKE_TRAIN, FAKE_TEST = 300, 100


@pytest.fixture(scope="session")
def fake_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with every dataset in DATASETS as fake files (FAKE_TRAIN train, FAKE_TEST test images)."""
    root = tmp_path_factory.mktemp("fake_data")
    for name in DATASETS:
        write_fake(name, str(root), train=FAKE_TRAIN, test=FAKE_TEST)
    return root


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with fake Fashion-MNIST big enough to learn from: 1,000 train (100 per class), 200 test."""
    root = tmp_path_factory.mktemp("fashion")
    write_fake("fashion_mnist", str(root), train=1000, test=200)
    return root
