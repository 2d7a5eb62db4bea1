"""`python -m search.run SPACE`: Ray Tune drives the trials, Optuna's TPE proposes configs, ASHA stops weak
ones early, MLflow records every trial under one parent run; at the end the winner is tested and logged.

The same is one Python call: `search.run.search("spaces/vgg_cifar100.py", smoke=True)`.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the compact CLIReporter table, plain lines off a terminal
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "0")
# MLflow's HTTP defaults retry for minutes; a search would rather buffer and retry at its next flush.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

import mlflow  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import ray  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler  # noqa: E402
from ray.tune.search import ConcurrencyLimiter  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from search import __version__, report  # noqa: E402
from search.cli import UsageError, parse_sets, run_main  # noqa: E402
from search.space import Space, distributions, load_space, parse_duration  # noqa: E402
from search.tracking import MLflowTrials, ensure_experiment, open_store, outcome_of  # noqa: E402
from search.train import TrainConfig, evaluate_test, load_data, model_from_checkpoint, test_batches  # noqa: E402
from search.trainable import CHECKPOINT_FILE, trainable  # noqa: E402

STATE_FILE = "search.json"  # beside Tune's own state: the parent run and the space file's fingerprint
STUDY_NAME = "search"


class SearchFailed(Exception):
    """The search ran but produced nothing to report (every trial failed)."""


class OptunaASHA(OptunaSearch):
    """OptunaSearch that tells the study how each trial really ended.

    Stock OptunaSearch tells every trial ASHA stopped as COMPLETE with its early-epoch score, which biases TPE
    toward configs that merely start fast. Here a stopped trial is PRUNED (its per-epoch values are already
    reported as intermediate values, which TPE uses to rank pruned trials), a diverged one COMPLETE with a
    penalty score, and a crashed one FAIL.
    """

    def __init__(self, *args, max_epochs: int, penalty: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs
        self.penalty = penalty

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get("outcome") == "diverged" or trial_id in self._completed_trials:
            return
        self._ot_trials[trial_id].report(result[self.metric], result["epoch"])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        trial, states = self._ot_trials[trial_id], optuna.trial.TrialState
        outcome = outcome_of(result, self.max_epochs, error)
        if outcome in ("completed", "stopped_early"):
            # Tune hands the result that made ASHA stop a trial to on_trial_complete only, not on_trial_result.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a step reported twice is ignored, with a warning
                trial.report(result[self.metric], result["epoch"])
        if outcome == "errored":
            self._ot_study.tell(trial, state=states.FAIL)
        elif outcome == "diverged":
            self._ot_study.tell(trial, self.penalty)
        elif outcome == "stopped_early":
            self._ot_study.tell(trial, state=states.PRUNED)
        else:
            self._ot_study.tell(trial, result[self.metric])
        self._completed_trials.add(trial_id)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    # The space comes from the space file at every start, not from the checkpoint: a define-by-run function
    # from a space file cannot be pickled by reference anyway.
    def save(self, checkpoint_path: str) -> None:
        state = {k: v for k, v in self.__dict__.items() if k != "_space"}
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class FixedParams:
    """Wraps a define-by-run space so `--set name=value` fixes a parameter it would otherwise suggest."""

    def __init__(self, space: Callable, fixed: dict):
        self.space, self.fixed = space, fixed

    def __call__(self, trial):
        return self.space(_FixedTrial(trial, self.fixed))


class _FixedTrial:
    def __init__(self, trial, fixed: dict):
        self._trial, self._fixed = trial, fixed

    def __getattr__(self, name: str):
        attr = getattr(self._trial, name)
        if not name.startswith("suggest_"):
            return attr
        return lambda param, *args, **kwargs: (
            self._fixed[param] if param in self._fixed else attr(param, *args, **kwargs)
        )


def make_searcher(space: Space, max_concurrent: int) -> ConcurrencyLimiter:
    s = space.settings
    # constant_liar: running trials count as bad guesses, so parallel workers don't all sample one spot.
    sampler = optuna.samplers.TPESampler(seed=s["SEED"], constant_liar=True, multivariate=True)
    searcher = OptunaASHA(
        # The space goes to the searcher, not to the Tuner's param_space: a searcher that Tune restores from an
        # experiment killed before its first snapshot must still know it.
        space=FixedParams(space.params, space.fixed) if callable(space.params) else distributions(space),
        metric=s["METRIC"], mode=s["MODE"], sampler=sampler, study_name=STUDY_NAME,
        points_to_evaluate=[dict(p) for p in s["START_WITH"]] or None,
        max_epochs=s["MAX_EPOCHS"], penalty=space.penalty(),
    )  # fmt: skip
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def load_study(experiment_path: str | Path, space: Space | None = None) -> optuna.Study:
    """The Optuna study of a search, as Tune last saved it (trials, states, intermediate values)."""
    if space is None:
        state = json.loads(Path(experiment_path, STATE_FILE).read_text())
        space = load_space(state["space_path"], state["overrides"], state["smoke"])
    limiter = make_searcher(space, 1)
    limiter.restore_from_dir(str(experiment_path))
    return limiter.searcher.study


@dataclass
class SearchResult:
    """What a search found. `summary` holds everything printed at the end."""

    best_config: dict
    best_val: float
    test: dict
    experiment_path: str
    parent_run_id: str
    tracking_uri: str
    summary: dict = field(default_factory=dict)
    results: object = None  # ray.tune.ResultGrid


def _concurrency(space: Space) -> int:
    """Trials at once: what the cluster holds for the per-trial resources, capped by MAX_CONCURRENT."""
    s, total = space.settings, ray.cluster_resources()
    fits = [int(total.get("CPU", 1) // s["CPUS_PER_TRIAL"])]
    if s["GPUS_PER_TRIAL"] > 0:
        if total.get("GPU", 0) < s["GPUS_PER_TRIAL"]:
            raise UsageError(f"GPUS_PER_TRIAL={s['GPUS_PER_TRIAL']}: the Ray cluster has {total.get('GPU', 0):g} GPUs")
        fits.append(int(round(total["GPU"] / s["GPUS_PER_TRIAL"], 6)))
    if fits[0] < 1:
        raise UsageError(f"CPUS_PER_TRIAL={s['CPUS_PER_TRIAL']:g}: the Ray cluster has {total.get('CPU', 0):g} CPUs")
    n = min(fits)
    return min(n, s["MAX_CONCURRENT"]) if s["MAX_CONCURRENT"] else n


NETWORK_FILESYSTEMS = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "lustre",
    "gpfs",
    "beegfs",
    "cephfs",
    "ceph",
    "fuse.",
    "glusterfs",
)


def check_shared_storage(storage: str) -> None:
    """A multi-node search needs checkpoints every node can read: a URI or a network filesystem.

    Raises:
        UsageError: when the Ray cluster has several nodes and `storage` is on a local disk.
    """
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2 or "://" in storage:
        return
    path, fstype = Path(storage).resolve(), "unknown"
    best = ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, kind, *_ = line.split()
        if (str(path) + "/").startswith(mount.rstrip("/") + "/") and len(mount) >= len(best):
            best, fstype = mount, kind
    if not fstype.startswith(NETWORK_FILESYSTEMS):
        raise UsageError(
            f"--storage {storage}: the Ray cluster has {len(nodes)} nodes but this path is on a local {fstype} "
            "disk; a multi-node search needs shared storage for checkpoints (an NFS path or an s3:// URI), or "
            "--shared-storage if every node does see this path (nodes on one machine)"
        )


def check_writable(storage: str) -> None:
    """Fails before anything starts when checkpoints could not be written (URIs are left to Ray)."""
    if "://" in storage:
        return
    existing = Path(storage)
    while not existing.exists():  # checked without creating anything: nothing is written before the search
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--storage {storage}: cannot write there ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--storage {storage}: cannot write there (no write permission on {existing})")


def _find_previous(storage: str, stem: str) -> str:
    found = sorted(Path(storage).glob(f"{stem}-*/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UsageError(f"--resume: no search of {stem} under {storage}; give --name of the search to resume")
    return found[-1].parent.name


def search(
    space_path: str,
    *,
    smoke: bool = False,
    sets: dict | None = None,
    num_samples: int | None = None,
    max_epochs: int | None = None,
    name: str = "",
    resume: bool = False,
    storage: str = "runs",
    shared_storage: bool = False,
    tracking_uri: str = "",
    data_dir: str = "",
    address: str = "",
    time_budget: str = "",
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    max_concurrent: int | None = None,
    final_top_k: int = 0,
    final_seeds: int = 3,
    quiet: bool = False,
) -> SearchResult:
    """Runs (or resumes) a search of one space file and returns what it found.

    Args:
        space_path: a file in spaces/.
        smoke: a tiny budget, the whole pipeline in a few minutes on 2 CPU cores.
        sets: `--set` overrides: UPPER_CASE keys are settings, others fix a parameter.
        num_samples, max_epochs, time_budget, cpus_per_trial, gpus_per_trial, max_concurrent: shortcuts for
            the NUM_SAMPLES, MAX_EPOCHS, TIME_BUDGET, CPUS_PER_TRIAL, GPUS_PER_TRIAL, MAX_CONCURRENT settings.
        name: the search's name (default: the space file's name and the start time); with `resume`, which one.
        resume: continue an interrupted search to its end.
        storage: local path or URI (s3://, NFS path for clusters) for Tune state and checkpoints.
        shared_storage: every node of the Ray cluster sees `storage` (skips the shared storage check).
        tracking_uri: MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else MLflow's default, ./mlflow.db).
        data_dir: where datasets live on every node (default ./data or $SEARCH_DATA_DIR).
        address: an existing Ray cluster ("auto", "ray://...", host:port); default starts a local one.
        final_top_k, final_seeds: retrain the K best configs from scratch with S seeds each.
        quiet: no live table.
    """
    overrides = dict(sets or {})
    for key, value in (
        ("NUM_SAMPLES", num_samples), ("MAX_EPOCHS", max_epochs), ("TIME_BUDGET", time_budget),
        ("CPUS_PER_TRIAL", cpus_per_trial), ("GPUS_PER_TRIAL", gpus_per_trial), ("MAX_CONCURRENT", max_concurrent),
    ):  # fmt: skip
        if value not in (None, ""):
            overrides[key] = value
    space = load_space(space_path, overrides, smoke)
    if final_top_k < 0 or final_seeds < 1:
        raise UsageError("--final-top-k must be >= 0 and --final-seeds >= 1")
    storage = storage if "://" in storage else str(Path(storage).resolve())
    data_dir = str(Path(data_dir).resolve()) if data_dir else ""
    if resume:
        name = name or _find_previous(storage, space.name)
        saved = _read_state(storage, name)
        if saved["space_sha"] != space.sha:
            raise UsageError(
                f"--resume {name}: it searched {saved['space_path']} as it was then; {space.path} has changed"
            )
        space = load_space(space_path, saved["overrides"], saved["smoke"])
        data_dir = data_dir or saved["data_dir"]
    else:
        name = name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if _state_path(storage, name).exists():
            raise UsageError(f"--name {name}: a search of that name exists in {storage}; use --resume or a new name")

    if not resume:
        check_writable(storage)
    # The driver reads the data too (final test): missing or corrupt files, or subsets larger than the data,
    # fail here, before any trial.
    load_data(TrainConfig.from_dict(space.base_config(data_dir)))
    client = open_store(tracking_uri)
    mlflow.set_tracking_uri(client.tracking_uri)  # the winner's model is logged through MLflow's fluent API
    experiment_id = ensure_experiment(client, saved["experiment"] if resume else space.name)

    if not address:  # the local Ray started here passes its environment on to its workers
        # Tune runs each trial in a new thread, and glibc gives new threads new malloc arenas that keep what they
        # freed: a worker would grow by tens of MB per trial (bench/memory.py).
        os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    ray.init(address=address or None, ignore_reinit_error=True, log_to_driver=not quiet, include_dashboard=False)
    if threading.current_thread() is threading.main_thread():  # after ray.init: its handler exits at once
        signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    if not shared_storage:
        check_shared_storage(storage)
    start = time.time()
    if resume:
        parent_run_id = saved["parent_run_id"]
        client.update_run(parent_run_id, status="RUNNING")
    else:
        parent_run_id = _start_parent(client, experiment_id, name, space, overrides, smoke, data_dir)
        _write_state(storage, name, {
            "space_path": str(space.path), "space_sha": space.sha, "overrides": overrides, "smoke": smoke,
            "data_dir": data_dir, "experiment": space.name, "parent_run_id": parent_run_id,
            "tracking_uri": client.tracking_uri,
        })  # fmt: skip
    try:
        results = _fit(space, name, storage, client, experiment_id, parent_run_id, data_dir, resume, quiet)
        experiment_path = results.experiment_path
        if _unfinished(results, space):
            raise KeyboardInterrupt
        result = _finish(space, results, client, parent_run_id, data_dir, final_top_k, final_seeds, start)
    except KeyboardInterrupt:
        _end_parent(client, parent_run_id, "KILLED", state=f"interrupted; resume with --resume --name {name}")
        print(f"interrupted: resume with  python -m search.run {space.path} --resume --name {name}")
        raise
    except (MlflowException, OSError) as exc:
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise SearchFailed(
            f"MLflow store {client.tracking_uri} failed at the end ({reason}); the search's results are safe "
            f"under {storage}/{name}: once the store is back, run  python -m search.run {space.path} --resume "
            f"--name {name}  to complete its runs"
        ) from None
    except BaseException as exc:
        _end_parent(client, parent_run_id, "FAILED", error=f"{type(exc).__name__}: {exc}"[:5000])
        raise
    result.experiment_path = experiment_path
    client.set_terminated(parent_run_id, status="FINISHED")
    report.print_summary(result.summary)
    return result


def _end_parent(client, run_id: str, status: str, **tags) -> None:
    try:
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        client.set_terminated(run_id, status=status)
    except (MlflowException, OSError):  # the store is away; --resume ends the run properly
        pass


def _state_path(storage: str, name: str) -> Path:
    if "://" in storage:
        raise UsageError("remote --storage: keep search state on a shared path for now (an NFS mount)")
    return Path(storage, name, STATE_FILE)


def _read_state(storage: str, name: str) -> dict:
    path = _state_path(storage, name)
    if not path.exists():
        raise UsageError(f"--resume {name}: no such search under {storage}")
    return json.loads(path.read_text())


def _write_state(storage: str, name: str, state: dict) -> None:
    path = _state_path(storage, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def _start_parent(client, experiment_id, name, space: Space, overrides, smoke, data_dir) -> str:
    tags = {"mlflow.runName": name, "space": str(space.path), "smoke": str(smoke), "git_commit": report.git_commit()}
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    params = {f"setting.{k}": v for k, v in space.settings.items() if k not in ("FIXED", "SMOKE")}
    params.update({f"fixed.{k}": v for k, v in space.base_config(data_dir).items()})
    params["package_version"] = __version__
    params["overrides"] = json.dumps(overrides)
    from search.tracking import log_batched, params_of

    log_batched(client, run_id, params=params_of(params))
    client.log_text(run_id, space.source, f"space/{space.path.name}")
    return run_id


def _fit(space: Space, name, storage, client, experiment_id, parent_run_id, data_dir, resume, quiet):
    s = space.settings
    resources = {"cpu": s["CPUS_PER_TRIAL"], "gpu": s["GPUS_PER_TRIAL"]}
    fn = tune.with_resources(trainable, resources)
    path = os.path.join(storage, name)
    if resume and tune.Tuner.can_restore(path):
        # param_space is not restored from the experiment: trials created from now on need it again
        tuner = tune.Tuner.restore(
            path, fn, resume_unfinished=True, resume_errored=False, param_space=space.base_config(data_dir)
        )
        return tuner.fit()
    hint = f"python -m search.run {space.path} --resume --name {name}"
    callback = MLflowTrials(client.tracking_uri, experiment_id, parent_run_id, s["MAX_EPOCHS"], resume_hint=hint)
    searched = list(space.params) if isinstance(space.params, dict) else []
    reporter = tune.CLIReporter(
        metric_columns={"epoch": "epoch", s["METRIC"]: s["METRIC"], "outcome": "outcome"},
        parameter_columns=searched[:6] or None,
        max_report_frequency=30,
        sort_by_metric=True,
        metric=s["METRIC"],
        mode=s["MODE"],
    )
    tuner = tune.Tuner(
        fn,
        param_space=space.base_config(data_dir),
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(space, _concurrency(space)),
            scheduler=ASHAScheduler(
                time_attr="epoch", metric=s["METRIC"], mode=s["MODE"], max_t=s["MAX_EPOCHS"],
                grace_period=s["GRACE_PERIOD"], reduction_factor=s["REDUCTION_FACTOR"],
            ),
            num_samples=s["NUM_SAMPLES"],
            time_budget_s=parse_duration(s["TIME_BUDGET"]) if s["TIME_BUDGET"] else None,
            reuse_actors=True,  # one worker process, one dataset load, many trials
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=[callback],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=s["MAX_FAILURES"]),
            progress_reporter=None if quiet else reporter,
            verbose=0 if quiet else 1,
        ),
    )  # fmt: skip
    return tuner.fit()


def _trial_dirname(trial) -> str:
    return trial.trial_id  # not Tune's default, the whole config spelled out in a path


def _unfinished(results, space: Space) -> bool:
    """True when Tune returned early (Ctrl-C, SIGTERM): trials left pending or paused, or never created."""
    if results.num_terminated + results.num_errors < len(results):
        return True
    return len(results) < space.settings["NUM_SAMPLES"] and not space.settings["TIME_BUDGET"]


def _finish(space, results, client, parent_run_id, data_dir, final_top_k, final_seeds, start) -> SearchResult:
    s = space.settings
    frame = report.trials_frame(results, space)
    done = frame[frame.outcome == "completed"]
    pool = done if len(done) else frame[frame.outcome == "stopped_early"]  # a time budget may stop them all
    if pool.empty:
        first = next((r.error for r in results if r.error is not None), None)
        reason = str(first).strip().splitlines()[-1][:300] if first else "no results"
        counts = ", ".join(f"{n} {o}" for o, n in frame.outcome.value_counts().items())
        raise SearchFailed(f"no trial finished ({counts}); the last line of an error: {reason}")
    best_row = pool.sort_values(s["METRIC"], ascending=s["MODE"] == "min").iloc[0]
    checkpoint = Path(best_row.checkpoint) / CHECKPOINT_FILE
    model, config = model_from_checkpoint(checkpoint)
    config.data_dir = data_dir
    test = evaluate_test(model, config, load_data(config))

    with mlflow.start_run(run_id=parent_run_id, log_system_metrics=False):
        mlflow.log_metrics({f"best_{s['METRIC']}": float(best_row[s["METRIC"]]), **test})
        mlflow.log_params({f"best.{k}": v for k, v in config.flat().items() if k != "data_dir"})
        mlflow.set_tag("best_trial_id", best_row.trial_id)
        example = next(iter(test_batches(config, load_data(config))))[0][:2].cpu()
        mlflow.pytorch.log_model(model.eval(), name="model", input_example=example.numpy())
        mlflow.log_artifact(str(checkpoint), "best")
        model_uri = mlflow.get_artifact_uri("model")

    final = None
    if final_top_k:
        top = pool.sort_values(s["METRIC"], ascending=s["MODE"] == "min").head(final_top_k)
        final = _retrain(space, top, frame.attrs["params"], final_seeds, data_dir, results, client, parent_run_id)
    summary = report.summarize(space, frame, best_row, test, start, model_uri, final)
    study = load_study(results.experiment_path, space)
    report.log_to_parent(client, parent_run_id, space, frame, study, summary)
    best_config = {k: best_row[k] for k in frame.attrs["params"]}
    return SearchResult(
        best_config=best_config, best_val=float(best_row[s["METRIC"]]), test=test,
        experiment_path=results.experiment_path, parent_run_id=parent_run_id, tracking_uri=client.tracking_uri,
        summary=summary, results=results,
    )  # fmt: skip


def _retrain(space, top, params, seeds, data_dir, results, client, parent_run_id) -> dict:
    """Retrains each of the top configs from scratch with `seeds` new seeds, for the full epoch budget.

    A winner can be an accident of one seed; the spread over seeds says how much of its lead is real. Runs as
    its own Tune experiment beside the search (so --resume continues it too), each run a child of the parent.
    """
    s = space.settings
    variants = [
        {**{p: _plain(row[p]) for p in params}, "seed": s["SEED"] + 1 + i, "source_trial": row.trial_id}
        for _, row in top.iterrows()
        for i in range(seeds)
    ]
    path = results.experiment_path + "-final"
    fn = tune.with_resources(trainable, {"cpu": s["CPUS_PER_TRIAL"], "gpu": s["GPUS_PER_TRIAL"]})
    if tune.Tuner.can_restore(path):
        param_space = {**space.base_config(data_dir), "variant": tune.grid_search(variants)}
        retrained = tune.Tuner.restore(path, fn, resume_unfinished=True, param_space=param_space).fit()
    else:
        callback = MLflowTrials(
            client.tracking_uri, client.get_run(parent_run_id).info.experiment_id, parent_run_id, s["MAX_EPOCHS"],
            tags={"stage": "final"},
        )  # fmt: skip
        retrained = tune.Tuner(
            fn,
            param_space={**space.base_config(data_dir), "variant": tune.grid_search(variants)},
            tune_config=tune.TuneConfig(
                reuse_actors=True, trial_dirname_creator=_trial_dirname, max_concurrent_trials=_concurrency(space)
            ),
            run_config=tune.RunConfig(
                name=Path(path).name, storage_path=str(Path(path).parent), callbacks=[callback], verbose=0,
                failure_config=tune.FailureConfig(max_failures=s["MAX_FAILURES"]),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        ).fit()  # fmt: skip
    rows = []
    for r in retrained:
        if r.checkpoint is None or r.error is not None:
            continue
        model, config = model_from_checkpoint(Path(r.checkpoint.path) / CHECKPOINT_FILE)
        config.data_dir = data_dir
        rows.append({"source": r.config["variant"]["source_trial"], **evaluate_test(model, config)})
    by_source = pd.DataFrame(rows).groupby("source", sort=False).test_acc if rows else None
    configs = [
        {
            "trial_id": trial_id, "seeds": int(acc.count()), "test_acc_mean": round(float(acc.mean()), 4),
            "test_acc_std": round(float(acc.std(ddof=1)) if acc.count() > 1 else 0.0, 4),
        }
        for trial_id, acc in (by_source or [])
    ]  # fmt: skip
    for row in configs:
        client.log_metric(parent_run_id, f"final.{row['trial_id']}.test_acc_mean", row["test_acc_mean"])
        client.log_metric(parent_run_id, f"final.{row['trial_id']}.test_acc_std", row["test_acc_std"])
    return {"configs": configs, "experiment_path": path}


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m search.run", description=__doc__.split("\n\n")[0])
    p.add_argument("space", help="space file, e.g. spaces/vgg_cifar100.py")
    p.add_argument("--smoke", action="store_true", help="whole pipeline on a tiny budget (minutes on a CPU)")
    p.add_argument("--num-samples", type=int, help="trials (NUM_SAMPLES)")
    p.add_argument("--max-epochs", type=int, help="epochs of a full trial (MAX_EPOCHS)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a SETTING or fix a parameter")
    p.add_argument("--name", default="", help="search name (default: space name + start time)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search (the latest, or --name)")
    p.add_argument("--storage", default="runs", help="path or URI for Tune state and checkpoints (default ./runs)")
    p.add_argument("--shared-storage", action="store_true", help="every node sees --storage: skip the check")
    p.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--data-dir", default="", help="dataset folder (default ./data or $SEARCH_DATA_DIR)")
    p.add_argument("--address", default="", help="existing Ray cluster address (default: start a local one)")
    p.add_argument("--time-budget", default="", help="wall-clock limit, e.g. 2h or 90m")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; 0.25 packs four trials on a GPU")
    p.add_argument("--max-concurrent", type=int, help="cap on trials at once (default: what the cluster holds)")
    p.add_argument("--final-top-k", type=int, default=0, help="retrain the K best configs from scratch")
    p.add_argument("--final-seeds", type=int, default=3, help="seeds per config for --final-top-k")
    p.add_argument("--quiet", action="store_true", help="no live table")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _stop_like_ctrl_c(signum, frame) -> None:
    # Slurm (time limit, preemption, scancel) and `ray job stop` send SIGTERM: stop as on Ctrl-C, so that Tune
    # saves its state and the parent run says how to --resume. Once: Slurm may signal both this process and the
    # batch script that forwards it, and a second Ctrl-C would skip Tune's last save.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    handler = signal.getsignal(signal.SIGINT)  # Tune's while it runs; called directly, Ray blocks SIGINT in jobs
    if not callable(handler):
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for flag in ("num_samples", "max_epochs", "max_concurrent"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "max_concurrent" else 1):
            raise UsageError(f"--{flag.replace('_', '-')} {value}: must be at least 1")
    kwargs = {k: v for k, v in vars(args).items() if k not in ("space", "set", "debug")}
    try:
        search(args.space, sets=parse_sets(args.set), **kwargs)
    except ConnectionError as exc:
        raise UsageError(str(exc)) from None
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
