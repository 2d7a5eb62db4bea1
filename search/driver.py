"""The search itself, behind `search.run.search`: `prepare` checks everything and connects (the space, storage,
data, the MLflow store, Ray), `fit` runs the trials, `finish` tests the winner, logs it and reports.

`search.run` imports this module only once the command line and the space file's settings have passed their
checks: torch, torchvision, Ray and MLflow load here, which takes seconds.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import mlflow
import pandas as pd
from ray import tune

from search import __version__, cluster, mlflow_ui, narrow, record, registry, report
from search.data import DEFAULT_DATA_DIR, note_if_fake
from search.errors import Interrupted, SearchFailed, UsageError, one_line
from search.final import retrain
from search.progress import SearchReporter, cost_line
from search.record import (
    SearchState,
    check_storage,
    claim,
    latest,
    read_state,
    state_path,
    trial_count,
    unfinished_trials,
    write_best_config,
    write_state,
)
from search.searcher import load_study, make_sampler, sampler_settings, warm_trials
from search.space import Space, load_space
from search.state import SearchJob
from search.tracking import (
    LiveTracking,
    Ranking,
    discard_parents,
    end_parent,
    ensure_experiment,
    fail_pending_models,
    fluent_store,
    open_store,
    start_parent,
    sync,
    versions,
)
from search.train import TrainConfig, evaluate_test, load_data, model_from_checkpoint, test_batches
from search.trainable import CHECKPOINT_FILE, shared_data, trainable
from search.tuner import build_tuner
from search.tuner import fit as tuner_fit


@dataclass
class SearchResult:
    """What a search found. `summary` holds everything printed at the end; `trials` is the trials table (one row
    per trial, `report.trials_frame`), `pool` its rows the winner was chosen from (those that ran in full, if any).

    The `plot_*` methods draw the parent run's plots again, as figures that show in a notebook when they are a
    cell's value.
    """

    best_config: dict
    best_val: float
    test: dict
    experiment_path: str
    parent_run_id: str
    tracking_uri: str
    trials: pd.DataFrame
    pool: pd.DataFrame
    ranking: Ranking
    summary: dict = field(default_factory=dict)
    results: tune.ResultGrid | None = None

    def plot_curves(self) -> report.Figure:
        """Every trial's METRIC per epoch, coloured by outcome (plots/learning_curves.png)."""
        return report.plot_curves(self.trials, self.ranking.metric)

    def plot_front(self) -> report.Figure:
        """METRIC against MACs and against training speed, with the front of `pool` (plots/pareto_front.png)."""
        return report.plot_front(self.trials, self.ranking.metric, self.ranking.mode, self.pool)

    def plot_importance(self) -> report.Figure:
        """The summary's PED-ANOVA importances (plots/importance.png).

        Raises:
            ValueError: the search had too few completed trials for them; the message says how few.
        """
        return report.plot_importance(self.summary.get("importance", {"skipped": "no importances were computed"}))


def run_search(
    space_path: str,
    overrides: dict,
    *,
    smoke: bool,
    name: str,
    resume: bool,
    storage: str,
    tracking_uri: str,
    data_dir: str,
    address: str,
    quiet: bool,
    warm_start: str,
    final_top_k: int,
    final_front: bool,
    final_seeds: int,
) -> SearchResult:
    """`search.run.search` once its arguments are checked: prepares, runs and finishes a search, and ends its
    parent run FINISHED, FAILED or KILLED."""
    with _interrupts():  # from here on, Ctrl-C and SIGTERM at any moment end it KILLED, resumable
        start = time.time()
        job = prepare(
            space_path, overrides, smoke=smoke, name=name, resume=resume, storage=storage, tracking_uri=tracking_uri,
            data_dir=data_dir, address=address, quiet=quiet, warm_start=warm_start,
        )  # fmt: skip
        try:
            results = fit(job, quiet)
            if _unfinished(job, results):
                raise KeyboardInterrupt
            result = finish(job, results, final_top_k, final_front, final_seeds, start)
            _stop_point()
        except BaseException as exc:
            outage = _storage_outage(job, exc)
            if isinstance(exc, KeyboardInterrupt) and not outage:
                fail_pending_models(job.client, job.experiment_id, job.parent_run_id)  # a model logged halfway
                end_parent(job.client, job.parent_run_id, "KILLED",
                           state=f"interrupted; resume with {job.resume_command}")  # fmt: skip
                raise Interrupted(f"resume with  {job.resume_command}") from None
            end_parent(job.client, job.parent_run_id, "FAILED", error=outage or f"{type(exc).__name__}: {exc}"[:5000])
            if outage:
                raise SearchFailed(outage) from None
            if isinstance(exc, UsageError):
                raise
            if _is_store_error(exc):
                raise SearchFailed(
                    f"MLflow store {job.client.tracking_uri} failed at the end ({one_line(exc)}); the search's results "
                    f"are safe under {job.path}: once the store is back, run  python -m search.tracking sync "
                    f"{job.path}  (or {job.resume_command}) to complete its runs"
                ) from None
            raise
        end_parent(job.client, job.parent_run_id, "FINISHED", state="converged" if "converged_after" in result.summary
                   else "finished")  # fmt: skip
        report.print_summary(result.summary)
        return result


def _storage_outage(job: SearchJob, exc: BaseException) -> str:
    """The one line for a search that its storage stopped (an OSError on the way to it, or the trials stopped by
    `StorageWatch`, which no Ctrl-C did), or '' when the storage answers: then `exc` is something else."""
    if not isinstance(exc, OSError) and not (isinstance(exc, KeyboardInterrupt) and not _STOP.is_set()):
        return ""
    reason = record.unreachable(job.path)
    return reason and (
        f"storage {job.storage} does not answer ({reason}); the search stopped with what it had saved there: once "
        f"the storage is back, resume with  {job.resume_command}"
    )


def _is_store_error(exc: BaseException) -> bool:
    """Whether `exc` is the MLflow store failing (MLflow's own errors, or HTTP ones on the way to a server); any
    other OSError (a file, a vanished working folder) is a bug or a fault of its own and keeps its traceback."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    return isinstance(exc, (MlflowException, RequestException))


def prepare(
    space_path: str,
    overrides: dict,
    *,
    smoke: bool,
    name: str,
    resume: bool,
    storage: str,
    tracking_uri: str,
    data_dir: str,
    address: str,
    quiet: bool,
    warm_start: str = "",
) -> SearchJob:
    """Checks everything and connects: the space file, storage, data, the MLflow store and Ray; then (and only
    then) writes the search's state and its parent run. A mistake raises UsageError with nothing created."""
    space = load_space(space_path, overrides, smoke)
    storage = storage if "://" in storage else str(Path(storage).resolve())
    data_dir = str(Path(data_dir).expanduser().resolve()) if data_dir else ""
    saved = None
    if resume:
        name = name or latest(storage, space.name)
        if not record.exists(state_path(storage, name)):
            raise UsageError(f"--resume {name}: no such search under {storage}")
        saved = read_state(record.join(storage, name))
        if saved.space_sha != space.sha:
            raise UsageError(
                f"--resume {name}: it searched {saved.space_path} as it was then; {space.path} has changed"
            )
        overrides = _extended(name, saved, overrides, storage)
        space = load_space(space_path, overrides, saved.smoke)
        data_dir = data_dir or saved.data_dir
    else:
        name = name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if record.exists(state_path(storage, name)):
            raise UsageError(f"--name {name}: a search of that name exists in {storage}; use --resume or a new name")
        check_storage(storage)
    # Each trial runs in a working folder of Ray's: the default ./data, like every relative path, means the folder
    # the search started in, for the driver and every trial, and is stored so that --resume finds it too.
    data_dir = data_dir or str(Path(DEFAULT_DATA_DIR).expanduser().resolve())
    data_tags = note_if_fake(space.base_config(data_dir)["dataset"], data_dir)  # the first line says fake data
    warm = _warm_start(warm_start, storage, space) if warm_start else []
    # The driver reads the data too (final test): missing or corrupt files, or subsets larger than the data,
    # fail here, before any trial.
    splits = load_data(TrainConfig.from_dict(space.base_config(data_dir)))
    client = open_store(tracking_uri or (saved.tracking_uri if saved else ""))
    experiment_id = ensure_experiment(client, saved.experiment if saved else space.name)

    cluster.connect(address, quiet)
    _stop_on_sigterm()  # ray.init installs its own handlers (cluster._sigterm_as_interrupt while it runs)
    cluster.check_shared_storage(storage)
    cluster.concurrency(space.settings)  # a trial larger than the cluster: refused before the search exists
    if saved and saved.parent_run_id:
        parent_run_id = saved.parent_run_id
        job = SearchJob(space, name, storage, data_dir, client, experiment_id, parent_run_id)
        # first of all, what a store that was away missed; a record that cannot be read back (a truncated snapshot,
        # a torn result line) stops the resume here with one line, the parent as the interruption left it
        sync(job.path, client, experiment_id, parent_run_id, space.settings.MAX_EPOCHS, ranking=_ranking(space))
        if overrides != saved.overrides:  # extended; the parent's params cannot change, so a tag says so
            client.set_tag(parent_run_id, "extended.NUM_SAMPLES", str(space.settings.NUM_SAMPLES))
            write_state(record.join(storage, name), replace(saved, overrides=overrides))
        if "error" in client.get_run(parent_run_id).data.tags:  # what stopped it last time (a storage outage)
            client.delete_tag(parent_run_id, "error")
        client.update_run(parent_run_id, status="RUNNING")
        return job
    if saved:  # killed while it started, before it recorded its parent run: no trial ran; it starts now, in place
        smoke, warm_start = saved.smoke, saved.warm_start  # of any parent run it had begun
        warm = _warm_start(warm_start, storage, space) if warm_start else []
        discard_parents(client, experiment_id, saved.claim_id)
        state, starting = replace(saved, overrides=overrides), nullcontext()
    else:
        state = SearchState(
            space_path=str(space.path), space_sha=space.sha, overrides=overrides, smoke=smoke, data_dir=data_dir,
            experiment=space.name, experiment_id=experiment_id, tracking_uri=client.tracking_uri,
            max_epochs=space.settings.MAX_EPOCHS, metric=space.settings.METRIC, mode=space.settings.MODE,
            warm_start=warm_start, claim_id=uuid.uuid4().hex,
        )  # fmt: skip
        starting = claim(storage, name, state)  # of two searches started with one --name, the second stops here
    params = {f"setting.{k}": v for k, v in vars(space.settings).items() if k not in ("FIXED", "SMOKE")}
    params.update({f"fixed.{k}": v for k, v in space.base_config(data_dir).items()})
    params.update({"package_version": __version__, "overrides": json.dumps(overrides), "warm_start": warm_start})
    params.update({**versions(), **sampler_settings(make_sampler(space.settings.SEED), space.settings.SEED)})
    tags = {"space": str(space.path), "smoke": str(smoke), "search_claim": state.claim_id, **data_tags}
    with starting:
        parent_run_id = start_parent(client, experiment_id, name, params, tags,
                                     {f"space/{space.path.name}": space.source})  # fmt: skip
        job = SearchJob(space, name, storage, data_dir, client, experiment_id, parent_run_id, warm)
        write_state(job.path, replace(state, parent_run_id=parent_run_id))
    mlflow_ui.log_dataset(client, parent_run_id, splits, data_dir)
    return job


def fit(job: SearchJob, quiet: bool) -> tune.ResultGrid:
    """Runs the trials (or the rest of them) and brings MLflow up to date with Tune's record of them."""
    s, n = job.space.settings, cluster.concurrency(job.space.settings)
    print(cost_line(s, n), flush=True)
    tracking = LiveTracking(
        job.client.tracking_uri, job.experiment_id, job.parent_run_id, s.MAX_EPOCHS, ranking=_ranking(job.space)
    )
    base = job.space.base_config(job.data_dir)
    tuner = build_tuner(
        job.space, trainable, path=job.path, param_space=base, max_concurrent=n, callbacks=[tracking],
        reporter=None if quiet else SearchReporter.for_space(job.space, n), warm_start=job.warm_start,
        parameters=shared_data(base),
    )  # fmt: skip
    try:
        results = tuner_fit(tuner)
    except KeyboardInterrupt:  # Tune saved its state: MLflow gets all of it, as at the end
        _sync(job)
        raise
    _sync(job)
    return results


def _sync(job: SearchJob) -> None:
    s = job.space.settings
    sync(job.path, job.client, job.experiment_id, job.parent_run_id, s.MAX_EPOCHS, ranking=_ranking(job.space))


def _ranking(space: Space) -> Ranking:
    return Ranking(space.settings.METRIC, space.settings.MODE)


def finish(job: SearchJob, results: tune.ResultGrid, final_top_k: int, final_front: bool, final_seeds: int,
           start: float) -> SearchResult:  # fmt: skip
    """Tests the winner on the held-out test set, logs it, retrains the top K or the front if asked, and reports."""
    s = job.space.settings
    frame = report.trials_frame(results, job.space)
    done = frame[frame.outcome == "completed"]
    pool = done if len(done) else report.as_of_checkpoint(frame)  # a time budget may stop them all
    if pool.empty:
        first = next((r.error for r in results if r.error is not None), None)
        counts = ", ".join(f"{n} {o}" for o, n in frame.outcome.value_counts().items())
        raise SearchFailed(f"no trial finished ({counts}); the last line of an error: {one_line(first or 'none')}")
    ranked = pool.sort_values(s.METRIC, ascending=s.MODE == "min")
    best_row = ranked.iloc[0]
    with record.local_copy(record.join(best_row.checkpoint, CHECKPOINT_FILE)) as checkpoint:
        model, config = model_from_checkpoint(checkpoint)
        job.client.log_artifact(job.parent_run_id, checkpoint, "best")
    config.data_dir = job.data_dir
    splits = load_data(config)
    test = evaluate_test(model, config, splits)
    _stop_point()

    # the winner's model is logged through MLflow's fluent API
    with fluent_store(job.client.tracking_uri), mlflow.start_run(run_id=job.parent_run_id, log_system_metrics=False):
        mlflow.log_metrics({f"best_{s.METRIC}": float(best_row[s.METRIC]), **test})
        # tags, not params: a --resume that extends the search may find a new winner, and params cannot change
        mlflow.set_tags({f"best.{k}": v for k, v in config.flat().items() if k != "data_dir"})
        mlflow.set_tag("best_trial_id", best_row.trial_id)
        example = next(iter(test_batches(config, splits)))[0][:2].cpu()
        pinned = mlflow.pytorch.get_default_pip_requirements()  # inferring them loads the model in a child process
        # MLflow 3 keeps a logged model apart from the run's artifacts: its own URI (models:/m-...) is what loads
        logged = mlflow.pytorch.log_model(
            model.eval(), name="model", input_example=example.numpy(), pip_requirements=pinned
        )
    model_uri = logged.model_uri
    _stop_point()

    chosen = report.pareto_front(pool, s.METRIC, s.MODE, "macs") if final_front else ranked.head(final_top_k)
    final = retrain(job, chosen, final_seeds) if len(chosen) else None
    _stop_point()
    study = load_study(job.path, job.space)
    summary = report.summarize(job.space, frame, pool, best_row, test, start, model_uri, final, study)
    if s.REGISTER:  # a new version of the registered model; champion only if it beats the current one
        summary["registered"] = registry.register_winner(job, logged.model_id, best_row.trial_id, test, splits)
    summary["best_config_file"] = str(write_best_config(job.path, report.trial_config(frame, best_row.trial_id)))
    summary["narrowed"] = narrow.write_narrowed(job.path, job.name, job.space, study, summary)
    view = mlflow_ui.save_view(
        job.client, job.experiment_id, job.parent_run_id, s.METRIC, frame.attrs["params"], s.MODE
    )
    summary["ui"] = mlflow_ui.link(job.client.tracking_uri, view)
    report.log_to_parent(job.client, job.parent_run_id, job.space, frame, pool, study, summary)
    return SearchResult(
        best_config=summary["best_config"],
        best_val=float(best_row[s.METRIC]), test=test, experiment_path=results.experiment_path,
        parent_run_id=job.parent_run_id, tracking_uri=job.client.tracking_uri, trials=frame, pool=pool,
        ranking=_ranking(job.space), summary=summary, results=results,
    )  # fmt: skip


def _warm_start(name: str, storage: str, space: Space) -> list:
    """The trials of the earlier search `name` that fit `space`, saying how many that is."""
    if not record.exists(state_path(storage, name)):
        raise UsageError(f"--warm-start {name}: no such search under {storage}")
    previous = load_study(record.join(storage, name), space)
    warm = warm_trials(previous, space)
    print(f"warm start: {len(warm)} of the {len(previous.trials)} trials of {name} fit {space.path.name}", flush=True)
    return warm


_UNSET = object()
EXTENDABLE = ("NUM_SAMPLES",)  # what --resume may change: more trials continue the same study and parent run


def _extended(name: str, saved: SearchState, overrides: dict, storage: str) -> dict:
    """The overrides a resumed search runs with: its own, plus a larger NUM_SAMPLES when one is given.

    Raises:
        UsageError: an override that would change anything else, or fewer trials than it already has.
    """
    changed = {k: v for k, v in overrides.items() if saved.overrides.get(k, _UNSET) != v}
    for key in changed:
        if key not in EXTENDABLE:
            raise UsageError(
                f"--resume {name}: --set {key}={changed[key]!r} would change the search; --resume continues it as "
                f"it began (it may only raise NUM_SAMPLES); start a new one, with --warm-start {name} to build on it"
            )
    if "NUM_SAMPLES" in changed:
        had = trial_count(record.join(storage, name))
        if not isinstance(changed["NUM_SAMPLES"], int) or changed["NUM_SAMPLES"] < max(had, 1):
            raise UsageError(
                f"--resume {name}: NUM_SAMPLES={changed['NUM_SAMPLES']!r}: it has {had} trials; "
                f"extending needs a count of at least that"
            )
    return {**saved.overrides, **changed}


def _unfinished(job: SearchJob, results: tune.ResultGrid) -> bool:
    """True when Tune returned early (Ctrl-C, SIGTERM): trials left to run, or never created."""
    if unfinished_trials(job.path):
        return True
    s = job.space.settings
    if len(results) < s.NUM_SAMPLES and not s.TIME_BUDGET:
        return report.converged(report.trials_frame(results, job.space), s) is None  # PATIENCE ended it
    return False


# A Ctrl-C or SIGTERM arrived. A KeyboardInterrupt raised while Python runs a finalizer (`__del__`, a weakref
# callback) is printed and dropped ("Exception ignored in ..."): the search would go on and end FINISHED. What this
# remembers is raised again at the next `_stop_point`.
_STOP = threading.Event()


@contextmanager
def _interrupts():
    """Ctrl-C and SIGTERM for a search, each remembered in _STOP; the handlers as they were afterwards (a
    notebook's next cell). Tune's fit installs its own Ctrl-C handler while it runs (search.tuner.fit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _STOP.clear()
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    if before[0] is signal.default_int_handler:  # not where Ctrl-C is ignored (nohup, `&` in a script)
        signal.signal(signal.SIGINT, _interrupt)
    _stop_on_sigterm()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


def _interrupt(signum, frame) -> None:
    _STOP.set()
    raise KeyboardInterrupt


def _stop_point() -> None:
    """Raises the Ctrl-C or SIGTERM that a finalizer swallowed (_STOP)."""
    if _STOP.is_set():
        raise KeyboardInterrupt


def _stop_on_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_like_ctrl_c)


def _stop_like_ctrl_c(signum, frame) -> None:
    # Slurm (time limit, preemption, scancel) and `ray job stop` send SIGTERM: stop as on Ctrl-C, so that Tune
    # saves its state and the parent run says how to --resume. Once: Slurm may signal both this process and the
    # batch script that forwards it, and a second Ctrl-C would skip Tune's last save.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _STOP.set()
    handler = signal.getsignal(signal.SIGINT)  # Tune's while it runs; called directly, Ray blocks SIGINT in jobs
    if not callable(handler):
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)
