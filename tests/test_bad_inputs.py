"""Issue 22: bad inputs are one line naming the value, exit code 2, and nothing created; a race, a hang or a
non-finite number included. Each command line runs in process through the same `main` as `python -m`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from search import submit
from search.errors import ConfigError, UsageError
from search.run import main as run_main
from search.state import SearchState, claim, read_state, write_state
from search.submit import main as submit_main
from search.train import TrainConfig
from search.train import main as train_main

ROOT = Path(__file__).parents[1]
GOOD = """
from ray import tune
DATASET = "cifar10"
MODEL = "vgg7"
MAX_EPOCHS = 4
SPACE = {"lr": tune.loguniform(1e-3, 0.1), "optimizer": tune.choice(["sgd", "adamw"])}
"""

# (search.run arguments after the space file, what the one line must say)
SEARCH_CASES = [
    # non-finite numbers (root cause 2): nan < 0 is false, so range checks let them through
    (["--cpus-per-trial", "nan"], "CPUS_PER_TRIAL=nan: must be a finite number"),
    (["--cpus-per-trial", "inf"], "CPUS_PER_TRIAL=inf: must be a finite number"),
    (["--gpus-per-trial", "nan"], "GPUS_PER_TRIAL=nan: must be a finite number"),
    (["--gpus-per-trial=-inf"], "GPUS_PER_TRIAL=-inf: must be a finite number"),
    (["--set", "MAX_MACS=1e999"], "MAX_MACS=inf: must be a finite number"),
    (["--set", "AUDIT_FRACTION=1e999"], "AUDIT_FRACTION=inf: must be a finite number"),
    (["--set", "MIN_DELTA=-1e999"], "MIN_DELTA=-inf: must be a finite number"),
    (["--set", "VAL_FRACTION=1e999"], "VAL_FRACTION=inf: must be a finite number"),
    (["--set", "lr=1e999"], "lr: must be a finite number, got inf"),
    (["--set", "weight_decay=1e999"], "weight_decay: must be a finite number, got inf"),
    (["--set", "momentum=1e999"], "momentum: must be a finite number, got inf"),
    (["--set", "grad_clip=-1e999"], "grad_clip: must be a finite number, got -inf"),
    (["--set", "gamma=1e999"], "gamma: must be a finite number, got inf"),
    # values never range-checked (root cause 3)
    (["--set", "SEED=-1"], "seed: must be between 0 and 2**32 - 1, got -1"),
    (["--set", "SEED=4294967296"], "seed: must be between 0 and 2**32 - 1, got 4294967296"),
    (["--set", "label_smoothing=2.0"], "label_smoothing: must be between 0 and 1, got 2.0"),
    (["--set", "label_smoothing=-0.1"], "label_smoothing: must be between 0 and 1, got -0.1"),
    (["--set", "plateau_patience=-1"], "plateau_patience: must be >= 0, got -1"),
    (["--set", "momentum=1.5"], "momentum: must be in [0, 1), got 1.5"),
    (["--set", "device=foo"], "device: unknown 'foo'"),
    (["--set", "device=meta"], "device: unknown 'meta'"),
    (["--set", "width1=1000000000"], "vgg7 with width1=1000000000: cannot be built"),
    (["--set", "METRIC='val_loss'", "--set", "MODE='max'"], "MODE='max': val_loss is better lower"),
    (["--set", "METRIC='train_acc'", "--set", "MODE='min'"], "MODE='min': train_acc is better higher"),
]


def write(tmp_path: Path, body: str, name: str = "space.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize(("args", "message"), SEARCH_CASES, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_search_refuses_a_bad_number_in_one_line_before_anything_exists(tmp_path, monkeypatch, cli_exit, args, message):
    space = write(tmp_path, GOOD)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli_exit(run_main, [space, *args])
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.py"]  # no runs/, mlflow.db, mlruns/


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("MIN_DELTA = float('nan')", "MIN_DELTA=nan: must be a finite number"),
        ("MAX_MACS = float('inf')", "MAX_MACS=inf: must be a finite number"),
        ("FIXED = {'weight_decay': float('nan')}", "weight_decay: must be a finite number, got nan"),
        ("SPACE['lr'] = tune.choice([0.01, float('nan')])", "lr: must be a finite number, got nan"),
        ("METRIC = 'val_loss'\nMODE = 'max'", "MODE='max': val_loss is better lower"),
        ("SEED = -5", "seed: must be between 0 and 2**32 - 1, got -5"),
    ],
)
def test_a_space_file_with_a_bad_number_is_one_line(tmp_path, monkeypatch, cli_exit, setting, message):
    space = write(tmp_path, GOOD + setting + "\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = cli_exit(run_main, [space])
    assert code == 2, err
    assert message in err and str(space) in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.py"]


TRAIN_CASES = [
    (["--weight-decay", "nan"], "weight_decay: must be a finite number, got nan"),
    (["--grad-clip", "nan"], "grad_clip: must be a finite number, got nan"),
    (["--momentum", "inf"], "momentum: must be a finite number, got inf"),
    (["--lr", "nan"], "lr: must be a finite number, got nan"),
    (["--lr", "inf"], "lr: must be a finite number, got inf"),
    (["--gamma", "nan"], "gamma: must be a finite number, got nan"),
    (["--label-smoothing", "nan"], "label_smoothing: must be a finite number, got nan"),
    (["--val-fraction", "nan"], "val_fraction: must be a finite number, got nan"),
    (["--label-smoothing", "2.0"], "label_smoothing: must be between 0 and 1, got 2.0"),
    (["--momentum", "1"], "momentum: must be in [0, 1), got 1.0"),
    (["--plateau-patience", "-1"], "plateau_patience: must be >= 0, got -1"),
    (["--seed", "-1"], "seed: must be between 0 and 2**32 - 1, got -1"),
    (["--seed", "99999999999999999999"], "seed: must be between 0 and 2**32 - 1, got 99999999999999999999"),
    (["--device", "foo"], "device: unknown 'foo'"),
    (["--device", "cuda:99"], "device: 'cuda:99', but torch sees"),
    (["--set", "width1=1000000000"], "vgg7 with width1=1000000000: cannot be built"),
]
if not torch.cuda.is_available():
    TRAIN_CASES.append((["--device", "cuda"], "device: 'cuda', but torch sees 0 CUDA devices here"))


@pytest.mark.parametrize(("args", "message"), TRAIN_CASES, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_train_refuses_a_bad_number_in_one_line_before_anything_exists(tmp_path, cli_exit, args, message):
    out = tmp_path / "out"
    argv = ["--dataset", "cifar10", "--data-dir", tmp_path / "data", "--epochs", "1", "--out", out, *args]
    code, _, err = cli_exit(train_main, argv)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "values",
    [
        {"weight_decay": float("nan")},
        {"grad_clip": float("nan")},
        {"momentum": float("inf")},
        {"seed": 2**40},
        {"label_smoothing": 1.5},
        {"device": "tpu"},
    ],  # fmt: skip
    ids=str,
)
def test_the_notebook_trainconfig_names_a_bad_value(values):
    (key,) = values
    with pytest.raises(ConfigError, match=f"^{key}: "):
        TrainConfig(dataset="cifar10", **values).validate()


# Two searches started together with one --name: only one may claim it.


def test_of_two_claims_of_one_name_exactly_one_wins(tmp_path):
    storage, results, barrier = str(tmp_path / "runs"), [], threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        try:
            with claim(storage, "same"):
                time.sleep(0.2)  # while the winner creates its parent run, the others try
                results.append("won")
        except UsageError as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("won") == 1
    assert {r for r in results if r != "won"} == {
        f"--name same: a search of that name exists in {storage}; use --resume or a new name"
    }


def test_a_claim_whose_search_fails_before_its_state_is_written_is_released(tmp_path):
    storage = str(tmp_path / "runs")
    with pytest.raises(RuntimeError), claim(storage, "x"):
        raise RuntimeError("the store failed creating the parent run")
    assert not (tmp_path / "runs" / "x").exists()
    with claim(storage, "x") as path:  # the name is free again
        write_state(path.parent, SearchState("space.py", "sha", {}))
    with pytest.raises(RuntimeError), claim(storage, "y"):
        raise RuntimeError
    with pytest.raises(UsageError, match="--name x: a search of that name exists"), claim(storage, "x"):
        pass
    assert read_state(tmp_path / "runs" / "x").space_path == "space.py"  # a written claim stays


# search.submit --address at something that accepts the connection and never answers


@pytest.fixture
def silent_server():
    """A TCP server that accepts every connection and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted, stop = [], threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


@pytest.mark.parametrize("command", [["status", "raysubmit_1"], ["stop", "raysubmit_1"], ["logs", "raysubmit_1"]])
def test_submit_to_a_dashboard_that_never_answers_is_one_line_in_seconds(silent_server, monkeypatch, cli_exit,
                                                                        command):  # fmt: skip
    """Issue 22: the Jobs SDK's requests have no timeout (still waiting at 120 s). The wait is shortened here from
    ANSWER_TIMEOUT_S (10 s) so the test stays fast; the code path is the user's."""
    monkeypatch.setattr(submit, "ANSWER_TIMEOUT_S", 1)
    start = time.monotonic()
    code, _, err = cli_exit(submit_main, [*command, "--address", silent_server])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"the Ray dashboard at {silent_server} accepted the connection but did not answer within 1 s" in err
    assert time.monotonic() - start < 5


@pytest.mark.slow
def test_two_searches_started_together_with_one_name_make_one_search(fashion_dir, tmp_path):
    """Issue 22: both passed the "a search of that name exists" check, shared runs/NAME and made two parents.
    Two real `python -m search.run` processes, each with its private Ray: one claims the name, the other stops
    with one line and creates nothing."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "search.run", str(ROOT / "spaces/vgg_fashion_mnist.py"), "--smoke", "--quiet",
           "--name", "same", "--storage", str(tmp_path / "runs"), "--tracking-uri", uri, "--data-dir",
           str(fashion_dir), "--set", "NUM_SAMPLES=1", "--set", "MAX_EPOCHS=1"]  # fmt: skip
    drivers = [
        subprocess.Popen(
            cmd, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )  # fmt: skip
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 300
        while all(d.poll() is None for d in drivers) and time.monotonic() < deadline:
            time.sleep(0.5)
        (loser,) = [d for d in drivers if d.poll() is not None]
        err = loser.stderr.read()
        # Ray's own "Started a local Ray instance" line may come first (issue 22, root cause 8: not this fix's)
        errors = [line for line in err.splitlines() if not line.startswith(tuple("0123456789"))]
        assert loser.returncode == 2 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
        assert errors[0].startswith("error: --name same: a search of that name exists")
    finally:
        for d in drivers:
            if d.poll() is None:
                os.killpg(d.pid, signal.SIGKILL)  # the winner and the local Ray it started
            d.wait()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("vgg_fashion_mnist")
    parents = client.search_runs([experiment.experiment_id], "attributes.run_name = 'same'")
    assert len(parents) == 1
    assert read_state(tmp_path / "runs" / "same").parent_run_id == parents[0].info.run_id
