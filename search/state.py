"""What identifies a search: the values that travel together through it, and its state file.

`search.json` (`SearchState`) sits beside Tune's own state in the search's folder (see `search.record`): which
space file (and its fingerprint), the overrides, and where its MLflow records are, so --resume and
`python -m search.tracking sync` find them.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from search.space import Space


@dataclass
class SearchState:
    """The contents of search.json."""

    space_path: str
    space_sha: str
    overrides: dict
    smoke: bool = False
    data_dir: str = ""
    experiment: str = ""
    experiment_id: str = ""
    parent_run_id: str = ""
    tracking_uri: str = ""
    max_epochs: int = 0
    metric: str = "val_acc"  # METRIC and MODE, by which each trial's run keeps its best epoch
    mode: str = "max"
    warm_start: str = ""  # the earlier search TPE started from
    claim_id: str = ""  # tags the parent run, so that a search killed before it recorded parent_run_id finds it


@dataclass
class SearchJob:
    """One search, as every step after preparing it sees it.

    Attributes:
        space: the loaded space file.
        name: the search's name; its folder is `storage/name`.
        storage: local path or URI for Tune's state and checkpoints.
        data_dir: where the dataset lives on every node ("" = the default).
        client: the MLflow client of its store.
        experiment_id: its MLflow experiment.
        parent_run_id: its MLflow parent run.
        warm_start: finished trials of an earlier search that TPE starts from (a new search only).
    """

    space: Space
    name: str
    storage: str
    data_dir: str
    client: MlflowClient
    experiment_id: str
    parent_run_id: str
    warm_start: list = field(default_factory=list)

    @property
    def path(self) -> str:
        return posixpath.join(self.storage, self.name)  # a URI too (s3://...), which pathlib would mangle

    @property
    def resume_command(self) -> str:
        return f"python -m search.run {self.space.path} --resume --name {self.name}"
