"""A search as a user starts it: a fresh folder, fake data written into ./data, `python -m search.run` with the
defaults (no --data-dir, no --storage, no --tracking-uri), and the model URI its summary prints, loaded in a new
process the way a person would load it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# a whole search as a real process: minutes; its tests share it, so they run on one xdist worker (a module
# fixture is made once per worker)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("user_path")]

ROOT = Path(__file__).resolve().parents[1]
REMOTE_TOKEN = "f" * 64  # a remote cluster's, in ~/.ray/auth_token
GONE = "127.0.0.1:9"  # the address of that cluster, long gone, still exported as RAY_ADDRESS


def user_env(**extra: str) -> dict[str, str]:
    """A user's shell: no Ray, MLflow or search settings that would point the command elsewhere."""
    drop = ("RAY_", "MLFLOW_", "SEARCH_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONPATH"] = str(ROOT)  # as an editable install: the commands import this checkout
    return {**env, **extra}


def python(*args: str, cwd: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def user_search(tmp_path_factory):
    """One smoke search of spaces/vgg_cifar10.py started in a fresh folder with every default, on a machine that
    once joined a token-auth cluster (its token in ~/.ray/auth_token, its address in RAY_ADDRESS); Ray's session
    folder (and with it each trial's working folder) in a temporary folder of its own."""
    folder = tmp_path_factory.mktemp("user")
    ray_tmp = Path(tempfile.mkdtemp(prefix="rayu", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    home = tmp_path_factory.mktemp("home")  # a machine that once joined a token-auth cluster
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(REMOTE_TOKEN)
    env = user_env(RAY_TMPDIR=str(ray_tmp), HOME=str(home), RAY_ADDRESS=GONE)
    try:
        fake = python("-m", "search.fake_data", "--dataset", "cifar10", "--out", "data", "--train", "600",
                      "--test", "100", cwd=folder, env=env)  # fmt: skip
        assert fake.returncode == 0, fake.stderr
        result = python("-m", "search.run", str(ROOT / "spaces/vgg_cifar10.py"), "--smoke", "--quiet",
                        cwd=folder, env=env)  # fmt: skip
        working_dirs = sorted(d for w in ray_tmp.rglob("working_dirs") for d in w.iterdir())
        yield folder, result, working_dirs, home
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_default_data_dir_is_the_folder_the_search_started_in(user_search):
    folder, result, working_dirs, _ = user_search
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert working_dirs, "no trial working folders found under RAY_TMPDIR"
    assert not [d for d in working_dirs if (d / "data").exists()], "a trial looked for ./data in its own folder"
    assert (folder / "runs").is_dir() and (folder / "mlflow.db").is_file()  # the other defaults land here too


def test_a_private_ray_leaves_a_remote_clusters_token_alone(user_search):
    _, result, _, home = user_search
    assert result.returncode == 0, result.stderr[-6000:]
    assert "Token authentication" not in result.stderr and "auth_token" not in result.stderr, result.stderr[-3000:]
    assert (home / ".ray" / "auth_token").read_text() == REMOTE_TOKEN
    assert [p.name for p in (home / ".ray").iterdir()] == ["auth_token"]


def test_without_address_a_private_ray_starts_whatever_the_machine_points_at(user_search):
    """A machine that ran Ray before points at a cluster that is gone: joining it hung for minutes."""
    _, result, _, _ = user_search
    assert result.returncode == 0, result.stderr[-6000:]
    assert "best trial" in result.stdout and GONE not in result.stderr, result.stderr[-3000:]


def summary_line(stdout: str, label: str) -> str:
    found = re.findall(rf"^{label}\s+(.+)$", stdout, re.MULTILINE)
    assert found, stdout[-3000:]
    return found[-1].strip()


LOAD = """
import json, sys
from pathlib import Path
import mlflow.pytorch, torch
from search.train import load_data, model_from_checkpoint, test_batches
logged = mlflow.pytorch.load_model(sys.argv[1])  # a torch.export program, exported in eval mode
saved, config = model_from_checkpoint(Path(sys.argv[2]) / "checkpoint.pt")
saved.eval()
right, seen, same = 0, 0, True
with torch.no_grad():
    for images, labels in test_batches(config, load_data(config)):
        logits = logged(images)
        same = same and torch.allclose(logits, saved(images), atol=1e-4)
        right, seen = right + (logits.argmax(1) == labels).sum().item(), seen + len(labels)
print(json.dumps({"same_outputs": same, "test_acc": right / seen}))
"""


def test_printed_model_uri_loads_in_a_new_process(user_search):
    folder, result, _, _ = user_search
    assert result.returncode == 0, result.stderr[-6000:]
    uri, checkpoint = summary_line(result.stdout, "model"), summary_line(result.stdout, "checkpoint")
    test_acc = float(re.search(r"test_acc (\S+)", summary_line(result.stdout, "best trial"))[1])
    loaded = python("-c", LOAD, uri, checkpoint, cwd=folder, env=user_env(), timeout=300)  # the default store
    assert loaded.returncode == 0, f"{uri}: {loaded.stderr[-3000:]}"
    got = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert got["same_outputs"]
    assert got["test_acc"] == pytest.approx(test_acc, abs=5e-5)  # printed with 4 decimals
