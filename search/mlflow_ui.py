"""What the MLflow UI shows of a search: the experiment's kind, each run's source and git commit, the dataset.

- MLflow 3 opens an experiment without a kind in its GenAI view (traces, sessions); `mlflow.experimentKind`
  set to `custom_model_development` opens it as model training, on the runs table.
- MlflowClient, unlike `mlflow.start_run`, adds no context tags: `run_tags` resolves MLflow's own (user, source
  name and type, git commit), so the Source column is filled. A Ray Job's working folder has no .git:
  `search.submit` passes the commit in SEARCH_GIT_COMMIT.
- The Dataset column lists a run's dataset inputs: `log_dataset` logs the search's data (name, digest, split
  sizes) to the parent run, and every trial's run repeats its parent's inputs (`inherit_dataset`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import TYPE_CHECKING

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID

if TYPE_CHECKING:
    from search.data import Splits


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3's "model training" kind


def experiment_tags() -> dict[str, str]:
    return dict(EXPERIMENT_KIND)


@functools.cache
def run_tags() -> dict[str, str]:
    """MLflow's context tags of this process (user, source, git commit), resolved once."""
    tags = resolve_tags()
    if commit := os.environ.get("SEARCH_GIT_COMMIT"):
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def dataset(splits: Splits, data_dir: str) -> Dataset:
    """The search's data as an MLflow dataset: its name, a digest of its contents, where it is, split sizes."""
    digest = hashlib.sha256()
    for part in (splits.train_y, splits.val_y, splits.test_y, splits.train_x[:256], splits.test_x[:256]):
        digest.update(part.contiguous().numpy().tobytes())
    profile = {
        "train": len(splits.train_y), "val": len(splits.val_y), "test": len(splits.test_y),
        "classes": splits.info.num_classes, "image": list(splits.train_x.shape[1:]),
    }  # fmt: skip
    from search.data import DEFAULT_DATA_DIR  # here only: sync, which logs no dataset, needs no torch

    source = json.dumps({"uri": os.path.abspath(data_dir or DEFAULT_DATA_DIR)})
    return Dataset(splits.info.name, digest.hexdigest()[:8], "local", source, profile=json.dumps(profile))


def log_dataset(client: MlflowClient, run_id: str, splits: Splits, data_dir: str) -> None:
    """Logs the data to a run as a training input (the runs table's Dataset column)."""
    client.log_inputs(run_id, [DatasetInput(dataset(splits, data_dir), [InputTag(MLFLOW_DATASET_CONTEXT, "train")])])


def dataset_inputs(client: MlflowClient, run_id: str) -> list[DatasetInput]:
    """A run's dataset inputs, which its trials' runs repeat."""
    inputs = client.get_run(run_id).inputs
    return list(inputs.dataset_inputs) if inputs and inputs.dataset_inputs else []


def inherit_dataset(client: MlflowClient, run_id: str, parent_run_id: str) -> None:
    """Gives a trial's run its parent's dataset inputs."""
    if inputs := dataset_inputs(client, parent_run_id):
        client.log_inputs(run_id, inputs)


SHARED_VIEW_TAG = "mlflow.sharedViewState."  # the UI's "Copy share link": an experiment tag holding a view's state
UI_PATH = (
    "#/experiments/{experiment_id}/runs?workflowType=machine_learning&compareRunsMode={mode}&viewStateShareKey={key}"
)


def save_view(
    client: MlflowClient, experiment_id: str, parent_run_id: str, metric: str, params: list[str], mode: str = "max"
) -> str:
    """Saves a comparison view of one search as a shared view of its experiment; returns the UI path opening it.

    The view lists the search's trials only (not its parent, whose legend entries drew nothing, nor other
    searches or the final retrains), with `best_<metric>` (the best epoch's value: the search's ranking, stopped
    trials included), its epoch, the last `metric`, each trial's outcome and the searched parameters as columns,
    best first. Its charts: every trial's learning curve on one full-width chart, so that its legend (two rows
    that scroll, in MLflow 3.17) names several trials per row, and a trial ASHA stopped after one epoch, drawn as a
    point, is as easy to find there as a line; the searched parameters against `metric` in parallel
    coordinates; `metric` against each trial's MACs per image (the accuracy-cost trade-off). The path opens the
    charts; the runs table is one click away (the list icon).
    """
    trials = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and tags.stage = 'search'"
    best = f"metrics.`best_{metric}`"  # logged by search.tracking with every epoch
    columns = [best, "metrics.`best_epoch`", f"metrics.`{metric}`", "tags.`outcome`",
               *(f"params.`{p}`" for p in params)]  # fmt: skip
    sections = [
        {"uuid": "curves", "name": "Learning curves", "display": True, "isReordered": False, "columns": 1,
         "cardHeight": 400},
        {"uuid": "search", "name": "Search", "display": True, "isReordered": False, "columns": 2, "cardHeight": 400},
    ]  # fmt: skip
    common = {"runsCountToCompare": 100, "deleted": False, "isGenerated": False}
    charts = [
        {**common, "uuid": f"curves-{metric}", "type": "LINE", "metricSectionId": "curves", "metricKey": metric,
         "selectedMetricKeys": [metric], "xAxisKey": "step", "lineSmoothness": 0, "scaleType": "linear",
         "displayName": f"{metric} per epoch"},
        {**common, "uuid": "parallel", "type": "PARALLEL", "metricSectionId": "search", "selectedParams": params,
         "selectedMetrics": [metric], "showAllRuns": True},
        {**common, "uuid": "front", "type": "SCATTER", "metricSectionId": "search",
         "xaxis": {"key": "macs", "type": "METRIC"}, "yaxis": {"key": metric, "type": "METRIC"}},
    ]  # fmt: skip
    state = {
        "searchFilter": trials, "orderByKey": best, "orderByAsc": mode == "min", "startTime": "ALL",
        "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
        "selectedColumns": columns, "runsExpanded": {}, "compareRunCharts": charts,
        "compareRunSections": sections, "isAccordionReordered": False, "hideEmptyCharts": True,
    }  # fmt: skip
    key = f"search-{parent_run_id[:12]}"
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, json.dumps(state))
    return UI_PATH.format(experiment_id=experiment_id, mode="CHART", key=key)


def link(tracking_uri: str, path: str) -> str:
    """How to open a UI path: a server's own address, or `mlflow ui` on a file store and its default address."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{path}"
    return f"http://127.0.0.1:5000/{path}  (after: mlflow ui --backend-store-uri {tracking_uri})"
