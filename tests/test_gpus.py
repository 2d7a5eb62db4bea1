"""GPUs as Ray hands them out, on a machine without CUDA: a Ray that declares logical GPUs (`ray.init(num_gpus=2)`,
as `ray start --num-gpus 2` does) schedules trials by them and sets each trial's CUDA_VISIBLE_DEVICES, while torch
here sees no CUDA device. Trials train on the CPU only when told to (`--set device=cpu`); otherwise a trial given
a GPU that torch cannot use fails with one line.
"""

from __future__ import annotations

import collections
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from search.fake_data import write_fake
from search.progress import cost_line
from search.space import Settings

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "spaces/vgg_fashion_mnist.py"
# `python -m search.run` in a process whose Ray was started first with declared resources: the search joins it
# (as a notebook's search joins the notebook's Ray). argv: CPUs, GPUs, then the command line's arguments.
# Trials long enough to overlap: 8 workers importing torch on 2 cores come up seconds apart, and --smoke's 512
# images train in about a second; 4,096 images (of 4,600, a tenth held out) take ten times as long.
TRAIN_IMAGES, TRAIN_SUBSET = 4600, 4096
DRIVER = (
    "import sys, ray; from search import cli, run; "
    "ray.init(address='local', num_cpus=int(sys.argv[1]), num_gpus=int(sys.argv[2]), include_dashboard=False); "
    "cli.run_main(run.main, sys.argv[3:])"
)


def settings(**values) -> Settings:
    return Settings.check("space.py", {"DATASET": "cifar10", "MODEL": "vgg7", **values})


def test_cost_line_names_what_each_trial_holds_of_a_gpu():
    assert "8 trials at once, 0.25 GPU each (2 GPUs)" in cost_line(settings(GPUS_PER_TRIAL=0.25), 8)
    assert "GPU" not in cost_line(settings(), 2)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gpu_data")
    write_fake("fashion_mnist", str(root), train=TRAIN_IMAGES, test=100)

    return root


def search_with_gpus(cpus: int, gpus: int, args: list, data_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "SEARCH_", "CUDA_"))}
    argv = [SPACE, "--smoke", "--quiet", "--name", "gpus", "--storage", tmp_path / "runs", "--data-dir", data_dir,
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *args]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(cpus), str(gpus), *map(str, argv)],
        # a token of its own, as search.cluster.connect gives a private Ray: ~/.ray/auth_token is not read or written
        env={**env, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)},
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def trial_results(folder: Path) -> dict[str, list[dict]]:
    """Every trial's results as Tune recorded them, by trial id."""
    return {
        f.parent.name: [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        for f in folder.glob("*/result.json")
    }


@pytest.mark.slow
@pytest.mark.usefixtures("sqlite_uri")  # a migrated store where search_with_gpus records, tmp_path/mlflow.db
def test_quarter_gpus_run_eight_trials_at_once_each_on_the_gpu_ray_gave_it(data_dir, tmp_path):
    run = search_with_gpus(8, 2, ["--gpus-per-trial", "0.25", "--num-samples", "8", "--set", "device=cpu",
                                    "--set", f"TRAIN_SUBSET={TRAIN_SUBSET}"],
                           data_dir, tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "8 trials at once, 0.25 GPU each (2 GPUs)" in run.stdout

    trials = trial_results(tmp_path / "runs" / "gpus")
    assert len(trials) == 8 and all(trials.values())
    for results in trials.values():  # one GPU each, the same every epoch, and CUDA_VISIBLE_DEVICES names it
        assert {(r["gpu_ids"], r["cuda_visible_devices"]) for r in results} == {(results[0]["gpu_ids"],) * 2}
        assert results[0]["gpu_ids"] in ("0", "1")
    # 8 x 0.25 GPU fill both GPUs only if all 8 hold theirs at once: 4 trials on each
    assert collections.Counter(r[0]["gpu_ids"] for r in trials.values()) == {"0": 4, "1": 4}
    # and they did run at once: the last to start started before the first to end ended (timestamps in seconds)
    starts = [r[0]["timestamp"] - r[0]["time_total_s"] for r in trials.values()]
    ends = [r[-1]["timestamp"] for r in trials.values()]
    assert max(starts) < min(ends), (starts, ends)

    # GPU-hours: each trial's seconds x the 0.25 GPU it held
    seconds = sum(r[-1]["time_total_s"] for r in trials.values())
    compute = re.search(r"compute\s+([\d.]+) CPU-hours, ([\d.]+) GPU-hours", run.stdout)
    assert compute, run.stdout[-3000:]
    assert float(compute[2]) == round(seconds * 0.25 / 3600, 3) > 0
    assert float(compute[1]) == round(seconds * 1.0 / 3600, 3)


@pytest.mark.slow
def test_a_trial_given_a_gpu_that_torch_cannot_see_fails_with_one_line(data_dir, tmp_path, sqlite_uri):
    """Before: with device 'auto' it trained on the CPU, 50-100x slower than on the GPU it held, without a word."""
    run = search_with_gpus(
        2, 1, ["--gpus-per-trial", "0.5", "--set", "MAX_FAILURES=0"], data_dir, tmp_path
    )  # no retries: a minute less
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert run.returncode == 1 and len(errors) == 1, run.stdout[-3000:] + run.stderr[-3000:]  # SearchFailed: 1
    line = errors[0]
    assert line.startswith("error: no trial finished (4 errored)"), line
    assert f"torch {torch.__version__} (CUDA {torch.version.cuda})" in line and "sees no CUDA device" in line, line
    assert "GPUS_PER_TRIAL = 0" in line and "device=cpu" in line, line
    client = MlflowClient(sqlite_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 5 and {r.info.status for r in runs} == {"FAILED"}  # the parent and 4 trials, none RUNNING
