"""Issue 22: bad inputs are one line naming the value, exit code 2, and nothing created; a race, a hang or a
non-finite number included. Each command line runs in process through the same `main` as `python -m`."""

from __future__ import annotations

import contextlib
import http.server
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from search import record, submit, tracking
from search.data import clear_cache
from search.data import main as data_main
from search.errors import ConfigError, UsageError
from search.fake_data import main as fake_data_main
from search.fake_data import write_fake
from search.record import SearchState, claim, read_state, write_state
from search.run import main as run_main
from search.run import search
from search.submit import main as submit_main
from search.train import TrainConfig, save_checkpoint, train
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
            with claim(storage, "same", SearchState("space.py", "sha", {})):
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
    storage, state = str(tmp_path / "runs"), SearchState("space.py", "sha", {})
    with pytest.raises(RuntimeError), claim(storage, "x", state):
        raise RuntimeError("the store failed creating the parent run")
    assert not (tmp_path / "runs" / "x").exists()
    with claim(storage, "x", state) as folder:  # the name is free again
        write_state(folder, replace(state, parent_run_id="abc"))
    with pytest.raises(RuntimeError), claim(storage, "y", state):
        raise RuntimeError
    with pytest.raises(UsageError, match="--name x: a search of that name exists"), claim(storage, "x", state):
        pass
    assert read_state(tmp_path / "runs" / "x").parent_run_id == "abc"  # a written claim stays
    assert sorted(p.name for p in (tmp_path / "runs").rglob("*")) == ["search.json", "x"]  # nothing aside


def test_a_claim_killed_before_it_records_its_parent_leaves_whole_state(tmp_path):
    """The claim's search.json is whole from the first moment: a driver killed before recording its parent run left
    it empty, and --resume refused it as unreadable (seen in CI)."""
    code = (
        "import os, signal, sys; from search.record import SearchState, claim\n"
        "with claim(sys.argv[1], 'x', SearchState('space.py', 'sha', {'A': 1}, claim_id='c')):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=60)
    assert killed.returncode == -signal.SIGKILL
    state = read_state(tmp_path / "x")
    assert (state.overrides, state.claim_id, state.parent_run_id) == ({"A": 1}, "c", "")


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
    monkeypatch.setattr(submit, "ANSWER_TIMEOUT_S", 0.3)
    start = time.monotonic()
    code, _, err = cli_exit(submit_main, [*command, "--address", silent_server])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"the Ray dashboard at {silent_server} accepted the connection but did not answer within 0.3 s" in err
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


# Root cause 4: error handlers that missed real failure types (UnicodeDecodeError, MemoryError, a list or a string
# where a dict belongs, a malformed URL, a 404, a torn line). Each is one line, exit 2.

LATIN1 = GOOD.encode() + b"# caf\xe9: not UTF-8\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (LATIN1, "not UTF-8 text (byte 0xe9 at offset"),
        (b"\xff\xfe" + GOOD.encode("utf-16-le"), "not UTF-8 text (byte 0xff at offset 0)"),
    ],
    ids=["latin-1", "utf-16"],
)
def test_a_space_file_that_is_not_utf8_is_one_line(tmp_path, monkeypatch, cli_exit, body, message):
    space = tmp_path / "space.py"
    space.write_bytes(body)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli_exit(run_main, [space])
    assert code == 2 and f"{space}: {message}" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.py"]


CONFIG_CASES = [
    (b'{"lr": "caf\xe9"}', "--config {path}: 'utf-8' codec can't decode byte 0xe9"),
    (b"\xff\xfe{\x00}\x00", "--config {path}: 'utf-8' codec can't decode byte 0xff in position 0"),
    (b'{"model_options": "width1=8"}', "model_options: expected a dict of model options, got 'width1=8'"),
    (b'{"model_options": [["width1", 8]]}', "model_options: expected a dict of model options, got [['width1', 8]]"),
    (b'{"model_options": 3}', "model_options: expected a dict of model options, got 3"),
]
# --config mistakes that were one line already: the sweep keeps them so
CONFIG_SWEEP = [
    (b"[1, 2]", "--config {path}: expected a JSON object of config keys, got [1, 2]"),
    (b"null", "--config {path}: expected a JSON object of config keys, got None"),
    (b'"lr=0.1"', "--config {path}: expected a JSON object of config keys, got 'lr=0.1'"),
    (b"3", "--config {path}: expected a JSON object of config keys, got 3"),
    (b'{"lr": {"peak": 0.1}}', "lr: expected float, got {'peak': 0.1}"),
    (b'{"batch_size": [1]}', "batch_size: expected int, got [1]"),
    (b'{"augment": "maybe"}', "augment: expected bool, got 'maybe'"),
    (b'{"lr": 0.1', "--config {path}: Expecting ',' delimiter"),
    (b"", "--config {path}: Expecting value"),
]


@pytest.mark.parametrize(
    ("body", "message"), CONFIG_CASES, ids=lambda v: v.decode("latin-1")[:30] if isinstance(v, bytes) else ""
)
def test_train_config_of_the_wrong_shape_is_one_line(tmp_path, cli_exit, body, message):
    _refuses_config(tmp_path, cli_exit, body, message)


@pytest.mark.parametrize(
    ("body", "message"), CONFIG_SWEEP, ids=lambda v: v.decode("latin-1")[:30] if isinstance(v, bytes) else ""
)
def test_train_config_sweep(tmp_path, cli_exit, body, message):
    _refuses_config(tmp_path, cli_exit, body, message)


def _refuses_config(tmp_path, cli_exit, body, message):
    config = tmp_path / "config.json"
    config.write_bytes(body)
    out = tmp_path / "out"
    argv = ["--dataset", "cifar10", "--data-dir", tmp_path / "data", "--epochs", "1", "--out", out, "--config", config]
    code, _, err = cli_exit(train_main, argv)
    assert code == 2 and message.replace("{path}", str(config)) in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "data").exists()


def _cifar_batch(path: Path, change) -> None:
    entry = pickle.loads(path.read_bytes(), encoding="latin1")
    change(entry)
    path.write_bytes(pickle.dumps(entry, protocol=2))


def _strings(entry):
    entry["labels"] = [str(label) for label in entry["labels"]]


def _objects(entry):
    entry["data"] = entry["data"].astype(object)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: _cifar_batch(p, _strings), "train images or labels are not numbers"),
        (lambda p: _cifar_batch(p, _objects), "train images or labels are not numbers"),
        (
            lambda p: p.write_bytes(b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b"x" * 9),
            "data_batch_1: its 20 bytes claim more memory than this machine has",
        ),
        (
            lambda p: p.write_bytes(b"\x80\x04\x8d" + (2**40).to_bytes(8, "little") + b"x" * 9),
            "data_batch_1: its 20 bytes claim more memory than this machine has",
        ),
        (
            lambda p: p.write_bytes(b"\x80\x04\x96" + (2**40).to_bytes(8, "little") + b"x" * 9),
            "data_batch_1: its 20 bytes claim more memory than this machine has",
        ),
    ],
    ids=["string-labels", "object-images", "binbytes8-1TiB", "binunicode8-1TiB", "bytearray8-1TiB"],
)
def test_a_cifar_batch_of_the_wrong_kind_is_one_line(tmp_path, cli_exit, damage, message):
    write_fake("cifar10", str(tmp_path), train=30, test=10)
    clear_cache()
    damage(tmp_path / "cifar-10-batches-py" / "data_batch_1")
    code, _, err = cli_exit(data_main, ["check", "--dataset", "cifar10", "--data-dir", tmp_path, "--no-download"])
    clear_cache()
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


BAD_ADDRESSES = [
    ("127.0.0.1:abc", "not an address (Port could not be cast to integer value as 'abc')"),
    ("http://[::1", "not an address (Invalid IPv6 URL)"),
    ("http://127.0.0.1:99999", "not an address (Port out of range 0-65535)"),
    ("http://:8265", "no host"),
    ("ftp://127.0.0.1:8265", "unknown scheme 'ftp://'"),
    ("http://127.0.0.1:0", "no port"),
]


# A submission that passes every local check (each space file load costs seconds: one case each)
SUBMISSION = ["spaces/vgg_fashion_mnist.py", "--smoke", "--storage", "/shared/runs", "--data-dir", "/shared/data",
              "--tracking-uri", "http://127.0.0.1:5000"]  # fmt: skip


@pytest.mark.parametrize("command", [["status", "raysubmit_1"], ["stop", "raysubmit_1"], ["logs", "raysubmit_1"]],
                         ids=lambda c: c[0])  # fmt: skip
@pytest.mark.parametrize(("address", "message"), BAD_ADDRESSES, ids=[a for a, _ in BAD_ADDRESSES])
def test_submit_to_a_malformed_address_is_one_line(monkeypatch, cli_exit, command, address, message):
    monkeypatch.chdir(ROOT)
    code, _, err = cli_exit(submit_main, [*command, "--address", address])
    assert code == 2 and f"--address {address}: {message}" in err and len(err.strip().splitlines()) == 1, err


RUN_ADDRESSES = [
    ("127.0.0.1:abc", "not an address (Port could not be cast to integer value as 'abc')"),
    ("ray://[::1", "not an address (Invalid IPv6 URL)"),
    ("http://[::1", "not an address (Invalid IPv6 URL)"),
    ("ray://127.0.0.1:70000", "not an address (Port out of range 0-65535)"),
    ("http://127.0.0.1:8265", "unknown scheme 'http://'"),
    ("ray://:10001", "no host"),
]


@pytest.mark.parametrize(("address", "message"), RUN_ADDRESSES, ids=[a for a, _ in RUN_ADDRESSES])
def test_search_with_a_malformed_address_is_one_line_before_anything_exists(tmp_path, monkeypatch, cli_exit, address,
                                                                             message):  # fmt: skip
    space = write(tmp_path, GOOD)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli_exit(run_main, [space, "--address", address])
    assert code == 2 and f"--address {address}: {message}" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.py"]


@pytest.fixture
def http_404():
    """A plain HTTP server that answers every request 404, where a Ray dashboard should be."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(404)
            self.end_headers()

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)  # shuts down in 0.05 s
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("command", [["status", "raysubmit_1"], ["stop", "raysubmit_1"], ["logs", "raysubmit_1"],
                                     ["logs", "raysubmit_1", "--follow"], SUBMISSION],
                         ids=lambda c: " ".join(c[:1] + c[2:]))  # fmt: skip
def test_submit_to_a_web_server_that_is_no_dashboard_is_one_line(http_404, monkeypatch, cli_exit, command):
    monkeypatch.chdir(ROOT)
    code, _, err = cli_exit(submit_main, [*command, "--address", http_404])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{http_404} answers HTTP but has no /api/version (404): not a Ray dashboard" in err


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"epoch": 1, "val_acc": 0.5}', '{"epoch": 2, "val_a'], "result.json:2: not a JSON line"),
        (['{"epoch": 1, "val_acc": 0.5}', "\x00\x00\x00"], "result.json:2: not a JSON line"),
        (['{"epoch": 1', '{"epoch": 2, "val_acc": 0.5}'], "result.json:1: not a JSON line"),
        (["[1, 2]"], "result.json:1: expected a JSON object of one epoch's metrics, got [1, 2]"),
    ],
    ids=["torn-last", "zeros-last", "torn-first", "a-list"],
)
def test_a_torn_line_in_a_trials_results_is_one_line(tmp_path, lines, message):
    """The sync reads each trial's result.json; a write cut short by a kill or a full disk leaves a torn line."""
    (tmp_path / "trial").mkdir()
    (tmp_path / "trial" / "result.json").write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match=re.escape(message)) as info:
        record.results(tmp_path, "trial")
    assert len(str(info.value).splitlines()) == 1


# Root cause 5: a checkpoint was checked for its model and dataset only. A resume needs the same optimizer and
# scheduler state, the same schedule length (onecycle fixes its steps at the start), and a dict of a checkpoint.


@pytest.fixture(scope="module")
def adam_checkpoint(tmp_path_factory) -> Path:
    """A finished 1-epoch adam + onecycle checkpoint of vgg7 on fake CIFAR-10, as `search.train --out` writes it."""
    root = tmp_path_factory.mktemp("adam")
    write_fake("cifar10", str(root / "data"), train=40, test=10)
    clear_cache()
    config = TrainConfig(dataset="cifar10", data_dir=str(root / "data"), optimizer="adam", epochs=1, batch_size=16,
                         model_options={"width1": 4, "width2": 4, "fc1": 8})  # fmt: skip
    train(config, on_epoch=lambda _, state: save_checkpoint(root / "out" / "checkpoint.pt", state))
    clear_cache()
    return root


SMALL = ["--set", "width1=4", "--set", "width2=4", "--set", "fc1=8"]


def _edited(root: Path, tmp_path: Path, change) -> Path:
    state = torch.load(root / "out" / "checkpoint.pt", weights_only=True)
    path = tmp_path / "checkpoint.pt"
    torch.save(change(state), path)
    return path


RESUME_CASES = [
    (["--optimizer", "sgd"], None, "checkpoint is for optimizer 'adam', not 'sgd'"),
    (["--optimizer", "adamw"], None, "checkpoint is for optimizer 'adam', not 'adamw'"),
    (["--epochs", "2"], None, "checkpoint is for epochs 1, not 2"),
    (["--scheduler", "cosine"], None, "checkpoint is for scheduler 'onecycle', not 'cosine'"),
    (["--batch-size", "8"], None, "checkpoint is for batch_size 16, not 8"),
    (["--train-subset", "20"], None, "checkpoint is for train_subset 0, not 20"),
    (["--lr", "0.05"], None, "checkpoint is for lr 0.1, not 0.05"),  # the optimizer's state brings back 0.1
    (["--weight-decay", "0"], None, "checkpoint is for weight_decay 0.0005, not 0.0"),
    ([], lambda s: 7, "not a checkpoint of this trainer (it holds a int)"),
    ([], lambda s: [s], "not a checkpoint of this trainer (it holds a list)"),
    ([], lambda s: {**s, "config": "vgg7"}, "not a checkpoint of this trainer (config is str)"),
    ([], lambda s: {**s, "history": {}}, "not a checkpoint of this trainer (history is dict)"),
    ([], lambda s: {**s, "epoch": "1"}, "not a checkpoint of this trainer (epoch is str)"),
    ([], lambda s: {**s, "model": []}, "not a checkpoint of this trainer (model is list)"),
    ([], lambda s: {**s, "optimizer": None}, "not a checkpoint of this trainer (optimizer is NoneType)"),
    ([], lambda s: {**s, "rng": "seed"}, "not a checkpoint of this trainer (rng is str)"),
    ([], lambda s: {**s, "history": "abc"}, "not a checkpoint of this trainer (history is str)"),
    ([], lambda s: {**s, "epoch": 3}, "checkpoint is at epoch 3, past epochs=1"),
]


@pytest.mark.parametrize(("args", "change", "message"), RESUME_CASES, ids=[m[:40] for _, _, m in RESUME_CASES])
def test_resuming_a_checkpoint_that_does_not_fit_is_one_line(adam_checkpoint, tmp_path, cli_exit, args, change,
                                                             message):  # fmt: skip
    path = _edited(adam_checkpoint, tmp_path, change) if change else adam_checkpoint / "out" / "checkpoint.pt"
    base = ["--dataset", "cifar10", "--data-dir", adam_checkpoint / "data", "--optimizer", "adam", "--epochs", "1",
            "--batch-size", "16", *SMALL, "--resume", path]  # fmt: skip
    code, _, err = cli_exit(train_main, [*base, *args])
    assert code == 2 and f"{path}: {message}" in err and len(err.strip().splitlines()) == 1, err


# Root cause 7: messages that misled.


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "SPACE['momentum'] = tune.grid_search([0.8, 0.9])",
            "SPACE['momentum']: tune.grid_search is not supported: TPE samples a space, it does not walk a grid; use "
            "tune.choice([0.8, 0.9])",
        ),
        (
            "import numpy as np\nSPACE['momentum'] = np.linspace(0.5, 0.9, 50)",
            "SPACE['momentum']: expected a ray.tune sampler or a constant (a string or a number), got ndarray array([",
        ),
        (
            "SPACE['momentum'] = [0.8, 0.9]",
            "SPACE['momentum']: expected a ray.tune sampler or a constant (a string or a number), got list [0.8, 0.9]",
        ),
        (
            "SPACE['momentum'] = None",
            "SPACE['momentum']: expected a ray.tune sampler or a constant (a string or a number), got NoneType None",
        ),
        ("TIME_BUDGET = 3600", "TIME_BUDGET=3600: a duration is a string: TIME_BUDGET = '1h'"),
        ("TIME_BUDGET = 5400", "TIME_BUDGET=5400: a duration is a string: TIME_BUDGET = '90m'"),
        ("TIME_BUDGET = 45.5", "TIME_BUDGET=45.5: a duration is a string: TIME_BUDGET = '45.5s'"),
        ("import sys\nsys.exit(0)", "the file calls sys.exit(0); a space file only sets values"),
        ("raise SystemExit('done')", "the file calls sys.exit('done'); a space file only sets values"),
        ("import numpy as np\nFIXED = {'momentum': np.zeros((10, 10))}", "momentum: expected float, got array([["),
    ],
    ids=["grid_search", "numpy", "list", "None", "3600", "5400", "45.5", "sys.exit", "SystemExit", "fixed-numpy"],
)
def test_a_space_file_mistake_says_what_to_write(tmp_path, monkeypatch, cli_exit, setting, message):
    space = write(tmp_path, GOOD + setting + "\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = cli_exit(run_main, [space])
    assert code == 2 and f"{space}: " in err and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.py"]


@pytest.mark.parametrize(
    ("uri", "message", "absent"),
    [
        ("foo://bar", "unknown scheme 'foo://'; use sqlite:///PATH/mlflow.db", "registry"),
        ("s3://bucket/mlflow", "unknown scheme 's3://'", "registry"),
        ("file://{tmp}/mlruns", "set `MLFLOW_ALLOW_FILE_STORE=true` to opt out of this exception", "\x00"),
    ],
    ids=["foo", "s3", "file"],
)
def test_a_tracking_store_mlflow_refuses_is_named_with_mlflows_own_advice(tmp_path, monkeypatch, fake_data_dir,
                                                                           cli_exit, uri, message, absent):  # fmt: skip
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    space = write(tmp_path, GOOD)
    monkeypatch.chdir(tmp_path)
    uri = uri.format(tmp=tmp_path)
    code, _, err = cli_exit(run_main, [space, "--tracking-uri", uri, "--data-dir", fake_data_dir])
    assert code == 2 and message in err and absent not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_planted_fashion_mnist_processed_file_is_blamed_not_the_raw_folder(tmp_path, cli_exit):
    """torchvision reads FashionMNIST/processed/{training,test}.pt instead of raw/ when both exist."""
    write_fake("fashion_mnist", str(tmp_path), train=30, test=10)
    processed = tmp_path / "FashionMNIST" / "processed"
    processed.mkdir()
    for name in ("training.pt", "test.pt"):
        (processed / name).write_bytes(b"not a tensor file")
    clear_cache()
    code, _, err = cli_exit(data_main, ["check", "--dataset", "fashion_mnist", "--data-dir", tmp_path, "--no-download"])
    clear_cache()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{processed}: torchvision reads training.pt and test.pt here instead of the raw folder" in err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"storage": None}, "search(storage=None): expected str"),
        ({"num_samples": "3"}, "search(num_samples='3'): expected int | None"),
        ({"smoke": "yes"}, "search(smoke='yes'): expected bool"),
        ({"sets": ["lr=0.1"]}, "search(sets=['lr=0.1']): expected dict | None"),
        ({"cpus_per_trial": "2"}, "search(cpus_per_trial='2'): expected float | None"),
        ({"final_top_k": 1.5}, "search(final_top_k=1.5): expected int"),
        ({"name": 7}, "search(name=7): expected str"),
        ({"tracking_uri": None}, "search(tracking_uri=None): expected str"),
        ({"address": "127.0.0.1:abc"}, "--address 127.0.0.1:abc: not an address"),
        ({"resume": 1}, "search(resume=1): expected bool"),
    ],
    ids=str,
)
def test_the_notebook_search_names_an_argument_of_the_wrong_type(tmp_path, monkeypatch, kwargs, message):
    space = write(tmp_path, GOOD)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=re.escape(message)):
        search(space, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.py"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"epochs": "2"}, "epochs: expected int, got '2'"),
        ({"lr": "0.1"}, "lr: expected float, got '0.1'"),
        ({"batch_size": 64.0}, "batch_size: expected int, got 64.0"),
        ({"epochs": True}, "epochs: expected int, got True"),
        ({"model": None}, "model: expected str, got None"),
        ({"augment": "no"}, "augment: expected bool or None, got 'no'"),
        ({"model_options": "width1=8"}, "model_options: expected dict, got 'width1=8'"),
        ({"milestones": [50, 75]}, "milestones: expected str, got [50, 75]"),
    ],
    ids=str,
)
def test_the_notebook_trainconfig_names_a_value_of_the_wrong_type(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig(dataset="cifar10", **values).validate()
    with pytest.raises(ConfigError, match=re.escape(message)):  # train() validates first: no data is read
        train(TrainConfig(dataset="cifar10", data_dir="/nonexistent", **values))


@pytest.mark.parametrize("values", [["lr", 0.1], "lr=0.1", None, 3], ids=str)
def test_train_of_a_config_that_is_no_dict_is_one_line(values):
    with pytest.raises(ConfigError, match="config: expected a dict of config keys"):
        TrainConfig.from_dict(values)


# The sweep's other command lines: each bad input one line, exit 2, nothing written. "{tmp}" is the test's folder,
# which holds space.py (a good space file), afile (a plain file) and latin1.json (not UTF-8).
SWEEP = [
    ("fake_data", ["--dataset", "foo", "--out", "{tmp}/d", "--train", "1", "--test", "1"], "invalid choice: 'foo'"),
    ("fake_data", ["--dataset", "cifar10", "--out", "{tmp}/d", "--train", "0", "--test", "1"], "--train: must be"),
    ("fake_data", ["--dataset", "cifar10", "--out", "{tmp}/d", "--train", "x", "--test", "1"], "got 'x'"),
    ("fake_data", ["--dataset", "cifar10", "--out", "{tmp}/d", "--train", "1", "--test", "-1"], "--test: must be"),
    (
        "fake_data",
        ["--dataset", "cifar10", "--out", "{tmp}/d", "--train", "1", "--test", "1", "--seed", "-1"],
        "--seed: must be",
    ),
    ("fake_data", ["--dataset", "cifar10", "--train", "1", "--test", "1"], "the following arguments are required"),
    ("fake_data", ["--dataset", "cifar10", "--out", "{tmp}/afile", "--train", "1", "--test", "1"], "afile"),
    ("data", ["check", "--dataset", "foo"], "invalid choice: 'foo'"),
    ("data", ["check", "--dataset", "cifar10", "--data-dir", "{tmp}/afile"], "is a file, not a folder"),
    ("data", ["check", "--dataset", "mnist", "--data-dir", "{tmp}/d", "--no-download"], "not found in"),
    ("data", [], "the following arguments are required"),
    ("data", ["fetch", "--dataset", "cifar10"], "invalid choice: 'fetch'"),
    ("tracking", ["sync", "{tmp}/nothing"], "not a search folder"),
    ("tracking", ["sync", "{tmp}"], "not a search folder"),
    ("tracking", ["sync", "{tmp}/afile"], "afile"),
    ("tracking", [], "the following arguments are required"),
    ("tracking", ["sync"], "the following arguments are required"),
    ("run", ["{tmp}/missing.py"], "no such space file"),
    ("run", ["{tmp}/afile"], "a space file is a Python file ending in .py"),
    ("run", ["{tmp}/space.py", "--num-samples", "0"], "--num-samples: must be an integer >= 1, got '0'"),
    ("run", ["{tmp}/space.py", "--max-epochs", "two"], "--max-epochs: must be an integer >= 1, got 'two'"),
    ("run", ["{tmp}/space.py", "--set", "lr"], "--set 'lr': expected key=value"),
    ("run", ["{tmp}/space.py", "--set", "=1"], "--set '=1': expected key=value"),
    ("run", ["{tmp}/space.py", "--set", "NUM_TRIALS=3"], "--set NUM_TRIALS: unknown setting"),
    ("run", ["{tmp}/space.py", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ("run", ["{tmp}/space.py", "--storage", "{tmp}/afile/runs"], "cannot write there"),
    ("run", ["{tmp}/space.py", "--time-budget", "soon"], "expected a duration like 2h"),
    ("run", ["{tmp}/space.py", "--time-budget=-1h"], "expected a duration like 2h"),
    ("run", ["{tmp}/space.py", "--resume"], "--resume"),
    ("run", ["{tmp}/space.py", "--final-top-k", "-1"], "--final-top-k: must be an integer >= 0"),
    ("run", ["{tmp}/space.py", "--final-top-k", "2", "--final-front"], "retrain one or the other"),
    ("run", ["{tmp}/space.py", "--set", "optimizer='lion'"], "optimizer: unknown 'lion'"),
    ("run", ["{tmp}/space.py", "--set", "DATASET='imagenet'"], "DATASET='imagenet': unknown dataset"),
    ("run", ["{tmp}/space.py", "--set", "MODEL='vgg99'"], "MODEL='vgg99': unknown model"),
    ("run", ["{tmp}/space.py", "--set", "NUM_SAMPLES='many'"], "NUM_SAMPLES must be int"),
    ("train", ["--epochs", "0"], "epochs: must be at least 1, got 0"),
    ("train", ["--optimizer", "lion"], "optimizer: unknown 'lion'"),
    ("train", ["--scheduler", "warm"], "scheduler: unknown 'warm'"),
    ("train", ["--milestones", "a,b"], "milestones: expected comma-separated epochs"),
    ("train", ["--batch-size", "x"], "batch_size: expected int, got 'x'"),
    ("train", ["--config", "{tmp}/missing.json"], "--config {tmp}/missing.json: [Errno 2]"),
    ("train", ["--config", "{tmp}/latin1.json"], "'utf-8' codec can't decode"),
    ("train", ["--resume", "{tmp}/missing.pt"], "missing.pt: no such checkpoint"),
    ("train", ["--resume", "{tmp}/afile"], "afile: not a readable checkpoint"),
    ("train", ["--model", "vgg99"], "vgg99"),
    ("train", ["--set", "dropout=2"], "dropout"),
]
MAINS = {"fake_data": fake_data_main, "data": data_main, "tracking": tracking.main, "run": run_main,
         "train": train_main}  # fmt: skip


@pytest.mark.parametrize(("command", "argv", "message"), SWEEP, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_every_command_line_refuses_a_bad_input_in_one_line(tmp_path, monkeypatch, cli_exit, command, argv, message):
    write(tmp_path, GOOD)
    (tmp_path / "afile").write_text("not a folder, a checkpoint or a space file\n")
    (tmp_path / "latin1.json").write_bytes(b'{"lr": "\xe9"}')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEARCH_DATA_DIR", str(tmp_path / "d"))
    before = sorted(p.name for p in tmp_path.iterdir())
    if command == "train":
        argv = (
            ["--dataset", "cifar10", "--epochs", "1", *argv]
            if "--epochs" not in argv
            else ["--dataset", "cifar10", *argv]
        )
    code, _, err = cli_exit(MAINS[command], [a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2 and message.replace("{tmp}", str(tmp_path)) in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.slow
def test_a_sample_of_the_sweep_as_real_processes(tmp_path):
    """The fast tier runs each `main` in process; here a sample runs as `python -m`, as a user types it."""
    (tmp_path / "space.py").write_bytes(LATIN1)
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "config.json").write_bytes(b'{"model_options": "width1=8"}')
    torch.save(7, tmp_path / "int.pt")
    write_fake("cifar10", str(tmp_path / "data"), train=30, test=10)
    (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1").write_bytes(
        b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b"x" * 9
    )
    train_args = ["--dataset", "cifar10", "--data-dir", "data", "--epochs", "1"]
    cases = [
        ("run", ["space.py"], "space.py: not UTF-8 text (byte 0xe9"),
        ("run", ["good.py", "--address", "127.0.0.1:abc"], "--address 127.0.0.1:abc: not an address"),
        ("train", [*train_args, "--config", "config.json"], "model_options: expected a dict of model options"),
        ("train", [*train_args, "--resume", "int.pt"], "int.pt: not a checkpoint of this trainer (it holds a int)"),
        ("data", ["check", "--dataset", "cifar10", "--data-dir", "data"], "claim more memory than this machine has"),
        ("submit", ["status", "x", "--address", "http://[::1"], "--address http://[::1: not an address"),
    ]
    for module, argv, message in cases:
        done = subprocess.run([sys.executable, "-m", f"search.{module}", *argv], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, (argv, done.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "data", "good.py", "int.pt", "space.py"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flag", "message"),
    [("--cpus-per-trial=100", "CPUS_PER_TRIAL=100: the Ray cluster has "),
     ("--gpus-per-trial=1", "GPUS_PER_TRIAL=1")],
    ids=["cpus", "gpus"],
)  # fmt: skip
def test_a_trial_larger_than_the_cluster_is_refused_before_the_search_exists(flag, message, smoke_data_dir, tmp_path):
    """The check ran once the search had its search.json and a parent run (left FAILED): it runs before them. And the
    line stays one line (root cause 8), without --quiet, on a machine that once joined a token cluster: Ray's
    "Started a local Ray instance" and its ~/.ray/auth_token warnings came first."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("a" * 64)  # a remote cluster's token
    got = subprocess.run(
        [sys.executable, "-m", "search.run", str(ROOT / "spaces/vgg_fashion_mnist.py"), "--smoke", flag,
         "--name", "big", "--storage", str(tmp_path / "runs"), "--tracking-uri", uri, "--data-dir",
         str(smoke_data_dir)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "HOME": str(home)},
    )  # fmt: skip
    lines = got.stderr.strip().splitlines()
    assert got.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), got.stderr[-2000:]
    assert not (tmp_path / "runs" / "big").exists()
    assert MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()]) == []
