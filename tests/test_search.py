"""Whole searches on a real local Ray cluster, a real MLflow store and fake data in the real on-disk formats."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import ray
from mlflow.tracking import MlflowClient

from search.data import write_fake
from search.run import load_study, search

ROOT = Path(__file__).parents[1]
SPACES = sorted(ROOT.joinpath("spaces").glob("*.py"))
# --smoke trains 512 images; the split holds back 10% for validation, so the fakes need a few more.
FAKE_TRAIN, FAKE_TEST = 640, 100


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("search_data")
    for name in ("cifar100", "cifar10", "fashion_mnist"):
        write_fake(name, str(root), train=FAKE_TRAIN, test=FAKE_TEST)
    return root


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts under ./mlruns of the working directory


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def children(client: MlflowClient, parent_run_id: str) -> list:
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )


def check_tracking(client: MlflowClient, result, num_samples: int) -> list:
    """One parent, exactly one child per trial, statuses matching outcomes, nothing left RUNNING."""
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert "test_acc" in parent.data.metrics and "best_val_acc" in parent.data.metrics
    runs = children(client, result.parent_run_id)
    assert len(runs) == num_samples
    assert len({r.data.tags["trial_id"] for r in runs}) == num_samples
    status = {"completed": "FINISHED", "stopped_early": "KILLED", "diverged": "FAILED", "errored": "FAILED"}
    for run in runs:
        outcome = run.data.tags["outcome"]
        assert run.info.status == status[outcome], (outcome, run.info.status)
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert epochs == list(range(1, int(run.data.tags["epoch"]) + 1))  # every epoch once, step = epoch
        assert run.data.params["model"] and "lr" in run.data.params
    return runs


@pytest.mark.parametrize("space", SPACES, ids=lambda p: p.stem)
def test_smoke_search_of_every_space(space, data_dir, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = search(
        str(space), smoke=True, data_dir=str(data_dir), storage=str(tmp_path / "runs"), tracking_uri=uri, quiet=True
    )
    assert 0 <= result.test["test_acc"] <= 1 and result.best_config
    check_tracking(MlflowClient(uri), result, num_samples=4)
    assert Path(result.summary["best_checkpoint"], "checkpoint.pt").exists()


def test_asha_stops_trials_and_optuna_sees_them_pruned(data_dir, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sets = {"NUM_SAMPLES": 6, "MAX_EPOCHS": 4, "GRACE_PERIOD": 1, "REDUCTION_FACTOR": 2, "lr": 0.03}
    result = search(
        str(ROOT / "spaces/vgg_fashion_mnist.py"), smoke=True, sets=sets, data_dir=str(data_dir),
        storage=str(tmp_path / "runs"), tracking_uri=uri, quiet=True,
    )  # fmt: skip
    runs = check_tracking(MlflowClient(uri), result, num_samples=6)
    outcomes = [r.data.tags["outcome"] for r in runs]
    assert "stopped_early" in outcomes and "completed" in outcomes, outcomes

    study = load_study(result.experiment_path)
    states = [t.state for t in study.trials]
    assert len(study.trials) == 6
    assert states.count(optuna.trial.TrialState.PRUNED) == outcomes.count("stopped_early")
    assert states.count(optuna.trial.TrialState.COMPLETE) == outcomes.count("completed")
    for trial in study.trials:
        assert trial.intermediate_values, "every trial reports its per-epoch values to the study"
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert max(trial.intermediate_values) < 4  # pruned at a rung, not carrying a final score
    summary = result.summary
    assert summary["epochs_trained"] < summary["epochs_if_all_full"] == 24
    assert set(summary["outcomes"]) <= {"completed", "stopped_early", "diverged", "errored"}
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(result.parent_run_id)}
    assert {"trials.csv", "summary.json", "summary.txt", "plots", "space", "best"} <= artifacts


def test_diverged_and_crashed_trials_are_recorded_and_the_search_goes_on(data_dir, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = tmp_path / "mixed.py"
    space.write_text(
        "from ray import tune\n"
        "DATASET = 'fashion_mnist'\nMODEL = 'vgg7'\nMAX_EPOCHS = 2\nGRACE_PERIOD = 2\n"
        "NUM_SAMPLES = 3\nMAX_FAILURES = 1\n"
        "FIXED = {'width1': 8, 'width2': 16, 'fc1': 32, 'optimizer': 'sgd', 'momentum': 0.0, 'scheduler': 'none'}\n"
        "SPACE = {'lr': tune.loguniform(0.01, 0.1), 'train_subset': tune.choice([256, 10**6])}\n"
        # a huge lr diverges; a train_subset larger than the data raises inside the trial
        "START_WITH = [{'lr': 1e9, 'train_subset': 256}, {'lr': 0.05, 'train_subset': 10**6},\n"
        "              {'lr': 0.05, 'train_subset': 256}]\n"
    )
    result = search(str(space), data_dir=str(data_dir), storage=str(tmp_path / "runs"), tracking_uri=uri, quiet=True)
    client = MlflowClient(uri)
    runs = {r.data.params["lr"]: r for r in check_tracking(client, result, num_samples=3)}
    diverged = next(r for lr, r in runs.items() if float(lr) > 1)
    assert diverged.data.tags["outcome"] == "diverged" and diverged.info.status == "FAILED"
    losses = [m.value for m in client.get_metric_history(diverged.info.run_id, "train_loss")]
    assert not math.isfinite(losses[-1]) and all(math.isfinite(v) for v in losses[:-1])  # stops at the first
    errored = next(r for r in runs.values() if r.data.params["train_subset"] == str(10**6))
    assert errored.data.tags["outcome"] == "errored"
    assert "train_subset: 1000000 is more than" in errored.data.tags["error"]
    assert result.summary["outcomes"] == {"completed": 1, "diverged": 1, "errored": 1}

    study = load_study(result.experiment_path)
    by_lr = {t.params["lr"]: t for t in study.trials}
    assert by_lr[1e9].state == optuna.trial.TrialState.COMPLETE and by_lr[1e9].value == pytest.approx(0.1)  # chance
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.FAIL) == 1


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def checkpoints(runs: Path) -> list:
    return list(runs.glob("*/*/checkpoint_*"))


def all_trials_ended(uri: str) -> bool:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("vgg_fashion_mnist")
    if experiment is None:
        return False
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.trial_id != ''")
    return len(runs) == 4 and all(r.info.status != "RUNNING" for r in runs)


@pytest.mark.parametrize(
    "moment",
    [
        "before_first_report",  # Tune state exists, no trial has reported
        "mid_search",  # trials have checkpoints, others pending
        "final_evaluation",  # every trial ended; the winner is being tested and logged
    ],
)
def test_a_killed_driver_resumes_with_nothing_lost_or_counted_twice(moment, data_dir, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = tmp_path / "runs"
    cmd = [
        sys.executable, "-m", "search.run", str(ROOT / "spaces/vgg_fashion_mnist.py"), "--smoke", "--quiet",
        "--name", "killed", "--storage", str(runs), "--tracking-uri", uri, "--data-dir", str(data_dir),
        "--set", "MAX_EPOCHS=3", "--set", "MAX_CONCURRENT=1",
    ]  # fmt: skip
    driver = subprocess.Popen(
        cmd, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    if moment == "before_first_report":
        wait_for(lambda: (runs / "killed" / "search.json").exists(), 120, "the search to start")
    elif moment == "mid_search":
        wait_for(lambda: len(checkpoints(runs)) >= 2, 300, "two checkpoints")
    else:
        wait_for(lambda: all_trials_ended(uri), 600, "every trial to end")
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started, as a crash would
    driver.wait()

    resumed = subprocess.run([*cmd, "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "best trial" in resumed.stdout

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("vgg_fashion_mnist")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.smoke = 'True'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_runs = children(client, parents[0].info.run_id)
    assert len(trial_runs) == 4 and len({r.data.tags["trial_id"] for r in trial_runs}) == 4
    for run in trial_runs:
        assert run.info.status != "RUNNING"
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert epochs == list(range(1, int(run.data.tags["epoch"]) + 1)), epochs  # none lost, none twice
    study = load_study(runs / "killed")
    assert len(study.trials) == 4
    assert all(t.state.is_finished() for t in study.trials)
    tune_trials = {p.name for p in (runs / "killed").iterdir() if p.is_dir()}
    assert {r.data.tags["trial_id"] for r in trial_runs} <= tune_trials


def test_final_retrains_report_mean_and_spread_over_seeds(data_dir, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = search(
        str(ROOT / "spaces/vgg_fashion_mnist.py"), smoke=True, sets={"NUM_SAMPLES": 3}, data_dir=str(data_dir),
        storage=str(tmp_path / "runs"), tracking_uri=uri, quiet=True, final_top_k=2, final_seeds=2,
    )  # fmt: skip
    final = result.summary["final"]["configs"]
    assert len(final) == 2 and all(row["seeds"] == 2 for row in final)
    assert all(0 <= row["test_acc_mean"] <= 1 and row["test_acc_std"] >= 0 for row in final)
    client = MlflowClient(uri)
    retrains = [r for r in children(client, result.parent_run_id) if r.data.tags.get("stage") == "final"]
    assert len(retrains) == 4 and {r.data.params["seed"] for r in retrains} == {"1", "2"}
    assert all(r.info.status == "FINISHED" and r.data.tags["outcome"] == "completed" for r in retrains)
