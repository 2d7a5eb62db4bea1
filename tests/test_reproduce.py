"""Reproducing a search and its trials (issue 20 §2, §5): the parent run records what shapes the configs a seeded
search proposes, and that search proposes the same configs in the same order again."""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from search import train
from search.searcher import make_sampler, make_searcher, sampler_settings
from search.space import load_space
from search.tracking import ensure_experiment, params_of, start_parent, versions
from search.train import TrainConfig, config_from_params

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACES = sorted((Path(__file__).parents[1] / "spaces").glob("*.py"))
TRIALS = 13  # past TPE's 10 random startup trials, so TPE's own proposals are compared too


def proposals(space, trials: int = TRIALS) -> list[dict]:
    """The configs a new searcher proposes, one trial at a time, each told a score that depends on its config."""
    searcher = make_searcher(space, max_concurrent=1)
    out = []
    for i in range(trials):
        config = searcher.suggest(f"t{i}")
        out.append(config)
        score = zlib.crc32(repr(sorted(config.items())).encode()) / 2**32  # a made-up score, the same every run
        result = {**dict.fromkeys(space.settings.objectives, score), "epoch": space.settings.MAX_EPOCHS}
        searcher.on_trial_complete(f"t{i}", result)
    return out


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_a_seeded_search_proposes_the_same_configs_in_the_same_order(path):
    space = load_space(path, smoke=True)
    first = proposals(space)
    assert proposals(space) == first
    assert proposals(load_space(path, {"SEED": 1}, smoke=True), 4) != first[:4]  # the seed is what it rests on


def test_the_parent_run_records_the_versions_and_the_samplers_own_settings(sqlite_uri):
    space = load_space(SPACES[0], smoke=True)
    used = make_searcher(space, max_concurrent=1).searcher.study.sampler  # the sampler the search asks
    recorded = sampler_settings(make_sampler(space.settings.SEED), space.settings.SEED)
    assert recorded == sampler_settings(used, space.settings.SEED)
    client = MlflowClient(sqlite_uri)
    parent = start_parent(client, ensure_experiment(client, "x"), "s", {**versions(), **recorded}, {}, {})
    params = client.get_run(parent).data.params
    assert {k: params[k] for k in ("sampler.seed", "sampler.multivariate", "sampler.constant_liar",
                                   "sampler.n_startup_trials")} == {"sampler.seed": "0", "sampler.multivariate": "True",
                                   "sampler.constant_liar": "True", "sampler.n_startup_trials": "10"}  # fmt: skip
    assert params["version.optuna"] == optuna.__version__ and params["version.python"].count(".") == 2
    assert {"version.torch", "version.torchvision", "version.ray", "version.mlflow"} <= params.keys()


def test_a_trials_params_give_back_its_exact_config():
    """What `--from-run` trains: the config search.tracking logged, every field and model option exact."""
    config = {"model": "vgg7", "dataset": "cifar100", "epochs": 3, "seed": 0, "val_fraction": 0.1,
              "train_subset": 512, "data_dir": "/data", "lr": 0.012345678901234567, "weight_decay": 1.9e-05,
              "nesterov": True, "milestones": "2,3", "width1": 16, "dropout": 0.123456789, "stride1": 2,
              "batch_norm": False, "act": "relu"}  # fmt: skip
    params = {p.key: p.value for p in params_of(config)}
    assert config_from_params(params) == {**config, **{k: str(v) for k, v in config.items()
                                                       if k in TrainConfig.__dataclass_fields__}}  # fmt: skip
    assert TrainConfig.from_dict(config_from_params(params)) == TrainConfig.from_dict(config)
    final = {**config, "variant": {"seed": 3, "source_trial": "abc_00001"}}  # a final retrain's run
    assert TrainConfig.from_dict(config_from_params({p.key: p.value for p in params_of(final)})) == \
        TrainConfig.from_dict({**config, "seed": 3})  # fmt: skip


@pytest.mark.parametrize("which", ["not a trial", "no such run"])
def test_from_run_of_a_run_that_is_no_trial_is_one_line(sqlite_uri, cli_exit, which):
    client = MlflowClient(sqlite_uri)
    experiment_id = ensure_experiment(client, "x")
    run_id = client.create_run(experiment_id, tags={"stage": "search"}).info.run_id  # no trial_id: someone else's
    if which == "no such run":
        run_id = "0" * 32
    before = len(client.search_runs([experiment_id]))
    code, out, err = cli_exit(train.main, ["--from-run", run_id, "--tracking-uri", sqlite_uri])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: --from-run {run_id}: ")
    assert ("not a search trial's run" if which == "not a trial" else "no such run") in err
    assert len(client.search_runs([experiment_id])) == before  # no run of its own left behind


@pytest.mark.slow  # a whole search (the session's smoke search of spaces/vgg_cifar100.py)
@pytest.mark.xdist_group("smoke_searches")  # made once per worker: its readers share one
def test_from_run_trains_a_trial_again_with_the_same_curve_into_a_run_that_points_back(
    finished_smoke_search, tmp_path, monkeypatch, cli_exit
):
    """`python -m search.train --from-run RUN_ID`, as the README writes it, with the store from the environment."""
    monkeypatch.chdir(tmp_path)
    done = finished_smoke_search("vgg_cifar100")
    shutil.copy(done.store / "mlflow.db", tmp_path / "mlflow.db")  # the new run goes into a copy of its store
    result, uri = done.result, f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    trials = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'")
    winner = next(r for r in trials if r.data.tags["trial_id"] == result.summary["best_trial"])
    logged = [m.value for m in sorted(client.get_metric_history(winner.info.run_id, "val_acc"), key=lambda m: m.step)]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    threads = torch.get_num_threads()
    try:
        code, out, err = cli_exit(train.main, ["--from-run", winner.info.run_id])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    (again,) = client.search_runs([parent.info.experiment_id], f"tags.reproduces = '{winner.info.run_id}'")
    assert f"mlflow run {again.info.run_id} reproduces {winner.info.run_id}" in out
    assert again.info.status == "FINISHED" and again.data.tags["outcome"] == "completed"
    curve = [m.value for m in sorted(client.get_metric_history(again.info.run_id, "val_acc"), key=lambda m: m.step)]
    assert len(logged) == int(parent.data.params["setting.MAX_EPOCHS"])  # the winner ran in full
    assert curve == logged  # every epoch's val_acc, exactly
    assert TrainConfig.from_dict(config_from_params(again.data.params)) == TrainConfig.from_dict(
        config_from_params(winner.data.params)
    )  # the same config, data_dir included
    assert "test_acc" in again.data.metrics
