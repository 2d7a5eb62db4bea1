"""The Tune wiring of a search: one `build_tuner` for the search, its final retrains and the benchmarks.

ASHA stops weak trials early, except a seeded random few (`AUDIT_FRACTION`) that always run in full: the audit
compares their early and final rankings without the range restriction of looking only at ASHA's survivors.
"""

from __future__ import annotations

import logging
import os
import posixpath
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import SearchGenerator
from ray.tune.utils.util import _atomic_save, _load_newest_checkpoint

from search import record
from search.schedule import converged_after, is_control
from search.searcher import make_searcher
from search.space import Space

log = logging.getLogger(__name__)


class AuditedASHA(ASHAScheduler):
    """ASHA that lets its control trials (see `is_control`) run to the end; they still count in its rungs."""

    def __init__(self, *, seed: int, audit_fraction: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed, self.audit_fraction = seed, audit_fraction

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and is_control(self.seed, trial.trial_id, self.audit_fraction):
            return TrialScheduler.CONTINUE
        return decision


class Converged(tune.Stopper, tune.Callback):
    """Ends the search (every trial) once `converged_after` says so; Tune passes it as both stopper and callback.

    Tune's ExperimentPlateauStopper watches the spread of the top results epoch by epoch, which ASHA's early
    epochs make noisy; this counts whole trials, as a person watching the search would.
    """

    def __init__(self, metric: str, mode: str, patience: int, min_delta: float) -> None:
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.ended: list[float | None] = []

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self.ended.append((trial.last_result or {}).get(self.metric))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self.ended.append(None)

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return converged_after(self.ended, self.mode, self.patience, self.min_delta) is not None


class StorageWatch(tune.Callback):
    """Stops the run as Ctrl-C does when a trial fails while the storage holding the experiment does not answer (an
    object store or NFS outage): its trials are then left to resume from their checkpoints, instead of being retried
    into the outage and recorded as failed. A failure while the storage answers is the trial's own (retried up to
    MAX_FAILURES). The driver tells the user (`search.driver`).
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._check()

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._check()

    def _check(self) -> None:
        reason = record.unreachable(self.path)
        stop = signal.getsignal(signal.SIGUSR1)  # Tune's own: end the run, its state saved as far as it can be
        if not reason or not callable(stop):  # no handler: Tune runs outside the main thread
            return
        log.warning("the storage of %s does not answer (%s): stopping the trials", self.path, reason)
        tune_log = logging.getLogger("ray.tune.tune")
        level = tune_log.level
        tune_log.setLevel(logging.ERROR)  # its "Stop signal received (e.g. via SIGINT/Ctrl+C)" would mislead
        try:
            stop(signal.SIGUSR1, None)
        finally:
            tune_log.setLevel(level)


def fit(tuner: tune.Tuner) -> tune.ResultGrid:
    """`tuner.fit()`, leaving Ctrl-C as it found it.

    Tune catches the first SIGINT of a run to save its state and return early, and leaves that handler installed
    after the run: a Ctrl-C during the final evaluation (or in a notebook, any later cell) would be swallowed.

    Raises:
        KeyboardInterrupt: Tune caught a Ctrl-C (or the SIGTERM that `search.driver` passes it), saved its state and
            returned; whether every trial had ended by then does not make the search finished. Tune does not say
            so in what it returns: its handler, once it fired, has put back the one it found.
    """
    handler = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread():
        return tuner.fit()  # Tune installs no handler off the main thread
    try:
        results = tuner.fit()
        caught = (
            signal.getsignal(signal.SIGINT) is handler and os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") == "0"
        )
    finally:
        signal.signal(signal.SIGINT, handler)
    if caught:
        raise KeyboardInterrupt
    return results


def _run_to(path: str, num_samples: int) -> None:
    """Lets a restored experiment create trials up to `num_samples` (a --resume that extends a search).

    Tune keeps the count it began with in its search generator's state and offers no way to change it on
    restore, so the newest state file (Tune's own, in this search's folder) gets the new count.
    """
    pattern = SearchGenerator.CKPT_FILE_TMPL.format("*")
    with record.local_files(path, pattern) as folder:
        files = sorted(Path(folder).glob(pattern))
        state = _load_newest_checkpoint(folder, pattern)
        if not files or state is None or state["total_samples"] >= num_samples:
            return
        state.update(total_samples=num_samples, finished=False)
        _atomic_save(state, folder, files[-1].name, f"tmp-{files[-1].name}")


def _trial_dirname(trial: Trial) -> str:
    return trial.trial_id  # not Tune's default, the whole config spelled out in a path


def build_tuner(
    space: Space,
    trainable: Callable,
    *,
    path: str,
    param_space: dict,
    max_concurrent: int,
    callbacks: list | None = None,
    search: bool = True,
    reporter: tune.ProgressReporter | None = None,
    warm_start: list | None = None,
    parameters: dict | None = None,
) -> tune.Tuner:
    """A Tuner for the experiment at `path`, restored from it when it holds one (--resume).

    Args:
        space: the loaded space file: resources, budget, ASHA's rungs and the searcher come from its settings.
        trainable: the function each trial runs, `trainable(config, checkpoint_seconds)`: CHECKPOINT_SECONDS, for
            `search.schedule.checkpoint_due`.
        path: the experiment's folder, storage/name.
        param_space: what every trial gets; for the final retrains, a grid over whole configs.
        max_concurrent: trials at once.
        callbacks: Tune callbacks (live tracking).
        search: TPE + ASHA over NUM_SAMPLES trials; False runs `param_space` as given (the final retrains).
        reporter: the live table; None prints nothing.
        warm_start: trials of an earlier search TPE starts from (see `search.searcher.warm_trials`).
        parameters: more keyword arguments of `trainable`, put in Ray's object store once for every trial (the
            dataset: `search.trainable.shared_data`).
    """
    s = space.settings
    fn = tune.with_parameters(trainable, checkpoint_seconds=s.CHECKPOINT_SECONDS, **(parameters or {}))
    fn = tune.with_resources(fn, {"cpu": s.CPUS_PER_TRIAL, "gpu": s.GPUS_PER_TRIAL})
    if record.has_snapshot(path):
        if search:
            _run_to(path, s.NUM_SAMPLES)
        # param_space is not restored from the experiment: trials created from now on need it again
        return tune.Tuner.restore(path, fn, resume_unfinished=True, resume_errored=False, param_space=param_space)
    stopper = None
    tune_config = tune.TuneConfig(
        reuse_actors=True,  # one worker process (its imports, its map of the dataset) for many trials
        trial_dirname_creator=_trial_dirname,
        max_concurrent_trials=None if search else max_concurrent,
    )
    if search:
        tune_config.search_alg = make_searcher(space, max_concurrent, warm_start)
        tune_config.scheduler = AuditedASHA(
            time_attr="epoch", metric=s.METRIC, mode=s.MODE, max_t=s.MAX_EPOCHS, grace_period=s.GRACE_PERIOD,
            reduction_factor=s.REDUCTION_FACTOR, seed=s.SEED, audit_fraction=s.AUDIT_FRACTION,
        )  # fmt: skip
        tune_config.num_samples = s.NUM_SAMPLES
        tune_config.time_budget_s = s.time_budget_s
        if s.PATIENCE:
            stopper = Converged(s.METRIC, s.MODE, s.PATIENCE, s.MIN_DELTA)
            callbacks = [*(callbacks or []), stopper]
    return tune.Tuner(
        fn,
        param_space=param_space,
        tune_config=tune_config,
        run_config=tune.RunConfig(
            name=posixpath.basename(path),
            storage_path=posixpath.dirname(path),  # a URI (s3://...) too, which pathlib would mangle
            callbacks=[*(callbacks or []), StorageWatch(path)],
            stop=stopper,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2 if search else 1),
            failure_config=tune.FailureConfig(max_failures=s.MAX_FAILURES),
            progress_reporter=reporter,
            verbose=1 if reporter else 0,
        ),
    )
