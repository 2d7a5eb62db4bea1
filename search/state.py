"""What identifies a search: the values that travel together through it, from preparing it to its summary.

What it keeps on storage, search.json (`search.record.SearchState`) beside Tune's own record, is `search.record`'s.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from search.space import Space


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
