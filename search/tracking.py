"""MLflow: one parent run per search, one nested child run per trial, metrics logged in batches.

All tracking happens on the driver, in a Tune callback, so trials never talk to the tracking server. The
callback only queues what to log; a background thread sends it, so a slow or absent server never holds up
Tune's loop either. MLflow's own client and standard tags do the work; the callback only decides when to
call them.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from ray import tune

log = logging.getLogger(__name__)

METRICS = (
    "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "epoch_seconds", "images_per_second",
)  # fmt: skip
# MLflow rejects a batch of more than 1000 metrics; params are capped at 100 per batch.
MAX_BATCH_METRICS, MAX_BATCH_PARAMS = 1000, 100


def ensure_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    return client.create_experiment(name)


def open_store(tracking_uri: str | None) -> MlflowClient:
    """A client of the tracking store, checked before any trial trains.

    Raises:
        ConnectionError: one line naming the tracking URI and what went wrong (unreachable, credentials).
    """
    uri = tracking_uri or mlflow.get_tracking_uri()
    # Opening a new sqlite store creates its tables; two searches starting at once would race doing so.
    lock = FileLock(uri.removeprefix("sqlite:///") + ".lock") if uri.startswith("sqlite:///") else nullcontext()
    try:
        with lock:
            client = MlflowClient(uri)
            check_server(client)
    except ConnectionError:
        raise
    except Exception as exc:
        raise ConnectionError(f"MLflow tracking store {uri}: {_reason(exc)}") from None
    return client


def check_server(client: MlflowClient) -> None:
    """Fails fast when the store is unreachable or rejects our credentials.

    Raises:
        ConnectionError: one line naming the tracking URI and what went wrong.
    """
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:  # requests, MLflow and SQLAlchemy errors all mean the same thing here
        raise ConnectionError(f"MLflow tracking store {client.tracking_uri}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if "401" in reason or "403" in reason or "Unauthorized" in reason:
        reason = "credentials rejected (set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
    return reason


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> dict[str, str]:
    """trial_id -> run_id of the parent's child runs: how a resumed search finds its trials' runs."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'", max_results=50000
    )
    return {r.data.tags["trial_id"]: r.info.run_id for r in runs if "trial_id" in r.data.tags}


def params_of(config: dict) -> list[Param]:
    config = {**config, **config.get("variant", {})}  # the final retrains' grid over whole configs
    config.pop("variant", None)
    return [Param(k, str(v)[:6000]) for k, v in sorted(config.items())]


def log_batched(client: MlflowClient, run_id: str, metrics=(), params=(), tags=()) -> None:
    """log_batch within MLflow's per-request limits."""
    metrics, params = list(metrics), list(params)
    for i in range(0, max(len(params), 1), MAX_BATCH_PARAMS):
        client.log_batch(run_id, params=params[i : i + MAX_BATCH_PARAMS], tags=list(tags) if i == 0 else [])
    for i in range(0, len(metrics), MAX_BATCH_METRICS):
        client.log_batch(run_id, metrics=metrics[i : i + MAX_BATCH_METRICS])


def outcome_of(result: dict | None, max_epochs: int, error: bool = False) -> str:
    """completed, stopped_early (ASHA or the time budget), diverged or errored."""
    if error:
        return "errored"
    if not result:
        return "stopped_early"
    if result.get("outcome") == "diverged":
        return "diverged"
    return "completed" if result.get("epoch", 0) >= max_epochs else "stopped_early"


STATUS = {"completed": "FINISHED", "stopped_early": "KILLED", "diverged": "FAILED", "errored": "FAILED"}


class MLflowTrials(tune.Callback):
    """Creates a child run per trial under `parent_run_id`, buffers its metrics and flushes them in batches.

    Tune's callbacks only queue; a background thread flushes every `flush_seconds`, and soon after a trial
    starts or ends, one log_batch per run, so tracking costs a few requests a minute, not one per metric, and
    none of them on Tune's loop. When the store is unreachable the buffer is kept and retried at the next
    flush; `pending()` says what never made it. The experiment's end stops the thread and flushes the rest.

    Args:
        tracking_uri: MLflow tracking URI (credentials come from the environment, never from here).
        experiment_id: the search's experiment.
        parent_run_id: the search's parent run.
        max_epochs: the epoch budget of a full trial, to tell completed from stopped early.
        flush_seconds: the longest a metric waits in the buffer.
        tags: extra tags of every child run (the final retrains get stage=final).
        resume_hint: the command that completes the runs if the store is still away at the end.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        max_epochs: int,
        flush_seconds: float = 5,
        tags: dict | None = None,
        resume_hint: str = "",
    ):
        self.tags = dict(tags or {})
        self.resume_hint = resume_hint
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = max_epochs
        self.flush_seconds = flush_seconds
        self._reset()

    def _reset(self) -> None:
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial_id -> run_id
        self._logged_epoch: dict[str, int] = {}  # trial_id -> last epoch sent or buffered
        self._ended: set[str] = set()  # trials whose end this process queued
        # trial_id -> what the store has not taken yet, in order: ("start", config) | ("status", s) | Metric | RunTag
        self._buffer: dict[str, list] = {}
        self._lock = threading.Lock()  # guards _buffer: Tune's thread queues while the flusher sends
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict:
        # Tune pickles callbacks into the experiment state; a client and buffers don't belong there.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            client = MlflowClient(self.tracking_uri)
            self._runs = child_runs(client, self.experiment_id, self.parent_run_id)
            for trial_id, run_id in self._runs.items():
                history = client.get_metric_history(run_id, "val_acc")
                self._logged_epoch[trial_id] = max((m.step for m in history), default=0)
            self._client = client
        return self._client

    def setup(self, **info) -> None:
        self.client  # noqa: B018 - find the runs of a resumed search before its trials report (checked reachable)
        self._thread = threading.Thread(target=self._flush_loop, name="mlflow-trials", daemon=True)
        self._thread.start()

    def _flush_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        # A resumed or retried trial continues its own run (made already, or on its way in the buffer).
        known = trial.trial_id in self._logged_epoch
        self._queue(trial.trial_id, ("status", "RUNNING") if known else ("start", dict(trial.config)))
        self._logged_epoch.setdefault(trial.trial_id, 0)
        self._ended.discard(trial.trial_id)
        self._wake.set()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        now = int(time.time() * 1000)
        for past in result.get("history") or []:  # epochs a restore replayed from its checkpoint
            self._add_epoch(trial.trial_id, past, now)
        self._add_epoch(trial.trial_id, result, now)
        tags = [RunTag("epoch", str(result.get("epoch", 0))), RunTag("node_id", str(result.get("node_id")))]
        self._queue(trial.trial_id, *tags)

    def _queue(self, trial_id: str, *items) -> None:
        with self._lock:
            self._buffer.setdefault(trial_id, []).extend(items)

    def _add_epoch(self, trial_id: str, result: dict, timestamp: int) -> None:
        epoch = int(result.get("epoch", 0))
        if epoch <= self._logged_epoch.get(trial_id, 0):
            return
        self._logged_epoch[trial_id] = epoch
        for key in METRICS:
            value = result.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = float(value) if math.isfinite(value) else float("nan")
                self._queue(trial_id, Metric(key, value, timestamp, epoch))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end(trial, outcome_of(trial.last_result, self.max_epochs))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        # Tune writes the trace locally first and syncs it to storage later: read whichever exists now.
        local = trial.error_file
        trace = (Path(local).read_text() if local and Path(local).exists() else trial.get_error()) or "unknown error"
        lines = [line for line in str(trace).splitlines() if line.strip()]
        message = next((line for line in reversed(lines) if not line.startswith(" ")), lines[-1])
        self._end(trial, "errored", extra=[RunTag("error", message[:5000]), ("text", str(trace), "error.txt")])

    def _end(self, trial, outcome: str, extra=()) -> None:
        epoch = (trial.last_result or {}).get("epoch", 0)
        self._queue(trial.trial_id, RunTag("outcome", outcome), RunTag("epoch", str(epoch)), *extra)
        self._queue(trial.trial_id, ("status", STATUS[outcome]))
        self._ended.add(trial.trial_id)
        self._wake.set()

    def on_experiment_end(self, trials, **info) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self.reconcile(trials)
        self.flush()
        if self.pending():
            log.error(
                "MLflow: %d trial runs are incomplete (the store at %s is unreachable); nothing is lost: once it is "
                "back, `%s` completes them from the search's own records",
                len(self.pending()), self.tracking_uri, self.resume_hint or "python -m search.run SPACE --resume",
            )  # fmt: skip

    def reconcile(self, trials) -> None:
        """Makes MLflow agree with Tune: one complete run per trial, none RUNNING once the search has ended.

        A killed driver or an absent tracking server loses or holds back what was buffered, and a resumed Tune
        does not replay trials that had already ended. So: runs missing are created, epochs missing are filled
        in from each trial's own result.json, runs of ended trials are ended, and runs of trials the restored
        experiment never knew (created after its last snapshot, then suggested anew) are deleted.
        """
        try:
            self._reconcile(trials)
        except (MlflowException, OSError) as exc:
            log.warning("MLflow: store unreachable at the end of the search (%s)", str(exc)[:200])

    def _reconcile(self, trials) -> None:
        known = {t.trial_id for t in trials}
        for trial_id, run_id in list(self._runs.items()):
            if trial_id not in known:
                self.client.delete_run(run_id)
                del self._runs[trial_id]
        ended = {"TERMINATED": None, "ERROR": "errored"}
        for trial in trials:
            tid, queued = trial.trial_id, self._buffer.get(trial.trial_id, [])
            if tid not in self._runs and not any(isinstance(i, tuple) and i[0] == "start" for i in queued):
                self._queue(tid, ("start", dict(trial.config)))
            if (trial.last_result or {}).get("epoch", 0) > self._logged_epoch.get(tid, 0):
                for line in _result_lines(trial):
                    self._add_epoch(tid, json.loads(line), int(time.time() * 1000))
            if tid in self._ended:
                continue  # its end is logged or on its way
            if trial.status in ended:
                if tid not in self._runs or self.client.get_run(self._runs[tid]).info.status == "RUNNING":
                    self._end(trial, ended[trial.status] or outcome_of(trial.last_result, self.max_epochs))
            else:  # an interrupted search: --resume sets these RUNNING again
                self._queue(tid, RunTag("outcome", "interrupted"), ("status", "KILLED"))

    def flush(self) -> None:
        """Sends what is buffered, run by run, in order; keeps whatever the store did not take.

        Only one thread flushes at a time: the flusher, or the experiment's end once the flusher has stopped.
        """
        with self._lock:
            batch, self._buffer = self._buffer, {}
        try:
            for trial_id, items in batch.items():
                self._send(trial_id, items)
        except (MlflowException, OSError) as exc:
            log.warning("MLflow: could not log trial %s (%s); will retry", trial_id, str(exc)[:200])
            # the store is away: don't spend a round of retries on every other trial too
        finally:
            with self._lock:  # what was not sent goes back ahead of what was queued meanwhile
                for trial_id, items in batch.items():
                    if items:
                        self._buffer[trial_id] = items + self._buffer.get(trial_id, [])

    def _send(self, trial_id: str, items: list) -> None:
        """Sends one trial's items; what succeeded leaves `items`, so a retry never sends it twice."""
        for i, item in enumerate(items):
            if isinstance(item, tuple) and item[0] == "start":
                run = self.client.create_run(
                    self.experiment_id,
                    run_name=trial_id,
                    tags={MLFLOW_PARENT_RUN_ID: self.parent_run_id, "trial_id": trial_id, **self.tags},
                )
                self._runs[trial_id] = run.info.run_id
                items[i] = ("params", item[1])
        run_id = self._runs[trial_id]
        params = [p for i in items if isinstance(i, tuple) and i[0] == "params" for p in params_of(i[1])]
        metrics = [m for m in items if isinstance(m, Metric)]
        tags = list({t.key: t for t in items if isinstance(t, RunTag)}.values())
        log_batched(self.client, run_id, metrics=metrics, params=params, tags=tags)
        items[:] = [i for i in items if isinstance(i, tuple) and i[0] in ("text", "status")]
        while items and items[0][0] == "text":
            self.client.log_text(run_id, items[0][1], items[0][2])
            items.pop(0)
        statuses = [item[1] for item in items if item[0] == "status"]
        if statuses and statuses[-1] == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        elif statuses:
            self.client.set_terminated(run_id, status=statuses[-1])
        items.clear()

    def pending(self) -> list[str]:
        """Trial ids with metrics, tags or ends the store has not taken yet."""
        return [trial_id for trial_id, items in self._buffer.items() if items]


def _result_lines(trial) -> list[str]:
    """Every result a trial reported, from Tune's result.json (the driver's copy, else the synced one)."""
    for folder in (trial.local_path, trial.path):
        path = Path(folder or "", "result.json")
        if folder and "://" not in folder and path.exists():
            return path.read_text().splitlines()
    return []
