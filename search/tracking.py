"""MLflow: one parent run per search, one child run per trial; a projection of Tune's own record.

Tune's experiment folder is the durable record of a search (every trial's config, every epoch in its
result.json, how it ended). `sync` rebuilds MLflow from it: one query for the parent's child runs, then for each
trial a missing run is created, the epochs MLflow lacks appended, and the final status set. Running it twice
changes nothing; it runs at the end of a search, on --resume, and as a command for a store that was away:

    python -m search.tracking sync runs/NAME

While a search runs, `LiveTracking` logs results as they arrive, from a thread of its own so Tune's loop never
waits on the store. It is best-effort: when the store fails it stops logging the trials it missed, and the next
sync fills every gap. Each run's `epoch` tag counts the epochs MLflow holds without a gap; it travels in the same
request as those epochs' metrics, so it never claims more than MLflow has.

Each trial's run also holds the best value of the search's metric so far and the epoch it came at (`best_val_acc`,
`best_epoch`), sent with the epochs that set them: sorting the runs table by that column ranks the trials, the
ones ASHA stopped too, by the best each reached.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import queue
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from filelock import FileLock
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH
from ray import tune
from ray.tune.experiment import Trial

from search import cli, mlflow_ui, record
from search.errors import UsageError, one_line
from search.schedule import outcome_of

log = logging.getLogger(__name__)
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables"

METRICS = (
    "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "epoch_seconds", "images_per_second",
    "params", "macs", "latency_ms",  # the trial's cost: constant, logged with every epoch so charts can use it
)  # fmt: skip
STATUS = {"completed": "FINISHED", "stopped_early": "FINISHED", "diverged": "FAILED", "errored": "FAILED",
          "interrupted": "KILLED", "running": "RUNNING"}  # fmt: skip
# Whole epochs, their best-so-far pair and their `epoch` and node_id tags in one request: MlflowClient.log_batch
# splits anything bigger and sends the tags with the first part, which would let the tag claim epochs still on
# their way. Room is left for what `sync` sends with them: a new run's params and the outcome and error tags.
EPOCHS_PER_REQUEST = (MAX_ENTITIES_PER_BATCH - MAX_PARAMS_TAGS_PER_BATCH - 2 - 2 - 2) // len(METRICS)
RETRY_SECONDS = 30  # after a failed request, live logging rests this long before trying the store again


# The tracking stores MLflow opens ("" and file: a folder); anything else it would refuse in terms of its registry.
STORE_SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc",
                 "uc")  # fmt: skip


def open_store(tracking_uri: str | None) -> MlflowClient:
    """A client of the tracking store, checked before any trial trains.

    Raises:
        UsageError: one line naming the tracking URI and what went wrong (unreachable, credentials).
    """
    uri = absolute_store_uri(tracking_uri or mlflow.get_tracking_uri())
    scheme = urlparse(uri).scheme.split("+")[0]  # postgresql+psycopg2://
    if scheme not in STORE_SCHEMES:  # MLflow would blame its model registry
        raise UsageError(f"MLflow tracking store {uri}: unknown scheme '{scheme}://'; use sqlite:///PATH/mlflow.db, "
                         "http(s)://HOST:PORT (an MLflow server) or a database URI")  # fmt: skip
    # Opening a new sqlite store creates its tables; two searches starting at once would race doing so.
    lock = FileLock(uri.removeprefix("sqlite:///") + ".lock") if uri.startswith("sqlite:///") else nullcontext()
    try:
        with lock:
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)
    except Exception as exc:  # requests, MLflow and SQLAlchemy errors all mean the same thing here
        reason = one_line(exc, limit=1000)  # MLflow's own advice comes last (MLFLOW_ALLOW_FILE_STORE=true)
        if "401" in reason or "403" in reason or "Unauthorized" in reason:
            reason = "credentials rejected (set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
        raise UsageError(f"MLflow tracking store {uri}: {reason}") from None
    return client


@contextmanager
def fluent_store(uri: str):
    """MLflow's fluent API (`mlflow.start_run`, `mlflow.pytorch.log_model`) pointed at `uri` for a block, then back
    at whatever it was: a search run in a notebook must not move the notebook's own logging to its store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # sets $MLFLOW_TRACKING_URI too
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        if before is not None:
            os.environ["MLFLOW_TRACKING_URI"] = before


def absolute_store_uri(uri: str) -> str:
    """A sqlite store's URI with an absolute path: `sqlite:///mlflow.db` (MLflow's default) means the folder the
    command started in, and a search records its store's URI for --resume and sync, which may run elsewhere."""
    path = uri.removeprefix("sqlite:///")
    if uri.startswith("sqlite:///") and path != ":memory:" and not path.startswith("/"):
        return f"sqlite:///{Path(path).resolve()}"
    return uri


def artifact_root(tracking_uri: str) -> str | None:
    """Where a file-based store keeps artifacts: beside the store, never in the current folder.

    MLflow's default for a sqlite or file store is `./mlruns` relative to whichever process logs, so a search
    started elsewhere (a Ray Job's temporary working folder) scatters artifacts where nothing finds them later.
    A server chooses its own (None).
    """
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent.joinpath("mlartifacts").as_uri()
    return None  # a file store keeps artifacts inside itself already; a server picks its own


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment of a space, created as a model-training experiment with its artifacts beside the store.

    Raises:
        UsageError: an existing experiment keeps its artifacts in a relative folder (an older search's default),
            which this process would resolve somewhere else.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        root = artifact_root(client.tracking_uri)
        location = f"{root}/{name}" if root else None
        experiment_id = client.create_experiment(name, artifact_location=location, tags=mlflow_ui.experiment_tags())
        return experiment_id
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    location = experiment.artifact_location
    if not urlparse(location).scheme and not Path(location).is_absolute():  # not mlflow-artifacts:/1, s3://, /abs
        raise UsageError(
            f"MLflow experiment {name!r} keeps artifacts in the relative folder {location!r}; rename or delete "
            "that experiment, or pass another --tracking-uri"
        )
    for key, value in mlflow_ui.experiment_tags().items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def params_of(config: dict) -> list[Param]:
    """A trial's config as MLflow params; the final retrains' `variant` (a whole config) is unpacked."""
    config = {**config, **config.get("variant", {})}
    config.pop("variant", None)
    return [Param(k, str(v)[:6000]) for k, v in sorted(config.items())]


def versions() -> dict[str, str]:
    """The versions that shape a search's results, as parent-run params: a seeded search proposes the same configs
    again only on the same Python, PyTorch, Ray, Optuna and MLflow; CUDA and cuDNN when this process has a GPU."""
    out = {"version.python": platform.python_version()}
    out.update({f"version.{name}": metadata.version(name) for name in ("torch", "torchvision", "ray", "optuna",
                                                                      "mlflow")})  # fmt: skip
    import torch  # here only: sync and the live logging need no torch

    if torch.cuda.is_available():
        out.update({"version.cuda": str(torch.version.cuda), "version.cudnn": str(torch.backends.cudnn.version())})
    return out


def start_parent(client: MlflowClient, experiment_id: str, name: str, params: dict, tags: dict, files: dict) -> str:
    """Creates a search's parent run with its params, tags and text files (the space file)."""
    run = client.create_run(experiment_id, run_name=name, tags={**mlflow_ui.run_tags(), **tags})
    client.log_batch(run.info.run_id, params=params_of(params))
    for artifact, text in files.items():
        client.log_text(run.info.run_id, text, artifact)
    return run.info.run_id


def discard_parents(client: MlflowClient, experiment_id: str, claim_id: str) -> None:
    """Deletes the parent runs a search began under `claim_id` and never recorded (it was killed starting): they
    hold only its params, which the parent that replaces them logs again."""
    if not claim_id:
        return
    for run in client.search_runs([experiment_id], filter_string=f"tags.search_claim = '{claim_id}'"):
        client.delete_run(run.info.run_id)


def end_parent(client: MlflowClient, run_id: str, status: str, **tags: str) -> None:
    """Ends the parent run; best-effort, since the store may be what failed (--resume ends it properly then)."""
    try:
        client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])
        client.set_terminated(run_id, status=status)
    except Exception as exc:  # the store is away: say so, but let the search's own error through
        log.warning("MLflow: could not end run %s as %s (%s)", run_id, status, one_line(exc))


def fail_pending_models(client: MlflowClient, experiment_id: str, run_id: str) -> None:
    """Marks FAILED the models of `run_id` still PENDING: MLflow 3 records a logged model before its files, and an
    interrupt in between would leave it PENDING for good (the resumed search logs the winner again)."""
    from mlflow.entities import LoggedModelStatus

    try:  # best-effort, as end_parent
        for model in client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'"):
            if model.status == LoggedModelStatus.PENDING:
                client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
    except Exception as exc:
        log.warning("MLflow: could not mark the models of run %s FAILED (%s)", run_id, one_line(exc))


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str, stage: str) -> dict[str, Run]:
    """trial_id -> run, for the parent's child runs of one stage (search, final): one query."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and tags.stage = '{stage}'",
        max_results=50000,
    )
    return {r.data.tags["trial_id"]: r for r in runs if "trial_id" in r.data.tags}


def _create_run(client: MlflowClient, experiment_id: str, parent_run_id: str, stage: str, trial_id: str,
                inputs: list, params: list[Param]) -> str:  # fmt: skip
    """A trial's run with the parent's dataset `inputs` and, when given, its `params` (`sync` sends them with the
    first epochs instead: one request less per trial)."""
    tags = {MLFLOW_PARENT_RUN_ID: parent_run_id, "trial_id": trial_id, "stage": stage, "epoch": "0"}
    run = client.create_run(experiment_id, run_name=trial_id, tags={**mlflow_ui.run_tags(), **tags})
    if params:
        client.log_batch(run.info.run_id, params=params)
    if inputs:
        client.log_inputs(run.info.run_id, inputs)
    return run.info.run_id


def _metrics(result: dict) -> list[Metric]:
    epoch, timestamp = int(result["epoch"]), int(result.get("timestamp", time.time()) * 1000)
    out = []
    for key in METRICS:
        value = result.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(Metric(key, float(value) if math.isfinite(value) else float("nan"), timestamp, epoch))
    return out


@dataclass(frozen=True)
class Ranking:
    """The search's metric and which way is better: what a trial's best epoch is measured by."""

    metric: str = "val_acc"
    mode: str = "max"

    @property
    def key(self) -> str:
        return f"best_{self.metric}"

    def best(self, results: list[dict], earlier: tuple[float, int] | None = None) -> tuple[float, int] | None:
        """(value, epoch) of the best finite value over `earlier` and these epochs; the first epoch on a tie."""
        scored = ([earlier] if earlier else []) + [
            (float(r[self.metric]), int(r["epoch"])) for r in results if _finite(r.get(self.metric))
        ]
        sign = 1 if self.mode == "max" else -1
        return max(scored, key=lambda p: (sign * p[0], -p[1])) if scored else None

    def logged(self, run: Run) -> tuple[float, int] | None:
        """The (value, epoch) a run holds, if any."""
        value, epoch = run.data.metrics.get(self.key), run.data.metrics.get(BEST_EPOCH)
        return None if value is None or epoch is None else (value, int(epoch))

    def metrics(self, best: tuple[float, int], timestamp: int, step: int) -> list[Metric]:
        return [Metric(self.key, best[0], timestamp, step), Metric(BEST_EPOCH, float(best[1]), timestamp, step)]


BEST_EPOCH = "best_epoch"


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _log_epochs(client: MlflowClient, run_id: str, results: list[dict], ranking: Ranking,
                earlier: tuple[float, int] | None = None, node_id: str = "", params: list[Param] = (),
                end_tags: list[RunTag] = ()) -> tuple[float, int] | None:  # fmt: skip
    """Logs consecutive epochs; each request carries the `epoch` tag of the last epoch it holds and the best
    (value, epoch) so far, counting the `earlier` best of the epochs before these. `params` go with the first
    request, `end_tags` (see `_end_tags`) with the last. Returns the best."""
    best, starts = earlier, range(0, len(results), EPOCHS_PER_REQUEST)
    for i in starts:
        chunk = results[i : i + EPOCHS_PER_REQUEST]
        tags = [RunTag("epoch", str(chunk[-1]["epoch"]))] + ([RunTag("node_id", node_id)] if node_id else [])
        metrics = [m for r in chunk for m in _metrics(r)]
        if best := ranking.best(chunk, best):
            metrics += ranking.metrics(best, metrics[-1].timestamp if metrics else 0, int(chunk[-1]["epoch"]))
        client.log_batch(run_id, metrics=metrics, params=list(params) if i == 0 else [],
                         tags=tags + (list(end_tags) if i == starts[-1] else []))  # fmt: skip
    return best


def _end_tags(outcome: str, error: str = "") -> list[RunTag]:
    return [RunTag("outcome", outcome)] + ([RunTag("error", error[-5000:])] if error else [])


def _end_run(client: MlflowClient, run_id: str, outcome: str, error: str = "", tagged: bool = False) -> None:
    """Ends a run as its trial ended: its `_end_tags` (unless they were `tagged` with its last epochs), then its
    status."""
    if not tagged:
        client.log_batch(run_id, tags=_end_tags(outcome, error))
    if outcome == "running":
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, status=STATUS[outcome])


def sync(experiment_path: str | Path, client: MlflowClient, experiment_id: str, parent_run_id: str,
         max_epochs: int, stage: str = "search", ranking: Ranking = Ranking()) -> dict[str, int]:  # fmt: skip
    """Makes MLflow agree with Tune's record of an experiment: exactly one complete run per trial.

    Creates missing runs, appends the epochs MLflow lacks, ends each run as its trial ended (or KILLED with
    outcome `interrupted` when the search stopped before it did) and deletes runs of trials the experiment does
    not know (created after its last snapshot by a driver that was then killed); each run's best epoch by
    `ranking` (the search's METRIC and MODE) is set as Tune's record has it. Idempotent. Without a snapshot
    (a search killed before its first, a partial copy) it changes nothing: deleting needs a record to compare with.

    Raises:
        UsageError: the snapshot cannot be read (truncated, not Tune's); nothing is changed then.

    Returns:
        Counts of what changed: created, epochs, ended, deleted.
    """
    experiment_path = str(experiment_path)
    changed = {"created": 0, "epochs": 0, "ended": 0, "deleted": 0}
    if not record.has_snapshot(experiment_path):  # killed before its first snapshot, or a partial copy: nothing known
        return changed  # and nothing known is no reason to delete: a run is an orphan only beside a snapshot
    trials = record.tune_trials(experiment_path)
    runs = child_runs(client, experiment_id, parent_run_id, stage)
    for trial_id, run in runs.items():
        if trial_id not in trials:
            client.delete_run(run.info.run_id)
            changed["deleted"] += 1
    inputs = None  # the parent's dataset inputs, which every new run repeats: read once
    for trial_id, trial in trials.items():
        run, params = runs.get(trial_id), []
        if run is None:  # its params go with its first epochs
            inputs = mlflow_ui.dataset_inputs(client, parent_run_id) if inputs is None else inputs
            params = params_of(dict(trial.config))
        run_id = run.info.run_id if run else _create_run(client, experiment_id, parent_run_id, stage, trial_id,
                                                         inputs, [])  # fmt: skip
        changed["created"] += run is None
        tagged = int(run.data.tags.get("epoch", 0)) if run else 0
        results = record.results(experiment_path, trial_id)
        outcome = _outcome(trial, experiment_path, results[-1] if results else None, max_epochs)
        ended = run and run.data.tags.get("outcome") == outcome and run.info.status == STATUS[outcome]
        ended = ended and (outcome != "errored" or run.data.tags.get("error"))  # live logging ends without the trace
        error = ""
        if not ended and outcome == "errored" and not (run and run.data.tags.get("error")):
            error, trace = record.error_trace(experiment_path, trial_id)
            client.log_text(run_id, trace, "error.txt")
        # a driver killed mid-request can leave the `epoch` tag behind the metrics, and the record behind both;
        # the live logging of a resumed search trusts the tag, so a run left unended has its tag checked too
        unended = run is not None and run.info.status in ("RUNNING", "KILLED")
        behind = run is not None and results and (results[-1]["epoch"] > tagged or unended)  # a new run holds none
        logged = _logged_epochs(client, run_id, tagged) if behind else tagged
        missing = [r for r in results if r["epoch"] > logged]
        if missing:  # with a new run's params, and how the trial ended (its status follows)
            earlier = ranking.best([r for r in results if r["epoch"] <= logged])
            _log_epochs(client, run_id, missing, ranking, earlier, params=params,
                        end_tags=[] if ended else _end_tags(outcome, error))  # fmt: skip
            changed["epochs"] += len(missing)
        else:
            if params:  # a trial that reported nothing
                client.log_batch(run_id, params=params)
            if logged > tagged:
                client.set_tag(run_id, "epoch", str(logged))
        best = ranking.best(results)
        if not missing and best and ranking.logged(run) != best:  # a run logged before runs held their best
            client.log_batch(run_id, metrics=ranking.metrics(best, int(time.time() * 1000), int(results[-1]["epoch"])))
        if not ended:
            _end_run(client, run_id, outcome, error, tagged=bool(missing))
            changed["ended"] += 1
    return changed


def _logged_epochs(client: MlflowClient, run_id: str, tagged: int) -> int:
    """The last epoch a run holds, from its metrics: the `epoch` tag can lag them by one request, since MLflow's
    log_batch writes metrics and tags in separate transactions and a driver can be killed between the two."""
    return max([tagged, *(m.step for m in client.get_metric_history(run_id, "val_acc"))])


def _outcome(trial: Trial, folder: str, last: dict | None, max_epochs: int) -> str:
    """How a trial ended, by Tune's snapshot and its folder (see `record.trial_status`)."""
    status = record.trial_status(trial, folder)
    if status == "TERMINATED":
        return outcome_of(last, max_epochs)
    return "errored" if status == "ERROR" else "interrupted"


class LiveTracking(tune.Callback):
    """Logs trials to MLflow as Tune reports them, from a thread of its own; best-effort (see the module doc).

    Args:
        tracking_uri: MLflow tracking URI (credentials come from the environment, never from here).
        experiment_id: the search's experiment.
        parent_run_id: the search's parent run.
        max_epochs: the epoch budget of a full trial, to tell completed from stopped early.
        stage: tags every child run (`search`, or `final` for the retrains); sync works one stage at a time.
        ranking: the search's METRIC and MODE, by which each run's best epoch is kept.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, max_epochs: int,
                 stage: str = "search", ranking: Ranking = Ranking()) -> None:  # fmt: skip
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.max_epochs, self.stage, self.ranking = max_epochs, stage, ranking
        self._reset()

    def _reset(self) -> None:
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial_id -> run_id
        self._logged: dict[str, int] = {}  # trial_id -> epochs MLflow holds without a gap
        self._best: dict[str, tuple[float, int] | None] = {}  # trial_id -> its best (value, epoch) in MLflow
        self._started: set[str] = set()  # trials this run started, and of them those that completed or failed
        self._ended: set[str] = set()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._rest_until = 0.0
        self._inputs: list | None = None  # the parent's dataset inputs, which each new run repeats

    def __getstate__(self) -> dict:
        # Tune pickles callbacks into the experiment state; a client, a queue and a thread don't belong there.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"ranking": Ranking(), **state})  # a search begun before runs held their best
        self._reset()

    def setup(self, **info) -> None:
        self._thread = threading.Thread(target=self._work, name="mlflow-live", daemon=True)
        self._thread.start()
        self._queue.put((self._find_runs, ()))

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._started.add(trial.trial_id)
        self._queue.put((self._start, (trial.trial_id, dict(trial.config))))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._queue.put((self._epoch, (trial.trial_id, [dict(result)])))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        outcome = outcome_of(trial.last_result, self.max_epochs)
        self._ended.add(trial.trial_id)
        self._queue.put((self._end, (trial.trial_id, outcome)))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended.add(trial.trial_id)
        self._queue.put((self._end, (trial.trial_id, "errored")))

    def on_experiment_end(self, trials, **info) -> None:
        # trials started here that neither completed nor failed were stopped with the run (Ctrl-C, a storage
        # outage), which Tune's cleanup marks TERMINATED: interrupted, since the next sync may be a while away
        for trial_id in sorted(self._started - self._ended):
            self._queue.put((self._end, (trial_id, "interrupted")))
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            for fn, args in self._coalesced([item]):
                if time.monotonic() < self._rest_until:
                    continue  # the store failed a moment ago: leave this to the next sync
                try:
                    fn(*args)
                except Exception as exc:  # whatever the store or the network raise, the search goes on
                    log.warning("MLflow: live logging paused for %d s (%s); the end of the search fills the gaps",
                                RETRY_SECONDS, one_line(exc, 200))  # fmt: skip
                    self._rest_until = time.monotonic() + RETRY_SECONDS

    def _coalesced(self, items: list) -> list:
        """`items` and what else waits in the queue, each trial's waiting epochs as one request (in its order)."""
        while not self._queue.empty() and items[-1] is not None:
            items.append(self._queue.get_nowait())
        if items[-1] is None:
            self._queue.put(None)  # the end: handled by _work's loop once these are sent
            items.pop()
        out, waiting = [], {}  # trial_id -> the epochs of its last request in `out`, while more can join them
        for fn, args in items:
            trial_id = args[0] if args else None
            if fn == self._epoch and trial_id in waiting:
                waiting[trial_id].extend(args[1])
                continue
            waiting.pop(trial_id, None)  # a start or an end: later epochs go after it
            if fn == self._epoch:
                waiting[trial_id] = args[1]
            out.append((fn, args))
        return out

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def _find_runs(self) -> None:
        for trial_id, run in child_runs(self.client, self.experiment_id, self.parent_run_id, self.stage).items():
            self._runs[trial_id] = run.info.run_id
            self._logged[trial_id] = int(run.data.tags.get("epoch", 0))
            self._best[trial_id] = self.ranking.logged(run)

    def _start(self, trial_id: str, config: dict) -> None:
        if trial_id in self._runs:  # resumed or retried: it continues its own run
            _end_run(self.client, self._runs[trial_id], "running")
            return
        if self._inputs is None:  # the parent's, read once
            self._inputs = mlflow_ui.dataset_inputs(self.client, self.parent_run_id)
        args = (self.client, self.experiment_id, self.parent_run_id, self.stage, trial_id, self._inputs)
        self._runs[trial_id] = _create_run(*args, params_of(config))
        self._logged[trial_id], self._best[trial_id] = 0, None

    def _epoch(self, trial_id: str, results: list[dict]) -> None:
        # Only the next epochs: after a gap (a failed request) the rest of this trial waits for sync.
        if trial_id not in self._runs:
            return
        new = []
        for result in results:
            if int(result.get("epoch", 0)) == self._logged[trial_id] + len(new) + 1:
                new.append(result)
        if new:
            node_id, earlier = str(new[-1].get("node_id", "")), self._best.get(trial_id)
            self._best[trial_id] = _log_epochs(self.client, self._runs[trial_id], new, self.ranking, earlier, node_id)
            self._logged[trial_id] += len(new)

    def _end(self, trial_id: str, outcome: str) -> None:
        if trial_id in self._runs:
            _end_run(self.client, self._runs[trial_id], outcome)


def sync_search(folder: str | Path) -> dict[str, int]:
    """Syncs a search folder (runs/NAME or s3://bucket/runs/NAME, which holds search.json) and its final retrains
    to its MLflow store."""
    folder = str(folder) if record.is_remote(folder) else str(Path(folder).resolve())
    state = record.read_state(folder)
    if not record.has_snapshot(folder):
        raise UsageError(
            f"{folder}: no Tune snapshot (experiment_state-*.json) there, so nothing to sync from: a partial copy, "
            "or a search stopped before its first snapshot; MLflow is left as it is"
        )
    client = open_store(state.tracking_uri)
    ranking = Ranking(state.metric, state.mode)
    totals = sync(folder, client, state.experiment_id, state.parent_run_id, state.max_epochs, ranking=ranking)
    final = record.final_folder(folder)
    if record.exists(final):
        args = (final, client, state.experiment_id, state.parent_run_id, state.max_epochs, "final", ranking)
        for key, n in sync(*args).items():
            totals[key] += n
    return totals


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m search.tracking", description="Rebuild a search's MLflow runs.")
    commands = p.add_subparsers(dest="command", required=True, parser_class=cli.ArgumentParser)
    sync_cmd = commands.add_parser("sync", help="make MLflow agree with a search's folder (idempotent)")
    sync_cmd.add_argument(
        "folder", help="the search's folder, e.g. runs/vgg_cifar100-20261124-101500 or s3://bucket/runs/NAME"
    )
    sync_cmd.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    cli.cap_mlflow_retries()
    changed = sync_search(args.folder)
    print("synced: " + ", ".join(f"{n} {what}" for what, n in changed.items()))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
