"""MLflow: one parent run per search, one nested child run per trial, metrics logged in batches.

All tracking happens on the driver, in a Tune callback, so trials never talk to the tracking server and a slow
or absent server never slows training down. MLflow's own client and standard tags do the work; the callback
only decides when to call them.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

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


def check_server(client: MlflowClient) -> None:
    """Fails fast, before any trial trains, when the store is unreachable or rejects our credentials.

    Raises:
        ConnectionError: one line naming the tracking URI and what went wrong.
    """
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:  # requests, MLflow and SQLAlchemy errors all mean the same thing here
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if "401" in reason or "403" in reason or "Unauthorized" in reason:
            reason = "credentials rejected (set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
        raise ConnectionError(f"MLflow tracking store {client.tracking_uri}: {reason}") from None


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

    Metrics are sent at most every `flush_seconds` (and when a trial ends), one log_batch per run, so tracking
    costs a few requests a minute, not one per metric. When the store is unreachable the buffer is kept and
    retried at the next flush; `pending()` says what never made it.

    Args:
        tracking_uri: MLflow tracking URI (credentials come from the environment, never from here).
        experiment_id: the search's experiment.
        parent_run_id: the search's parent run.
        max_epochs: the epoch budget of a full trial, to tell completed from stopped early.
        flush_seconds: the longest a metric waits in the buffer.
        tags: extra tags of every child run (the final retrains get stage=final).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        max_epochs: int,
        flush_seconds: float = 5,
        tags: dict | None = None,
    ):
        self.tags = dict(tags or {})
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = max_epochs
        self.flush_seconds = flush_seconds
        self._reset()

    def _reset(self) -> None:
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial_id -> run_id
        self._logged_epoch: dict[str, int] = {}  # run_id -> last epoch sent (or buffered)
        self._buffer: dict[str, list] = {}  # run_id -> [Metric | RunTag | ("end", status)]
        self._last_flush = 0.0

    def __getstate__(self) -> dict:
        # Tune pickles callbacks into the experiment state; a client and buffers don't belong there.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
            self._runs = child_runs(self._client, self.experiment_id, self.parent_run_id)
            for run_id in self._runs.values():
                history = self._client.get_metric_history(run_id, "val_acc")
                self._logged_epoch[run_id] = max((m.step for m in history), default=0)
        return self._client

    def setup(self, **info) -> None:
        self.client  # noqa: B018 - find the runs of a resumed search before its trials report

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        run_id = self.client and self._runs.get(trial.trial_id)
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=trial.trial_id,
                tags={
                    MLFLOW_PARENT_RUN_ID: self.parent_run_id,
                    "trial_id": trial.trial_id,
                    "outcome": "running",
                    **self.tags,
                },  # fmt: skip
            )
            run_id = self._runs[trial.trial_id] = run.info.run_id
            log_batched(self.client, run_id, params=params_of(trial.config))
        else:  # a resumed trial continues its own run
            self.client.update_run(run_id, status="RUNNING")
        self._logged_epoch.setdefault(run_id, 0)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            return
        now = int(time.time() * 1000)
        for past in result.get("history") or []:  # epochs a restore replayed from its checkpoint
            self._add_epoch(run_id, past, now)
        self._add_epoch(run_id, result, now)
        self._buffer[run_id] += [
            RunTag("epoch", str(result.get("epoch", 0))),
            RunTag("node_id", str(result.get("node_id"))),
        ]
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def _add_epoch(self, run_id: str, result: dict, timestamp: int) -> None:
        epoch = int(result.get("epoch", 0))
        if epoch <= self._logged_epoch.get(run_id, 0):
            return
        self._logged_epoch[run_id] = epoch
        batch = self._buffer.setdefault(run_id, [])
        for key in METRICS:
            value = result.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                batch.append(Metric(key, float(value) if math.isfinite(value) else float("nan"), timestamp, epoch))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end(trial, outcome_of(trial.last_result, self.max_epochs))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        # Tune writes the trace locally first and syncs it to storage later: read whichever exists now.
        local = trial.error_file
        trace = (Path(local).read_text() if local and Path(local).exists() else trial.get_error()) or "unknown error"
        lines = [line for line in str(trace).splitlines() if line.strip()]
        message = next((line for line in reversed(lines) if not line.startswith(" ")), lines[-1])
        self._end(trial, "errored", extra=[RunTag("error", message[:5000])])
        run_id = self._runs.get(trial.trial_id)
        if run_id is not None:
            try:
                self.client.log_text(run_id, str(trace), "error.txt")
            except (MlflowException, OSError) as exc:
                log.warning("MLflow: could not log the error of run %s (%s)", run_id, str(exc)[:200])

    def _end(self, trial, outcome: str, extra=()) -> None:
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            return
        epoch = (trial.last_result or {}).get("epoch", 0)
        tags = [RunTag("outcome", outcome), RunTag("epoch", str(epoch)), *extra]
        self._buffer.setdefault(run_id, []).extend([*tags, ("end", STATUS[outcome])])
        self.flush()

    def on_experiment_end(self, trials, **info) -> None:
        self.reconcile(trials)
        self.flush()

    def reconcile(self, trials) -> None:
        """Makes MLflow agree with Tune after a driver was killed: one complete run per trial, none RUNNING.

        A killed driver loses whatever was buffered, and a resumed Tune does not replay trials that had already
        ended. So: epochs missing from a run are filled in from the trial's own result.json, runs of ended trials
        are ended, and runs of trials the restored experiment never knew (created after its last snapshot,
        then suggested anew) are deleted.
        """
        known = {t.trial_id for t in trials}
        for trial_id, run_id in list(self._runs.items()):
            if trial_id not in known:
                self.client.delete_run(run_id)
                del self._runs[trial_id]
        for trial in trials:
            run_id = self._runs.get(trial.trial_id)
            last = trial.last_result or {}
            if run_id is None or last.get("epoch", 0) <= self._logged_epoch.get(run_id, 0):
                continue
            results = Path(trial.local_path or "", "result.json")
            if results.exists():
                for line in results.read_text().splitlines():
                    self._add_epoch(run_id, json.loads(line), int(time.time() * 1000))
        ended = {"TERMINATED": None, "ERROR": "errored"}
        for trial in trials:
            run_id = self._runs.get(trial.trial_id)
            if run_id is None or trial.status not in ended or self.client.get_run(run_id).info.status != "RUNNING":
                continue
            if run_id in self._buffer and any(isinstance(i, tuple) for i in self._buffer[run_id]):
                continue  # its end is already buffered
            outcome = ended[trial.status] or outcome_of(trial.last_result, self.max_epochs)
            self._end(trial, outcome)
        for trial in trials:  # an interrupted search: --resume sets these RUNNING again
            run_id = self._runs.get(trial.trial_id)
            if run_id is not None and trial.status not in ended:
                self._buffer.setdefault(run_id, []).extend([RunTag("outcome", "interrupted"), ("end", "KILLED")])

    def flush(self) -> None:
        """Sends every buffered metric, tag and run end; keeps whatever the store did not take."""
        self._last_flush = time.monotonic()
        for run_id in list(self._buffer):
            items = self._buffer[run_id]
            metrics = [m for m in items if isinstance(m, Metric)]
            tags = list({t.key: t for t in items if isinstance(t, RunTag)}.values())
            ends = [status for kind, status in (i for i in items if isinstance(i, tuple))]
            try:
                log_batched(self.client, run_id, metrics=metrics, tags=tags)
                if ends:
                    self.client.set_terminated(run_id, status=ends[-1])
            except (MlflowException, OSError) as exc:
                log.warning("MLflow: could not log to run %s (%s); will retry", run_id, str(exc)[:200])
                continue
            del self._buffer[run_id]

    def pending(self) -> list[str]:
        """Run ids with metrics or ends the store has not taken yet."""
        return [run_id for run_id, items in self._buffer.items() if items]
