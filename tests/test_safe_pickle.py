"""The restricted unpickler: CIFAR batches load as plain pickle loads them, planted code is refused and never runs."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest

from search import safe_pickle
from search.errors import DataError


class _SystemPayload:
    """Runs `touch marker` through os.system when plain pickle loads it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


class _PopenPayload(_SystemPayload):
    def __reduce__(self) -> tuple:
        return subprocess.Popen, (["touch", str(self.marker)],)


class _EvalPayload(_SystemPayload):
    def __reduce__(self) -> tuple:
        return builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",)


def plant_payload(path: Path, marker: Path, payload: type = _SystemPayload, protocol: int = 2) -> None:
    """Rewrites the CIFAR batch at `path` with key "x": an object whose unpickling creates `marker`.

    Protocol 2 by default, as the real CIFAR files are; it writes Python 2 names (`__builtin__.eval`).
    """
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    batch["x"] = payload(marker)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


def _batch(n: int = 8) -> dict:
    rng = np.random.default_rng(0)
    return {
        "batch_label": "training batch 1 of 5",
        "labels": rng.integers(0, 10, n).tolist(),
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_cifar_batch_loads_as_plain_pickle_loads_it(tmp_path, protocol):
    path = tmp_path / "data_batch_1"
    batch = _batch()
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    with open(path, "rb") as f:
        plain = pickle.load(f, encoding="latin1")
    for loaded in (safe_pickle.load(path), safe_pickle.load(str(path))):
        assert loaded.keys() == plain.keys() == batch.keys()
        assert loaded["data"].dtype == np.uint8 and loaded["data"].shape == (8, 3072)
        assert np.array_equal(loaded["data"], plain["data"]) and np.array_equal(loaded["data"], batch["data"])
        assert [loaded[k] for k in ("labels", "batch_label", "filenames")] == [
            batch[k] for k in ("labels", "batch_label", "filenames")
        ]
    assert safe_pickle.check(path) is None


def test_the_fake_cifar10_files_all_pass(tmp_path):
    from search.fake_data import write_fake

    write_fake("cifar10", str(tmp_path), train=100, test=20)
    from search.data import DATASETS

    files = [tmp_path / "cifar-10-batches-py" / name for name in DATASETS["cifar10"].files]  # what torchvision reads
    assert {f.name for f in files} >= {"batches.meta", "data_batch_1", "test_batch"}
    for f in files:
        safe_pickle.check(f)


# The refused global as the file spells it: protocols < 3 write Python 2 module names.
_REFUSED = {
    (_SystemPayload, 2): f"{os.name}.system",
    (_SystemPayload, 5): f"{os.name}.system",
    (_PopenPayload, 2): "commands.Popen",
    (_PopenPayload, 5): "subprocess.Popen",
    (_EvalPayload, 2): "__builtin__.eval",
    (_EvalPayload, 5): "builtins.eval",
}


@pytest.mark.parametrize(("payload", "protocol"), list(_REFUSED))
def test_a_planted_payload_is_refused_in_one_line_and_never_runs(tmp_path, payload, protocol):
    refused = _REFUSED[payload, protocol]
    path, marker = tmp_path / "data_batch_1", tmp_path / "pwned"
    path.write_bytes(pickle.dumps(_batch(), protocol=protocol))
    plant_payload(path, marker, payload, protocol)
    for call in (safe_pickle.load, safe_pickle.check):
        with pytest.raises(DataError) as info:
            call(path)
        message = str(info.value)
        assert len(message.splitlines()) == 1, message
        assert message.startswith(f"{path}: refused to unpickle {refused}:"), message
        assert not marker.exists()


def test_plant_payload_really_plants_code(tmp_path):
    """The helper's payload runs under plain pickle: the refusal above is the unpickler's doing."""
    path, marker = tmp_path / "data_batch_1", tmp_path / "pwned"
    path.write_bytes(pickle.dumps(_batch(), protocol=2))
    plant_payload(path, marker)
    with open(path, "rb") as f:
        pickle.load(f, encoding="latin1")
    assert marker.exists()
