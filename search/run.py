"""`python -m search.run SPACE`: Ray Tune drives the trials, Optuna's TPE proposes configs, ASHA stops weak
ones early, MLflow records every trial under one parent run; at the end the winner is tested and logged.

The same is one Python call: `search.run.search("spaces/vgg_cifar100.py", smoke=True)`.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the compact CLIReporter table, plain lines off a terminal
from search.cli import cap_mlflow_retries  # noqa: E402

cap_mlflow_retries()  # before MLflow is imported here, so the notebook's searches get it too

import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import mlflow  # noqa: E402
from ray import tune  # noqa: E402

from search import __version__, cli, cluster, mlflow_ui, report  # noqa: E402
from search.data import DEFAULT_DATA_DIR, note_if_fake  # noqa: E402
from search.errors import SearchFailed, UsageError, one_line  # noqa: E402
from search.final import retrain  # noqa: E402
from search.progress import SearchReporter, cost_line  # noqa: E402
from search.searcher import load_study, warm_trials  # noqa: E402
from search.space import Space, load_space  # noqa: E402
from search.state import (  # noqa: E402
    SearchJob,
    SearchState,
    claim,
    read_state,
    state_path,
    write_best_config,
    write_state,
)
from search.tracking import (  # noqa: E402
    LiveTracking,
    end_parent,
    ensure_experiment,
    open_store,
    start_parent,
    sync,
    unfinished_trials,
)
from search.train import TrainConfig, evaluate_test, load_data, model_from_checkpoint, test_batches  # noqa: E402
from search.trainable import CHECKPOINT_FILE, trainable  # noqa: E402
from search.tuner import build_tuner  # noqa: E402
from search.tuner import fit as tuner_fit  # noqa: E402


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
    results: tune.ResultGrid | None = None


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
    tracking_uri: str = "",
    data_dir: str = "",
    address: str = "",
    time_budget: str = "",
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    max_concurrent: int | None = None,
    warm_start: str = "",
    final_top_k: int = 0,
    final_front: bool = False,
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
        tracking_uri: MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else MLflow's default, ./mlflow.db).
        data_dir: where datasets live on every node (default ./data or $SEARCH_DATA_DIR).
        address: an existing Ray cluster ("auto": this machine's, "ray://...", host:port); default: a private
            local Ray.
        warm_start: the name of an earlier search (under `storage`) whose trials that fit this space TPE starts
            from; a new search only.
        final_top_k, final_seeds: retrain the K best configs from scratch with S seeds each.
        final_front: retrain the members of the accuracy-against-MACs front instead of the top K.
        quiet: no live table.

    Raises:
        UsageError: (SpaceError, DataError, ...) a mistake in what was asked, before anything is created.
        SearchFailed: the search ran but could not finish; its parent run is ended FAILED.
        KeyboardInterrupt: Ctrl-C or SIGTERM; the parent run is ended KILLED and says how to resume.
    """
    overrides = dict(sets or {})
    for key, value in (
        ("NUM_SAMPLES", num_samples), ("MAX_EPOCHS", max_epochs), ("TIME_BUDGET", time_budget),
        ("CPUS_PER_TRIAL", cpus_per_trial), ("GPUS_PER_TRIAL", gpus_per_trial), ("MAX_CONCURRENT", max_concurrent),
    ):  # fmt: skip
        if value not in (None, ""):
            overrides[key] = value
    if final_top_k < 0 or final_seeds < 1:
        raise UsageError(f"--final-top-k {final_top_k} must be >= 0 and --final-seeds {final_seeds} >= 1")
    if final_top_k and final_front:
        raise UsageError(f"--final-top-k {final_top_k} and --final-front: retrain one or the other")
    if warm_start and resume:
        raise UsageError(f"--warm-start {warm_start}: a warm start begins a new search; --resume continues one")
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
    except KeyboardInterrupt:
        end_parent(job.client, job.parent_run_id, "KILLED", state=f"interrupted; resume with {job.resume_command}")
        print(f"interrupted: resume with  {job.resume_command}", file=sys.stderr)
        raise
    except BaseException as exc:
        end_parent(job.client, job.parent_run_id, "FAILED", error=f"{type(exc).__name__}: {exc}"[:5000])
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
        name = name or _find_previous(storage, space.name)
        if not state_path(storage, name).exists():
            raise UsageError(f"--resume {name}: no such search under {storage}")
        saved = read_state(state_path(storage, name).parent)
        if saved.space_sha != space.sha:
            raise UsageError(
                f"--resume {name}: it searched {saved.space_path} as it was then; {space.path} has changed"
            )
        overrides = _extended(name, saved, overrides, storage)
        space = load_space(space_path, overrides, saved.smoke)
        data_dir = data_dir or saved.data_dir
    else:
        name = name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if state_path(storage, name).exists():
            raise UsageError(f"--name {name}: a search of that name exists in {storage}; use --resume or a new name")
        cluster.check_writable(storage)
    # Each trial runs in a working folder of Ray's: the default ./data, like every relative path, means the folder
    # the search started in, for the driver and every trial, and is stored so that --resume finds it too.
    data_dir = data_dir or str(Path(DEFAULT_DATA_DIR).expanduser().resolve())
    data_tags = note_if_fake(space.base_config(data_dir)["dataset"], data_dir)  # the first line says fake data
    warm = _warm_start(warm_start, storage, space) if warm_start else []
    # The driver reads the data too (final test): missing or corrupt files, or subsets larger than the data,
    # fail here, before any trial.
    splits = load_data(TrainConfig.from_dict(space.base_config(data_dir)))
    client = open_store(tracking_uri or (saved.tracking_uri if saved else ""))
    mlflow.set_tracking_uri(client.tracking_uri)  # the winner's model is logged through MLflow's fluent API
    experiment_id = ensure_experiment(client, saved.experiment if saved else space.name)

    _stop_on_sigterm()  # also while connecting: Ray may take a while to start or answer
    cluster.connect(address, quiet)
    _stop_on_sigterm()  # after ray.init: its own handler exits at once
    cluster.check_shared_storage(storage)
    if saved:
        parent_run_id = saved.parent_run_id
        client.update_run(parent_run_id, status="RUNNING")
        if overrides != saved.overrides:  # extended; the parent's params cannot change, so a tag says so
            client.set_tag(parent_run_id, "extended.NUM_SAMPLES", str(space.settings.NUM_SAMPLES))
            write_state(Path(storage, name), replace(saved, overrides=overrides))
        job = SearchJob(space, name, storage, data_dir, client, experiment_id, parent_run_id)
        sync(job.path, client, experiment_id, parent_run_id, space.settings.MAX_EPOCHS)  # a store that was away
        return job
    params = {f"setting.{k}": v for k, v in vars(space.settings).items() if k not in ("FIXED", "SMOKE")}
    params.update({f"fixed.{k}": v for k, v in space.base_config(data_dir).items()})
    params.update({"package_version": __version__, "overrides": json.dumps(overrides), "warm_start": warm_start})
    tags = {"space": str(space.path), "smoke": str(smoke), **data_tags}
    with claim(storage, name):  # of two searches started with one --name, the second stops here, with no parent
        parent_run_id = start_parent(client, experiment_id, name, params, tags,
                                     {f"space/{space.path.name}": space.source})  # fmt: skip
        job = SearchJob(space, name, storage, data_dir, client, experiment_id, parent_run_id, warm)
        write_state(Path(job.path), SearchState(
            space_path=str(space.path), space_sha=space.sha, overrides=overrides, smoke=smoke, data_dir=data_dir,
            experiment=space.name, experiment_id=experiment_id, parent_run_id=parent_run_id,
            tracking_uri=client.tracking_uri, max_epochs=space.settings.MAX_EPOCHS,
        ))  # fmt: skip
    mlflow_ui.log_dataset(client, parent_run_id, splits, data_dir)
    return job


def fit(job: SearchJob, quiet: bool) -> tune.ResultGrid:
    """Runs the trials (or the rest of them) and brings MLflow up to date with Tune's record of them."""
    s, n = job.space.settings, cluster.concurrency(job.space.settings)
    print(cost_line(s, n), flush=True)
    searched = list(job.space.params) if isinstance(job.space.params, dict) else []
    tracking = LiveTracking(job.client.tracking_uri, job.experiment_id, job.parent_run_id, s.MAX_EPOCHS)
    tuner = build_tuner(
        job.space, trainable, path=job.path, param_space=job.space.base_config(job.data_dir), max_concurrent=n,
        callbacks=[tracking], reporter=None if quiet else SearchReporter(s, searched, n), warm_start=job.warm_start,
    )  # fmt: skip
    results = tuner_fit(tuner)
    sync(job.path, job.client, job.experiment_id, job.parent_run_id, s.MAX_EPOCHS)
    return results


def finish(job: SearchJob, results: tune.ResultGrid, final_top_k: int, final_front: bool, final_seeds: int,
           start: float) -> SearchResult:  # fmt: skip
    """Tests the winner on the held-out test set, logs it, retrains the top K or the front if asked, and reports."""
    s = job.space.settings
    frame = report.trials_frame(results, job.space)
    done = frame[frame.outcome == "completed"]
    pool = done if len(done) else frame[frame.outcome == "stopped_early"]  # a time budget may stop them all
    if pool.empty:
        first = next((r.error for r in results if r.error is not None), None)
        counts = ", ".join(f"{n} {o}" for o, n in frame.outcome.value_counts().items())
        raise SearchFailed(f"no trial finished ({counts}); the last line of an error: {one_line(first or 'none')}")
    ranked = pool.sort_values(s.METRIC, ascending=s.MODE == "min")
    best_row = ranked.iloc[0]
    checkpoint = Path(best_row.checkpoint) / CHECKPOINT_FILE
    model, config = model_from_checkpoint(checkpoint)
    config.data_dir = job.data_dir
    splits = load_data(config)
    test = evaluate_test(model, config, splits)

    with mlflow.start_run(run_id=job.parent_run_id, log_system_metrics=False):
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
        mlflow.log_artifact(str(checkpoint), "best")
    model_uri = logged.model_uri

    chosen = report.pareto_front(pool, s.METRIC, s.MODE, "macs") if final_front else ranked.head(final_top_k)
    final = retrain(job, chosen, final_seeds) if len(chosen) else None
    study = load_study(job.path, job.space)
    summary = report.summarize(job.space, frame, pool, best_row, test, start, model_uri, final, study)
    summary["best_config_file"] = str(write_best_config(job.path, report.trial_config(frame, best_row.trial_id)))
    view = mlflow_ui.save_view(job.client, job.experiment_id, job.parent_run_id, s.METRIC, frame.attrs["params"])
    summary["ui"] = mlflow_ui.link(job.client.tracking_uri, view)
    report.log_to_parent(job.client, job.parent_run_id, job.space, frame, pool, study, summary)
    return SearchResult(
        best_config=summary["best_config"],
        best_val=float(best_row[s.METRIC]), test=test, experiment_path=results.experiment_path,
        parent_run_id=job.parent_run_id, tracking_uri=job.client.tracking_uri, summary=summary, results=results,
    )  # fmt: skip


def _warm_start(name: str, storage: str, space: Space) -> list:
    """The trials of the earlier search `name` that fit `space`, saying how many that is."""
    if not state_path(storage, name).exists():
        raise UsageError(f"--warm-start {name}: no such search under {storage}")
    previous = load_study(state_path(storage, name).parent, space)
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
        had = len(list(Path(storage, name).glob("*/params.json")))  # trials Tune created so far
        if not isinstance(changed["NUM_SAMPLES"], int) or changed["NUM_SAMPLES"] < max(had, 1):
            raise UsageError(
                f"--resume {name}: NUM_SAMPLES={changed['NUM_SAMPLES']!r}: it has {had} trials; "
                f"extending needs a count of at least that"
            )
    return {**saved.overrides, **changed}


def _find_previous(storage: str, stem: str) -> str:
    found = sorted(Path(storage).glob(f"{stem}-*/search.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UsageError(f"--resume: no search of {stem} under {storage}; give --name of the search to resume")
    return found[-1].parent.name


def _unfinished(job: SearchJob, results: tune.ResultGrid) -> bool:
    """True when Tune returned early (Ctrl-C, SIGTERM): trials left to run, or never created."""
    if unfinished_trials(job.path):
        return True
    s = job.space.settings
    if len(results) < s.NUM_SAMPLES and not s.TIME_BUDGET:
        return report.converged(report.trials_frame(results, job.space), s) is None  # PATIENCE ended it
    return False


def _stop_on_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_like_ctrl_c)


def _stop_like_ctrl_c(signum, frame) -> None:
    # Slurm (time limit, preemption, scancel) and `ray job stop` send SIGTERM: stop as on Ctrl-C, so that Tune
    # saves its state and the parent run says how to --resume. Once: Slurm may signal both this process and the
    # batch script that forwards it, and a second Ctrl-C would skip Tune's last save.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    handler = signal.getsignal(signal.SIGINT)  # Tune's while it runs; called directly, Ray blocks SIGINT in jobs
    if not callable(handler):
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


def _parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m search.run", description=__doc__.split("\n\n")[0])
    p.add_argument("space", help="space file, e.g. spaces/vgg_cifar100.py")
    p.add_argument("--smoke", action="store_true", help="whole pipeline on a tiny budget (minutes on a CPU)")
    p.add_argument("--num-samples", type=cli.at_least(1), help="trials (NUM_SAMPLES)")
    p.add_argument("--max-epochs", type=cli.at_least(1), help="epochs of a full trial (MAX_EPOCHS)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a SETTING or fix a parameter")
    p.add_argument("--name", default="", help="search name (default: space name + start time)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search (the latest, or --name)")
    p.add_argument("--storage", default="runs", help="path or URI for Tune state and checkpoints (default ./runs)")
    p.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--data-dir", default="", help="dataset folder (default ./data or $SEARCH_DATA_DIR)")
    p.add_argument("--address", default="", help="Ray cluster to join ('auto': this machine's; default: a private one)")
    p.add_argument("--time-budget", default="", help="wall-clock limit, e.g. 2h or 90m")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; 0.25 packs four trials on a GPU")
    p.add_argument("--max-concurrent", type=cli.at_least(0), help="cap on trials at once (default: what fits)")
    p.add_argument("--warm-start", default="", metavar="NAME", help="start TPE from an earlier search's trials")
    p.add_argument("--final-top-k", type=cli.at_least(0), default=0, help="retrain the K best configs from scratch")
    p.add_argument("--final-front", action="store_true", help="retrain the accuracy-against-MACs front instead")
    p.add_argument("--final-seeds", type=cli.at_least(1), default=3, help="seeds per config retrained")
    p.add_argument("--quiet", action="store_true", help="no live table")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    kwargs = {k: v for k, v in vars(args).items() if k not in ("space", "set", "debug")}
    search(args.space, sets=cli.parse_sets(args.set), **kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
