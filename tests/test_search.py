"""Whole searches on a real local Ray cluster, a real MLflow store and fake data in the real on-disk formats."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers import children, wait_for
from mlflow.tracking import MlflowClient

from search import report
from search.errors import UsageError
from search.run import search
from search.searcher import load_study
from search.space import METRICS_MODES, load_space

pytestmark = pytest.mark.slow  # whole searches and clusters: minutes; `make test-fast` leaves them out

ROOT = Path(__file__).parents[1]
SPACES = sorted(ROOT.joinpath("spaces").glob("*.py"))


@pytest.fixture
def data_dir(smoke_data_dir) -> Path:
    return smoke_data_dir


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts under ./mlruns of the working directory


@pytest.fixture(autouse=True)
def on_local_ray(local_ray):
    """The session's private Ray: every search here joins it, as a notebook's second search does."""


def check_tracking(client: MlflowClient, result, num_samples: int) -> list:
    """One parent, exactly one child per trial, statuses matching outcomes, nothing left RUNNING."""
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert "test_acc" in parent.data.metrics and "best_val_acc" in parent.data.metrics
    assert parent.data.params["sampler.constant_liar"] == "True" and "version.torch" in parent.data.params  # §5
    runs = children(client, result.parent_run_id)
    assert len(runs) == num_samples
    assert len({r.data.tags["trial_id"] for r in runs}) == num_samples
    status = {"completed": "FINISHED", "stopped_early": "FINISHED", "diverged": "FAILED", "errored": "FAILED"}
    for run in runs:
        outcome = run.data.tags["outcome"]
        assert run.info.status == status[outcome], (outcome, run.info.status)
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert epochs == list(range(1, int(run.data.tags["epoch"]) + 1))  # every epoch once, step = epoch
        assert run.data.params["model"] and "lr" in run.data.params
        if int(run.data.tags["epoch"]):  # its cost is reported with its epochs
            assert all(run.data.metrics[k] > 0 for k in ("macs", "params", "latency_ms")), run.data.metrics
            curve = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_acc")}
            best = max(curve, key=lambda e: (curve[e], -e))  # its best epoch (the first, on a tie), as it ranks
            assert (run.data.metrics["best_val_acc"], run.data.metrics["best_epoch"]) == (curve[best], best)
    return runs


@pytest.mark.xdist_group("smoke_searches")  # made once per worker: its readers share one
@pytest.mark.parametrize("space", SPACES, ids=lambda p: p.stem)
def test_smoke_search_of_every_space(space, finished_smoke_search):
    """Each space's smoke search, run once per session (conftest.py) and shared with the tests that read one."""
    done = finished_smoke_search(space.stem)
    result = done.result
    assert 0 <= result.test["test_acc"] <= 1 and result.best_config
    check_tracking(MlflowClient(done.uri), result, num_samples=4)
    assert Path(result.summary["best_checkpoint"], "checkpoint.pt").exists()
    assert done.kept_ctrl_c  # not Tune's handler, which swallowed a Ctrl-C in the next cell
    assert done.kept_tracking_uri  # the notebook's next mlflow.log_metric goes to its own store, not the search's
    front = result.summary["front"]["macs"]
    assert front and all(row["macs"] > 0 and row["images_per_second"] > 0 for row in front)
    assert "against MACs per image" in report.format_summary(result.summary)
    objectives = load_space(space, smoke=True).settings.objectives  # the course space: accuracy and MACs
    study = load_study(result.experiment_path)
    assert len(study.directions) == len(objectives)
    done = {r.metrics["trial_id"]: r.metrics for r in result.results}
    told = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert told and all(len(t.values) == len(objectives) for t in told)
    told = [t for t in told if math.isfinite(t.values[-1])]  # not the diverged ones, worst on every objective
    if len(objectives) > 1:  # TPE was told each trial's MACs beside its accuracy
        assert sorted(t.values[1] for t in told) == sorted(
            m["macs"] for m in done.values() if m["epoch"] == 2 and m["outcome"] != "diverged"
        )


def test_max_macs_keeps_every_trial_within_budget_and_the_front_can_be_retrained(data_dir, tmp_path, sqlite_uri):
    uri = sqlite_uri
    # smoke widths: stride1=1 costs 4.8M MACs per image, stride1=2 1.7M; TPE proposes both, half at random
    result = search(str(ROOT / "spaces/vgg_fashion_mnist.py"), sets={"NUM_SAMPLES": 6, "MAX_MACS": 3e6}, smoke=True,
                    data_dir=str(data_dir), storage=str(tmp_path / "runs"), tracking_uri=uri, quiet=True,
                    final_front=True, final_seeds=1)  # fmt: skip
    front = [row["trial_id"] for row in result.summary["front"]["macs"]]
    assert [row["trial_id"] for row in result.summary["final"]["configs"]] == front
    runs = [r for r in check_tracking(MlflowClient(uri), result, num_samples=6 + len(front))
            if r.data.tags.get("stage") != "final"]  # fmt: skip
    assert all(r.data.metrics["macs"] <= 3e6 and r.data.params["stride1"] == "2" for r in runs)
    study = load_study(result.experiment_path)
    assert any(t.constraints.get("macs", 0) > 0 for t in study.trials)  # over-budget proposals, refused


def test_asha_stops_trials_and_optuna_sees_them_pruned(data_dir, tmp_path, sqlite_uri):
    uri = sqlite_uri
    # one trial at a time and no audit controls (picked by trial id, which Ray draws at random): the same seeded
    # configs reach each rung in the same order, so ASHA makes the same decisions every run, whatever the load
    sets = {"NUM_SAMPLES": 6, "MAX_EPOCHS": 4, "GRACE_PERIOD": 1, "REDUCTION_FACTOR": 2, "lr": 0.03,
            "MAX_CONCURRENT": 1, "AUDIT_FRACTION": 0.0}  # fmt: skip
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


def test_diverged_and_crashed_trials_are_recorded_and_the_search_goes_on(data_dir, tmp_path, sqlite_uri):
    uri = sqlite_uri
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


def checkpoints(runs: Path) -> list:
    return list(runs.glob("*/*/checkpoint_*"))


def all_trials_ended(uri: str) -> bool:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("vgg_fashion_mnist")
    if experiment is None:
        return False
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.trial_id != ''")
    return len(runs) == 4 and all(r.info.status != "RUNNING" for r in runs)


def test_a_killed_driver_resumes_with_nothing_lost_or_counted_twice(data_dir, tmp_path, sqlite_uri):
    """Killed at each moment in turn, each time as a crash would (SIGKILL to the driver and the local Ray it
    started), and resumed: before any trial reported, mid-search, at the final evaluation. Each --resume must go on
    to the next moment (CI once saw the first refused: `unreadable search state`), and the last must finish the
    search with every trial's every epoch logged once. One search killed three times, not three searches."""
    uri = sqlite_uri
    runs = tmp_path / "runs"
    cmd = [
        sys.executable, "-m", "search.run", str(ROOT / "spaces/vgg_fashion_mnist.py"), "--smoke", "--quiet",
        "--name", "killed", "--storage", str(runs), "--tracking-uri", uri, "--data-dir", str(data_dir),
        "--set", "MAX_EPOCHS=3", "--set", "MAX_CONCURRENT=1",
        "--set", "CHECKPOINT_SECONDS=0",  # a checkpoint every epoch: the mid-search kill waits for two
    ]  # fmt: skip
    moments = [
        ("before_first_report", lambda: (runs / "killed" / "search.json").exists(), 120),  # Tune state, no report
        ("mid_search", lambda: len(checkpoints(runs)) >= 2, 300),  # trials have checkpoints, others pending
        ("final_evaluation", lambda: all_trials_ended(uri), 600),  # the winner is being tested and logged
    ]
    for i, (moment, reached, timeout) in enumerate(moments):
        log = tmp_path / f"{moment}.log"
        with open(log, "wb") as err:
            driver = subprocess.Popen([*cmd, "--resume"] if i else cmd, cwd=tmp_path, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
        wait_for(reached, timeout, f"{moment} (run {i + 1})", log, proc=driver)
        os.killpg(driver.pid, signal.SIGKILL)
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


KILL_AT = """
import os, runpy, signal, sys
import search.driver as driver

start_parent, moment = driver.start_parent, sys.argv.pop()

def killed(*args, **kwargs):
    if moment == "after":
        start_parent(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

driver.start_parent = killed
runpy.run_module("search.run", run_name="__main__")
"""


def test_a_driver_killed_while_it_starts_resumes_as_one_search(data_dir, tmp_path, sqlite_uri):
    """Killed between claiming its name and recording its parent run: before creating the parent run, then (its
    --resume) after creating it. CI caught the search.json of such a search empty, and --resume refused it as
    unreadable. It resumes as one search, under one parent run: the half-begun one is discarded."""
    uri = sqlite_uri
    runs = tmp_path / "runs"
    cmd = [
        str(ROOT / "spaces/vgg_fashion_mnist.py"), "--smoke", "--quiet", "--name", "starting", "--storage", str(runs),
        "--tracking-uri", uri, "--data-dir", str(data_dir), "--set", "MAX_EPOCHS=1",
    ]  # fmt: skip
    client = MlflowClient(uri)
    for moment, resume in (("before", []), ("after", ["--resume"])):
        killed = subprocess.run([sys.executable, "-c", KILL_AT, *cmd, *resume, moment], cwd=tmp_path, timeout=300,
                                capture_output=True, text=True)  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, (moment, killed.stderr[-3000:])
        experiment_id = client.get_experiment_by_name("vgg_fashion_mnist").experiment_id
        assert len(client.search_runs([experiment_id])) == (moment == "after"), moment

    resumed = subprocess.run(
        [sys.executable, "-m", "search.run", *cmd, "--resume"], cwd=tmp_path, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    parents = client.search_runs([experiment_id], filter_string="tags.smoke = 'True'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children(client, parents[0].info.run_id)) == 4


def test_ctrl_c_once_every_trial_has_started_is_an_interrupt_not_the_end(data_dir, tmp_path, sqlite_uri):
    """Ctrl-C in a search's last wave, once the searcher has made all NUM_SAMPLES trials: Tune saves its record with
    the trials RUNNING, then marks them TERMINATED in memory. The search took that for its end, chose a winner
    from half-trained trials and called them `stopped_early` (seen in a notebook on a busy machine)."""
    uri = sqlite_uri
    runs = tmp_path / "runs"
    cmd = [
        sys.executable, "-m", "search.run", str(ROOT / "spaces/vgg_fashion_mnist.py"), "--smoke", "--quiet",
        "--name", "ctrl_c", "--storage", str(runs), "--tracking-uri", uri, "--data-dir", str(data_dir),
        "--set", "NUM_SAMPLES=2", "--set", "MAX_CONCURRENT=2", "--set", "MAX_EPOCHS=10",
        "--set", "GRACE_PERIOD=10",  # no trial stops early: each ends completed or interrupted
        # epochs of seconds: at the default width 20 epochs took less than a poll, both ended before the Ctrl-C
        "--set", "width1=32", "--set", "width2=64",
    ]  # fmt: skip
    driver = subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    reported = lambda: [p for p in runs.glob("ctrl_c/*/result.json") if p.stat().st_size]  # noqa: E731
    wait_for(lambda: len(reported()) == 2, 300, "both trials to report an epoch", proc=driver)
    os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C in a terminal: the driver and the local Ray it started
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 130 and "interrupted: resume with" in err, err[-3000:]

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("vgg_fashion_mnist")
    (parent,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'ctrl_c'")
    assert parent.info.status == "KILLED"
    stopped = children(client, parent.info.run_id)
    # the trial that started first may finish all its epochs before the second reports its first: it is
    # completed then, never stopped_early, and the other one is interrupted
    ends = sorted((r.data.tags["outcome"], r.data.tags["epoch"]) for r in stopped)
    assert len(ends) == 2 and ends[-1][0] == "interrupted", ends
    assert ends[0][0] == "interrupted" or ends[0] == ("completed", "10"), ends

    resumed = subprocess.run([*cmd, "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trial_runs = children(client, parent.info.run_id)
    assert client.get_run(parent.info.run_id).info.status == "FINISHED" and len(trial_runs) == 2
    assert [(r.data.tags["outcome"], r.data.tags["epoch"]) for r in trial_runs] == [("completed", "10")] * 2


def test_final_retrains_report_mean_and_spread_over_seeds(data_dir, tmp_path, sqlite_uri):
    uri = sqlite_uri
    # GRACE_PERIOD = the smoke's MAX_EPOCHS: no trial stops early, so two ran in full to be retrained (the retrains
    # come from the trials that ran in full; ASHA could leave one)
    result = search(
        str(ROOT / "spaces/vgg_fashion_mnist.py"), smoke=True, sets={"NUM_SAMPLES": 3, "GRACE_PERIOD": 2},
        data_dir=str(data_dir), storage=str(tmp_path / "runs"), tracking_uri=uri, quiet=True, final_top_k=2,
        final_seeds=2,
    )  # fmt: skip
    final = result.summary["final"]["configs"]
    assert len(final) == 2 and all(row["seeds"] == 2 for row in final)
    assert all(0 <= row["test_acc_mean"] <= 1 and row["test_acc_std"] >= 0 for row in final)
    client = MlflowClient(uri)
    retrains = [r for r in children(client, result.parent_run_id) if r.data.tags.get("stage") == "final"]
    assert len(retrains) == 4 and {r.data.params["seed"] for r in retrains} == {"1", "2"}
    assert all(r.info.status == "FINISHED" and r.data.tags["outcome"] == "completed" for r in retrains)


def test_patience_ends_a_search_that_stopped_improving(data_dir, tmp_path, sqlite_uri):
    uri = sqlite_uri
    # no trial can beat the first by a whole 1.0 of accuracy: PATIENCE=2 ends the search after the third of 12
    sets = {"NUM_SAMPLES": 12, "PATIENCE": 2, "MIN_DELTA": 1.0, "MAX_CONCURRENT": 1}
    result = search(str(ROOT / "spaces/vgg_fashion_mnist.py"), sets=sets, smoke=True, data_dir=str(data_dir),
                    storage=str(tmp_path / "runs"), tracking_uri=uri, quiet=True)  # fmt: skip
    assert result.summary["converged_after"] == 3
    assert len(result.results) in (3, 4)  # a fourth may have been pending when it converged
    client = MlflowClient(uri)
    check_tracking(client, result, num_samples=len(result.results))
    assert client.get_run(result.parent_run_id).data.tags["state"] == "converged"
    assert "converged after 3 trials: the last 2 did not beat the best val_acc" in report.format_summary(result.summary)


@pytest.mark.xdist_group("smoke_searches")
def test_a_warm_started_search_begins_with_the_earlier_trials_that_fit(finished_smoke_search, data_dir, tmp_path,
                                                                       sqlite_uri, capsys):  # fmt: skip
    uri, runs = sqlite_uri, tmp_path / "runs"
    space = str(ROOT / "spaces/vgg_fashion_mnist.py")
    first = finished_smoke_search("vgg_fashion_mnist").result  # read only: linked in as the search `first`
    runs.mkdir()
    (runs / "first").symlink_to(first.experiment_path, target_is_directory=True)
    runs = str(runs)
    earlier = load_study(first.experiment_path).trials
    fit = [t for t in earlier if t.state.name in ("COMPLETE", "PRUNED") and t.params["stride1"] == 2]

    # the second search fixes the first pool's stride: only the first's stride-2 trials fit it
    sets = {"NUM_SAMPLES": 2, "stride1": 2}
    second = search(space, smoke=True, sets=sets, name="second", warm_start="first", data_dir=str(data_dir),
                    storage=runs, tracking_uri=uri, quiet=True)  # fmt: skip
    assert f"warm start: {len(fit)} of the 4 trials of first fit vgg_fashion_mnist.py" in capsys.readouterr().out
    study = load_study(second.experiment_path)
    assert len(study.trials) == len(fit) + 2
    # the study holds the earlier trials that fit beside its own (START_WITH is enqueued first, at trial 0)
    ran = [r.config["lr"] for r in second.results]
    assert sorted(t.params["lr"] for t in study.trials) == sorted([t.params["lr"] for t in fit] + ran)
    client = MlflowClient(uri)
    check_tracking(client, second, num_samples=2)  # runs of the new trials only
    assert client.get_run(second.parent_run_id).data.params["warm_start"] == "first"


def test_resume_with_more_samples_extends_a_finished_search(data_dir, tmp_path, sqlite_uri):
    uri, runs = sqlite_uri, str(tmp_path / "runs")
    space, common = str(ROOT / "spaces/vgg_fashion_mnist.py"), {"data_dir": str(data_dir), "quiet": True}
    first = search(space, smoke=True, sets={"NUM_SAMPLES": 2}, name="ext", storage=runs, tracking_uri=uri, **common)
    before = {r.metrics["trial_id"] for r in first.results}

    more = search(space, num_samples=4, resume=True, name="ext", storage=runs, **common)
    assert more.parent_run_id == first.parent_run_id  # the same parent run and the same study
    assert {r.metrics["trial_id"] for r in more.results} >= before and len(more.results) == 4
    assert len(load_study(more.experiment_path).trials) == 4
    client = MlflowClient(uri)
    check_tracking(client, more, num_samples=4)
    assert client.get_run(more.parent_run_id).data.tags["extended.NUM_SAMPLES"] == "4"

    # anything else a --resume would change is refused, before anything runs
    with pytest.raises(UsageError, match=r"--resume ext: --set SEED=3 would change the search"):
        search(space, sets={"SEED": 3}, resume=True, name="ext", storage=runs, **common)
    with pytest.raises(UsageError, match=r"--resume ext: NUM_SAMPLES=3: it has 4 trials"):
        search(space, num_samples=3, resume=True, name="ext", storage=runs, **common)
    assert client.get_run(more.parent_run_id).info.status == "FINISHED"


def test_a_metric_to_minimize_runs_end_to_end(data_dir, tmp_path, sqlite_uri):
    """A search ranked on a loss (MODE = "min") from ASHA and TPE to the winner and its parent run. Every metric
    of METRICS_MODES through the report's code (where METRIC = "val_top5" failed in the early-stopping audit with a
    KeyError, after every trial had trained): test_report.py's test_every_metric_a_space_may_name_is_reported."""
    metric = "val_loss"
    uri = sqlite_uri
    sets = {"METRIC": metric, "MODE": METRICS_MODES[metric], "NUM_SAMPLES": 2}  # the space file says MODE = "max"
    result = search(
        str(ROOT / "spaces/vgg_fashion_mnist.py"), smoke=True, sets=sets,
        data_dir=str(data_dir), storage=str(tmp_path / "runs"), tracking_uri=uri, quiet=True,
    )  # fmt: skip
    parent = MlflowClient(uri).get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and f"best_{metric}" in parent.data.metrics


@pytest.mark.xdist_group("smoke_searches")
def test_artifacts_live_beside_a_sqlite_store_not_in_the_working_folder(finished_smoke_search):
    # A Ray Job runs in a temporary folder: MLflow's default ./mlruns there lost the artifacts. The shared smoke
    # search ran in an empty working folder of its own, with its store in another.
    done = finished_smoke_search("vgg_fashion_mnist")
    assert list(done.work.iterdir()) == []  # nothing scattered into the current folder
    artifact_uri = MlflowClient(done.uri).get_run(done.result.parent_run_id).info.artifact_uri
    assert artifact_uri.startswith((done.store / "mlartifacts").as_uri()), artifact_uri
    assert list((done.store / "mlartifacts").rglob("summary.json"))


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search.run", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


# A search without --address on a machine whose RAY_ADDRESS points at a cluster that is gone: test_user_path.py.


def test_a_dead_cluster_address_fails_in_bounded_time_with_nothing_left_behind(data_dir, tmp_path):
    start = time.monotonic()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = run_cli(
        str(ROOT / "spaces/vgg_fashion_mnist.py"), "--smoke", "--address", "127.0.0.1:9", "--quiet",
        "--data-dir", str(data_dir), "--storage", str(tmp_path / "runs"), "--tracking-uri", uri, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1 and "127.0.0.1:9" in out.stderr, out.stderr
    assert time.monotonic() - start < 90
    assert not (tmp_path / "runs").exists()
    runs = MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()])
    assert runs == []  # no parent run, RUNNING or otherwise


@pytest.fixture
def not_a_ray():
    """A port that accepts connections and never answers, as another service or a hung GCS does."""
    with socket.create_server(("0.0.0.0", 0), backlog=16) as server:
        yield server


def test_an_address_that_accepts_but_is_no_ray_fails_in_bounded_time(not_a_ray, data_dir, tmp_path):
    """ray.init waited in Ray's C++ client, deaf to signals, for over 5 minutes."""
    start, uri = time.monotonic(), f"sqlite:///{tmp_path}/mlflow.db"
    out = run_cli(
        str(ROOT / "spaces/vgg_fashion_mnist.py"), "--smoke", "--quiet", "--data-dir", str(data_dir),
        "--address", f"127.0.0.1:{not_a_ray.getsockname()[1]}", "--storage", str(tmp_path / "runs"),
        "--tracking-uri", uri, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1 and "no Ray GCS answered within 30 s" in out.stderr, out.stderr
    assert time.monotonic() - start < 120  # 30 s of waiting, the rest start-up on 2 busy cores
    assert not (tmp_path / "runs").exists()
    assert MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()]) == []


def test_sigterm_while_connecting_stops_the_search_in_seconds(not_a_ray, data_dir, tmp_path, sqlite_uri):
    cmd = [
        sys.executable, "-m", "search.run", str(ROOT / "spaces/vgg_fashion_mnist.py"), "--smoke", "--quiet",
        "--data-dir", str(data_dir), "--address", f"127.0.0.1:{not_a_ray.getsockname()[1]}",
        "--storage", str(tmp_path / "runs"), "--tracking-uri", sqlite_uri,
    ]  # fmt: skip
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    not_a_ray.settimeout(120)
    not_a_ray.accept()[0].close()  # the driver is connecting
    time.sleep(2)
    driver.send_signal(signal.SIGTERM)
    start = time.monotonic()
    _, err = driver.communicate(timeout=60)
    assert time.monotonic() - start < 15, err
    assert driver.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err


def test_resuming_a_search_whose_snapshot_is_truncated_is_one_line_and_leaves_the_parent_as_it_was(
    data_dir, tmp_path, sqlite_uri
):
    """The resume set the KILLED parent RUNNING, then failed reading Tune's snapshot and left it RUNNING."""
    uri = sqlite_uri
    kwargs = {"smoke": True, "data_dir": str(data_dir), "storage": str(tmp_path / "runs"), "tracking_uri": uri,
              "quiet": True, "name": "torn", "sets": {"NUM_SAMPLES": 2, "MAX_EPOCHS": 1}}  # fmt: skip
    result = search(str(ROOT / "spaces/vgg_fashion_mnist.py"), **kwargs)
    client = MlflowClient(uri)
    client.set_terminated(result.parent_run_id, status="KILLED")  # as an interrupted search leaves it
    for snapshot in (tmp_path / "runs" / "torn").glob("experiment_state-*.json"):
        snapshot.write_text(snapshot.read_text()[:100])  # a copy cut short
    with pytest.raises(UsageError):
        search(str(ROOT / "spaces/vgg_fashion_mnist.py"), resume=True, **kwargs)
    assert client.get_run(result.parent_run_id).info.status == "KILLED"
