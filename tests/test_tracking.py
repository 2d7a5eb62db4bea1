"""search.tracking: `sync` makes a real sqlite MLflow store agree with a real Tune experiment folder."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH, MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH
from ray import tune
from tune_fakes import fake_trial, fake_trial_variant

from search import mlflow_ui
from search.data import load_splits
from search.errors import UsageError
from search.fake_data import write_fake
from search.record import SearchState, has_snapshot, write_state
from search.tracking import (
    EPOCHS_PER_REQUEST,
    METRICS,
    LiveTracking,
    Ranking,
    _metrics,
    child_runs,
    ensure_experiment,
    open_store,
    start_parent,
    sync,
)
from search.tracking import main as tracking_main

EPOCHS = 3


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, local_ray) -> Path:
    """A real Tune experiment: two trials run in full, one stops at epoch 2, one crashes at epoch 2."""
    root = tmp_path_factory.mktemp("tune")
    grid = [{"x": 0.0, "epochs": 3}, {"x": 0.5, "epochs": 3}, {"x": 0.2, "epochs": 2}, {"x": 0.1, "epochs": 3,
            "crash_at": 2}]  # fmt: skip
    tune.Tuner(
        fake_trial_variant,
        param_space={"variant": tune.grid_search(grid)},
        tune_config=tune.TuneConfig(trial_dirname_creator=lambda t: t.trial_id, reuse_actors=True),
        run_config=tune.RunConfig(name="exp", storage_path=str(root), verbose=0),
    ).fit()
    return root / "exp"


@pytest.fixture
def store(sqlite_uri):
    client = MlflowClient(sqlite_uri)
    experiment_id = ensure_experiment(client, "sync")
    parent = start_parent(client, experiment_id, "search", {"a": 1}, {}, {})
    return client, experiment_id, parent


def snapshot(client, experiment_id, parent) -> dict:
    runs = child_runs(client, experiment_id, parent, "search")
    return {
        t: (
            r.info.status,
            r.data.tags.get("outcome"),
            [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")],
        )  # fmt: skip
        for t, r in runs.items()
    }


def test_sync_builds_one_complete_run_per_trial_and_is_idempotent(experiment, store):
    client, experiment_id, parent = store
    changed = sync(experiment, client, experiment_id, parent, max_epochs=EPOCHS)
    assert changed["created"] == 4 and changed["ended"] == 4
    state = snapshot(client, experiment_id, parent)
    assert sorted(state.values()) == sorted([
        ("FINISHED", "completed", [1, 2, 3]), ("FINISHED", "completed", [1, 2, 3]),
        ("FINISHED", "stopped_early", [1, 2]), ("FAILED", "errored", [1]),
    ])  # fmt: skip
    errored = next(r for r in child_runs(client, experiment_id, parent, "search").values()
                   if r.data.tags["outcome"] == "errored")  # fmt: skip
    assert "boom at epoch 2" in errored.data.tags["error"]
    assert sync(experiment, client, experiment_id, parent, max_epochs=EPOCHS) == {
        "created": 0, "epochs": 0, "ended": 0, "deleted": 0,
    }  # fmt: skip
    assert snapshot(client, experiment_id, parent) == state


def test_sync_into_an_empty_store_writes_each_trial_in_four_requests(experiment, store, fake_data_dir, monkeypatch):
    """Sync sent 8 requests per trial: the parent's dataset read again for each, a new run's epochs read back, and
    params, epochs and end tags each a request of its own. At 124-194 ms per trial, 2,000 trials took 4-7 min."""
    client, experiment_id, parent = store
    mlflow_ui.log_dataset(client, parent, load_splits("fashion_mnist", str(fake_data_dir)), str(fake_data_dir))
    calls = Counter()

    def counted(name, method):
        return lambda *args, **kwargs: (calls.update([name]), method(*args, **kwargs))[1]

    for name in [n for n in dir(MlflowClient) if not n.startswith("_")]:  # every call of the client, forwarded
        if callable(method := getattr(client, name)):
            monkeypatch.setattr(client, name, counted(name, method))
    sync(experiment, client, experiment_id, parent, max_epochs=EPOCHS)
    # each of the 4 trials: create_run, log_inputs, one log_batch (params, epochs, outcome), set_terminated; once:
    # the children (search_runs) and the parent's dataset (get_run); the errored trial's trace (log_text, which
    # calls log_artifact). A new run's epochs are not read back (get_metric_history): it holds none.
    assert calls == {"search_runs": 1, "get_run": 1, "create_run": 4, "log_inputs": 4, "log_batch": 4,
                     "set_terminated": 4, "log_text": 1, "log_artifact": 1}, calls  # fmt: skip
    assert sorted(snapshot(client, experiment_id, parent).values()) == sorted([
        ("FINISHED", "completed", [1, 2, 3]), ("FINISHED", "completed", [1, 2, 3]),
        ("FINISHED", "stopped_early", [1, 2]), ("FAILED", "errored", [1]),
    ])  # fmt: skip
    runs = child_runs(client, experiment_id, parent, "search").values()
    assert all(r.data.params and r.inputs.dataset_inputs for r in runs)  # params and the dataset, as before


def test_sync_fills_what_live_logging_missed_and_deletes_runs_of_unknown_trials(experiment, store):
    client, experiment_id, parent = store
    trial_id = sorted(p.name for p in experiment.iterdir() if (p / "result.json").exists())[0]
    # live logging got epoch 1 of one trial in before the store went away; a killed driver left an orphan
    for tid, epochs in ((trial_id, 1), ("orphan", 2)):
        run = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent, "trial_id": tid,
                                                     "stage": "search"})  # fmt: skip
        client.log_batch(run.info.run_id, metrics=[Metric("val_acc", 0.1, 0, e) for e in range(1, epochs + 1)],
                         tags=[RunTag("epoch", str(epochs))])  # fmt: skip
    changed = sync(experiment, client, experiment_id, parent, max_epochs=EPOCHS)
    assert changed["deleted"] == 1 and changed["created"] == 3
    state = snapshot(client, experiment_id, parent)
    assert "orphan" not in state and len(state) == 4
    assert all(steps == sorted(set(steps)) for _, _, steps in state.values())  # no epoch twice
    assert state[trial_id][2] == list(range(1, len(state[trial_id][2]) + 1))


def test_sync_of_a_search_killed_before_its_first_snapshot_changes_nothing(tmp_path, store):
    client, experiment_id, parent = store
    assert sync(tmp_path / "never-started", client, experiment_id, parent, max_epochs=EPOCHS)["created"] == 0


def test_sync_of_a_search_killed_between_its_tuner_file_and_its_first_snapshot_changes_nothing(tmp_path, store):
    """Tune writes tuner.pkl when the Tuner is built and its first experiment snapshot only later (seen in CI)."""
    client, experiment_id, parent = store
    tune.Tuner(fake_trial, run_config=tune.RunConfig(name="killed", storage_path=str(tmp_path)))
    assert (tmp_path / "killed" / "tuner.pkl").exists()
    assert sync(tmp_path / "killed", client, experiment_id, parent, max_epochs=EPOCHS)["created"] == 0
    assert not has_snapshot(tmp_path / "killed")  # so a --resume starts it over instead of restoring it


def test_sync_logs_no_epoch_twice_when_a_kill_left_the_epoch_tag_behind_the_metrics(experiment, store):
    """MLflow's log_batch writes metrics, then tags, in separate transactions: a driver killed between the two
    leaves epoch 2's metrics with the tag still saying 1 (seen in CI as val_acc steps [1, 2, 2, 3])."""
    client, experiment_id, parent = store
    sync(experiment, client, experiment_id, parent, max_epochs=EPOCHS)
    trial_id, run = next((t, r) for t, r in child_runs(client, experiment_id, parent, "search").items()
                         if int(r.data.tags["epoch"]) == 3)  # fmt: skip
    client.delete_run(run.info.run_id)
    run_id = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent, "trial_id": trial_id,
                                                    "stage": "search"}).info.run_id  # fmt: skip
    client.log_batch(run_id, metrics=[Metric(k, 0.1, 0, e) for e in (1, 2) for k in ("val_acc", "train_loss")],
                     tags=[RunTag("epoch", "1")])  # fmt: skip
    assert has_snapshot(experiment)
    sync(experiment, client, experiment_id, parent, max_epochs=EPOCHS)
    steps = [m.step for m in client.get_metric_history(run_id, "val_acc")]
    assert steps == [1, 2, 3] and client.get_run(run_id).data.tags["epoch"] == "3"


@pytest.mark.parametrize("location", ["mlflow-artifacts:/1", "s3://bucket/x", "file:///srv/mlruns/1"])
def test_an_experiment_whose_artifacts_have_a_scheme_is_reused(sqlite_uri, location):
    """A server with proxied artifacts gives `mlflow-artifacts:/1`: a URI, not a relative folder."""
    client = MlflowClient(sqlite_uri)
    experiment_id = client.create_experiment("shared", artifact_location=location)
    assert ensure_experiment(client, "shared") == experiment_id


def test_sync_cli_takes_a_relative_search_folder(experiment, tmp_path, monkeypatch, sqlite_uri):
    """`python -m search.tracking sync runs/NAME`, as the README writes it, from the folder holding runs/."""
    uri = sqlite_uri
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "cli")
    parent = start_parent(client, experiment_id, "search", {}, {}, {})
    search = tmp_path / "runs" / "exp"
    shutil.copytree(experiment, search)
    state = SearchState("space.py", "sha", {}, experiment="cli", experiment_id=experiment_id,
                        parent_run_id=parent, tracking_uri=uri, max_epochs=EPOCHS)  # fmt: skip
    write_state(search, state)
    monkeypatch.chdir(tmp_path)
    assert tracking_main(["sync", "runs/exp"]) == 0
    assert len(child_runs(client, experiment_id, parent, "search")) == 4


def test_runs_carry_the_source_and_the_dataset_the_ui_lists(experiment, store, tmp_path):
    """The runs table's Source and Dataset columns: every run has MLflow's source tags and the search's data."""
    client, experiment_id, parent = store
    write_fake("fashion_mnist", str(tmp_path / "data"), train=300, test=50)
    splits = load_splits("fashion_mnist", str(tmp_path / "data"), val_fraction=0.2)
    mlflow_ui.log_dataset(client, parent, splits, str(tmp_path / "data"))
    sync(experiment, client, experiment_id, parent, max_epochs=EPOCHS)
    runs = [client.get_run(parent), *child_runs(client, experiment_id, parent, "search").values()]
    assert len(runs) == 5
    for run in runs:
        assert run.data.tags["mlflow.source.name"] and run.data.tags["mlflow.source.type"] == "LOCAL"
        (used,) = run.inputs.dataset_inputs
        assert used.dataset.name == "fashion_mnist" and len(used.dataset.digest) == 8
        assert json.loads(used.dataset.profile) == {"train": 240, "val": 60, "test": 50, "classes": 10,
                                                    "image": [1, 28, 28]}  # fmt: skip
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def _as_ray_leaves_a_killed_worker(experiment: Path, tmp_path: Path, max_failures: int) -> Path:
    """A copy of the experiment whose snapshot says what Ray 2.60 writes when a trial's worker process dies with
    no retries left: still RUNNING (an errored trial is not marked for the next snapshot), with its error.txt
    older than its result.json (the driver's last upload copies every file anew, in no set order)."""
    copy = shutil.copytree(experiment, tmp_path / "killed-worker")
    (state_file,) = copy.glob("experiment_state-*.json")
    state = json.loads(state_file.read_text())
    for i, (trial_json, metadata) in enumerate(state["trial_data"]):
        trial = json.loads(trial_json)
        if trial["status"] == "ERROR":
            trial.update(status="RUNNING", max_failures=max_failures)
            (copy / trial["trial_id"] / "result.json").touch()
            state["trial_data"][i] = [json.dumps(trial), metadata]
    state_file.write_text(json.dumps(state))
    return copy


@pytest.mark.parametrize(
    ("max_failures", "outcome", "status"), [(0, "errored", "FAILED"), (1, "interrupted", "KILLED")]
)
def test_a_trial_whose_worker_died_past_its_retries_is_errored_though_the_snapshot_says_running(
    experiment, store, tmp_path, max_failures, outcome, status
):
    """Seen in CI: a trial whose worker was SIGKILLed with MAX_FAILURES=0 was recorded `interrupted`, not `errored`.
    Its one failure is past 0 retries; with 1 retry left Tune would have run it again (the search was stopped)."""
    client, experiment_id, parent = store
    sync(_as_ray_leaves_a_killed_worker(experiment, tmp_path, max_failures), client, experiment_id, parent, EPOCHS)
    state = snapshot(client, experiment_id, parent)
    assert sorted(o for _, o, _ in state.values()) == sorted(["completed", "completed", "stopped_early", outcome])
    assert (status, outcome, [1]) in state.values()


def test_live_tracking_sends_each_trials_waiting_epochs_as_one_request_in_order():
    live = LiveTracking("sqlite:///unused.db", "0", "parent", max_epochs=3)

    def epoch(trial_id, n):
        return live._epoch, (trial_id, [{"epoch": n}])

    for item in [epoch("b", 1), epoch("a", 2), (live._end, ("a", "completed")), epoch("a", 3), None]:
        live._queue.put(item)
    sent = [
        (fn.__name__, args[0], [r["epoch"] for r in args[1]] if fn == live._epoch else args[1])
        for fn, args in live._coalesced([epoch("a", 1)])
    ]
    assert sent == [("_epoch", "a", [1, 2]), ("_epoch", "b", [1]), ("_end", "a", "completed"), ("_epoch", "a", [3])]
    assert live._queue.get_nowait() is None  # the end of the experiment stays for the worker's loop


def test_a_request_of_epochs_fits_one_mlflow_request_with_its_epoch_tag():
    """100 epochs x 11 metrics went over MLflow's 1,000 per request: MlflowClient.log_batch then splits it and
    sends the `epoch` tag with the first part, so a driver killed between the parts left a tag claiming epochs
    whose metrics never arrived (and sync trusts the tag)."""
    every_metric = _metrics({"epoch": 1, **dict.fromkeys(METRICS, 0.5)})
    assert len(every_metric) == len(METRICS)
    assert EPOCHS_PER_REQUEST * len(every_metric) + 2 <= MAX_METRICS_PER_BATCH  # and best_val_acc, best_epoch
    # the epoch and node_id tags, and what sync adds: a new run's params (at most MLflow's 100), outcome and error
    assert EPOCHS_PER_REQUEST * len(every_metric) + 2 + 2 + MAX_PARAMS_TAGS_PER_BATCH + 2 <= MAX_ENTITIES_PER_BATCH


def test_a_trial_asha_stopped_ends_finished_with_its_outcome_not_as_a_failure(experiment, store):
    """Stopping a weak trial early is the search working: KILLED drew the red cross of a failure in the MLflow UI
    (issue 21, defect 9). Its run ends FINISHED, its `outcome` tag says stopped_early; a run an older search left
    KILLED is corrected by the next sync."""
    client, experiment_id, parent = store
    sync(experiment, client, experiment_id, parent, max_epochs=EPOCHS)
    stopped = [r for r in child_runs(client, experiment_id, parent, "search").values()
               if r.data.tags["outcome"] == "stopped_early"]  # fmt: skip
    assert [(r.info.status, r.data.tags["epoch"]) for r in stopped] == [("FINISHED", "2")]
    client.set_terminated(stopped[0].info.run_id, status="KILLED")  # as the search ended it before
    assert sync(experiment, client, experiment_id, parent, max_epochs=EPOCHS)["ended"] == 1
    assert client.get_run(stopped[0].info.run_id).info.status == "FINISHED"


def _search_folder(experiment: Path, tmp_path: Path, client: MlflowClient, experiment_id: str, parent: str) -> Path:
    """runs/exp: a copy of the experiment with the search.json that `python -m search.tracking sync` reads."""
    folder = shutil.copytree(experiment, tmp_path / "runs" / "exp")
    state = SearchState("space.py", "sha", {}, experiment="sync", experiment_id=experiment_id,
                        parent_run_id=parent, tracking_uri=client.tracking_uri, max_epochs=EPOCHS)  # fmt: skip
    write_state(folder, state)
    return folder


def test_sync_cli_refuses_a_folder_without_its_snapshot_and_deletes_nothing(experiment, store, tmp_path, cli_exit):
    """Issue 22: a partial copy (no experiment_state-*.json) exited 0 having deleted every child run ("4 deleted")."""
    client, experiment_id, parent = store
    folder = _search_folder(experiment, tmp_path, client, experiment_id, parent)
    assert tracking_main(["sync", str(folder)]) == 0
    before = snapshot(client, experiment_id, parent)
    for state_file in folder.glob("experiment_state-*.json"):
        state_file.unlink()
    code, out, err = cli_exit(tracking_main, ["sync", folder])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{folder}: no Tune snapshot (experiment_state-*.json)" in err
    assert snapshot(client, experiment_id, parent) == before and len(before) == 4


def test_sync_without_a_snapshot_deletes_no_run(experiment, store, tmp_path):
    """At the start of a --resume or the end of a search, no snapshot means nothing known: runs are kept."""
    client, experiment_id, parent = store
    sync(experiment, client, experiment_id, parent, max_epochs=EPOCHS)
    before = snapshot(client, experiment_id, parent)
    copy = shutil.copytree(experiment, tmp_path / "partial", ignore=shutil.ignore_patterns("experiment_state-*"))
    assert sync(copy, client, experiment_id, parent, max_epochs=EPOCHS) == dict.fromkeys(
        ("created", "epochs", "ended", "deleted"), 0
    )
    assert snapshot(client, experiment_id, parent) == before and len(before) == 4


@pytest.mark.parametrize("damage", ["truncated", "empty", "a list"])
def test_sync_of_an_unreadable_snapshot_is_one_line_and_deletes_no_run(experiment, store, tmp_path, damage):
    client, experiment_id, parent = store
    sync(experiment, client, experiment_id, parent, max_epochs=EPOCHS)
    before = snapshot(client, experiment_id, parent)
    copy = shutil.copytree(experiment, tmp_path / "torn")
    (state_file,) = copy.glob("experiment_state-*.json")
    text = state_file.read_text()
    state_file.write_text({"truncated": text[: len(text) // 2], "empty": "", "a list": "[]"}[damage])
    with pytest.raises(UsageError, match=r"torn: Tune's snapshot \(experiment_state-\*.json\) is unreadable") as info:
        sync(copy, client, experiment_id, parent, max_epochs=EPOCHS)
    assert "\n" not in str(info.value)
    assert snapshot(client, experiment_id, parent) == before


@pytest.mark.slow
def test_sync_of_a_search_whose_store_is_down_says_so_in_seconds(tmp_path):
    """Issue 22: MLflow's default retries took 268 s to fail against a dead server; the CLI caps them as search.run
    does. A real process: the caps are environment defaults, set by the entry point."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tmp_path / "runs" / "exp"
    write_state(folder, SearchState("space.py", "sha", {}, experiment="x", experiment_id="1", parent_run_id="p",
                                    tracking_uri=f"http://127.0.0.1:{port}", max_epochs=EPOCHS))  # fmt: skip
    (folder / "experiment_state-2026-12-03_00-00-00.json").write_text("{}")  # reached only after the store
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "search.tracking", "sync", str(folder)], capture_output=True,
                            text=True, env=env, timeout=200)  # fmt: skip
    took = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and f"127.0.0.1:{port}" in result.stderr, result.stderr
    assert took < 60, took


def test_a_relative_sqlite_store_is_recorded_as_the_folder_it_was_started_in(tmp_path, monkeypatch):
    """MLflow's default store, `sqlite:///mlflow.db`, was kept relative in search.json: a --resume or sync from
    another folder opened (and created) another, empty store there."""
    monkeypatch.chdir(tmp_path)
    client = open_store("sqlite:///mlflow.db")
    assert client.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert open_store(client.tracking_uri).tracking_uri == client.tracking_uri  # an absolute one stays as it is


def _with_a_dip(experiment: Path, tmp_path: Path) -> Path:
    """A copy of the experiment whose best trial (x=0.5: 0.6, 0.7, 0.8) falls to 0.05 at its last epoch."""
    copy = shutil.copytree(experiment, tmp_path / "dip")
    for result_file in copy.glob("*/result.json"):
        lines = [json.loads(line) for line in result_file.read_text().splitlines()]
        if lines[0]["config"]["variant"]["x"] == 0.5:
            lines[-1]["val_acc"] = 0.05
            result_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return copy


def _ranked(client, experiment_id, parent) -> list[tuple]:
    """The runs table sorted by best_val_acc, as a person sorts it: (x, best_val_acc, best_epoch, outcome)."""
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'",
                              order_by=["metrics.best_val_acc DESC"])  # fmt: skip
    return [(float(r.data.params["x"]), round(r.data.metrics["best_val_acc"], 6),
             r.data.metrics["best_epoch"], r.data.tags["outcome"]) for r in runs]  # fmt: skip


RANKED = [(0.5, 0.7, 2.0, "completed"), (0.2, 0.4, 2.0, "stopped_early"), (0.0, 0.3, 3.0, "completed"),
          (0.1, 0.2, 1.0, "errored")]  # fmt: skip


def test_each_run_holds_its_best_epoch_so_the_runs_table_ranks_trials_by_it(experiment, store, tmp_path):
    """Issue 20 §3: the runs table showed the last epoch's val_acc, which ranked a trial that fell at its last epoch
    below one ASHA stopped; each run now holds best_val_acc and best_epoch, set by sync idempotently."""
    client, experiment_id, parent = store
    dip = _with_a_dip(experiment, tmp_path)
    sync(dip, client, experiment_id, parent, max_epochs=EPOCHS)
    assert _ranked(client, experiment_id, parent) == RANKED
    histories = {r.info.run_id: client.get_metric_history(r.info.run_id, "best_val_acc")
                 for r in child_runs(client, experiment_id, parent, "search").values()}  # fmt: skip
    assert sync(dip, client, experiment_id, parent, max_epochs=EPOCHS) == dict.fromkeys(
        ("created", "epochs", "ended", "deleted"), 0
    )
    assert {run_id: client.get_metric_history(run_id, "best_val_acc") for run_id in histories} == histories


def test_live_tracking_keeps_each_runs_best_epoch_as_epochs_arrive(experiment, store, tmp_path):
    """Epoch by epoch, as Tune reports them, then a restart of the driver (the best read back from MLflow): the
    same best as sync's, which then has nothing to change."""
    client, experiment_id, parent = store
    dip = _with_a_dip(experiment, tmp_path)
    live = LiveTracking(client.tracking_uri, experiment_id, parent, max_epochs=EPOCHS, ranking=Ranking())
    results = {p.name: [json.loads(line) for line in (p / "result.json").read_text().splitlines()]
               for p in dip.iterdir() if (p / "result.json").exists()}  # fmt: skip
    for trial_id, epochs in results.items():
        live._start(trial_id, epochs[0]["config"])
        live._epoch(trial_id, epochs[:1])
    live = LiveTracking(client.tracking_uri, experiment_id, parent, max_epochs=EPOCHS, ranking=Ranking())
    live._find_runs()  # a resumed driver: the best of the epochs MLflow already holds comes from there
    for trial_id, epochs in results.items():
        for result in epochs[1:]:
            live._epoch(trial_id, [result])
        live._end(trial_id, "completed")
    best = {t: (r.data.metrics["best_val_acc"], r.data.metrics["best_epoch"])
            for t, r in child_runs(client, experiment_id, parent, "search").items()}  # fmt: skip
    assert sorted((round(v, 6), e) for v, e in best.values()) == sorted((v, e) for _, v, e, _ in RANKED)
    assert sync(dip, client, experiment_id, parent, max_epochs=EPOCHS)["epochs"] == 0
    assert {t: (r.data.metrics["best_val_acc"], r.data.metrics["best_epoch"])
            for t, r in child_runs(client, experiment_id, parent, "search").items()} == best  # fmt: skip
    assert _ranked(client, experiment_id, parent) == RANKED


def test_sync_gives_runs_logged_before_they_held_their_best_epoch_one(experiment, store):
    """A search logged by an older version: every epoch in MLflow, no best_val_acc; the next sync adds it, and a
    metric that is better low ranks the other way (train_loss here: 1/epoch, best at the last epoch)."""
    client, experiment_id, parent = store
    sync(experiment, client, experiment_id, parent, max_epochs=EPOCHS)
    sync(experiment, client, experiment_id, parent, max_epochs=EPOCHS, ranking=Ranking("train_loss", "min"))
    runs = child_runs(client, experiment_id, parent, "search").values()
    assert sorted((r.data.metrics["best_train_loss"], r.data.metrics["best_epoch"]) for r in runs) == [
        (1 / 3, 3.0), (1 / 3, 3.0), (1 / 2, 2.0), (1.0, 1.0)
    ]  # fmt: skip


def test_the_saved_view_sorts_the_trials_by_their_best_epoch_and_shows_it(experiment, store, tmp_path):
    """The comparison view the summary links to: its filter and sort, asked of the store as the UI asks them."""
    client, experiment_id, parent = store
    sync(_with_a_dip(experiment, tmp_path), client, experiment_id, parent, max_epochs=EPOCHS)
    mlflow_ui.save_view(client, experiment_id, parent, "val_acc", ["x"])
    view = json.loads(client.get_experiment(experiment_id).tags[f"{mlflow_ui.SHARED_VIEW_TAG}search-{parent[:12]}"])
    assert view["selectedColumns"][:2] == ["metrics.`best_val_acc`", "metrics.`best_epoch`"]
    order = view["orderByKey"].replace("`", "") + (" ASC" if view["orderByAsc"] else " DESC")
    runs = client.search_runs([experiment_id], view["searchFilter"], order_by=[order])
    assert [float(r.data.params["x"]) for r in runs] == [x for x, *_ in RANKED]


def test_a_tag_left_behind_its_metrics_by_a_killed_driver_is_brought_up_to_them(experiment, store, tmp_path):
    """A driver killed between the metrics of epoch 3 and their `epoch` tag (two transactions in MLflow), before
    Tune's record had epoch 3: sync trusted the tag (2), so the resumed search's live logging, which reads it, logged
    epoch 3 a second time (seen as val_acc steps [1, 2, 3, 3] in a search killed three times)."""
    client, experiment_id, parent = store
    sync(experiment, client, experiment_id, parent, max_epochs=EPOCHS)
    copy = shutil.copytree(experiment, tmp_path / "killed")
    run = next(r for r in child_runs(client, experiment_id, parent, "search").values() if r.data.tags["epoch"] == "3")
    result = copy / run.data.tags["trial_id"] / "result.json"
    result.write_text("".join(result.read_text().splitlines(keepends=True)[:2]))  # the record has epochs 1 and 2
    client.set_tag(run.info.run_id, "epoch", "2")  # the tag lags the metrics, which hold epochs 1 to 3
    client.update_run(run.info.run_id, status="RUNNING")  # as the killed driver left it
    sync(copy, client, experiment_id, parent, max_epochs=EPOCHS)
    assert client.get_run(run.info.run_id).data.tags["epoch"] == "3"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2, 3]
