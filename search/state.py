"""What identifies a search: the values that travel together through it, and its state file.

`search.json` sits beside Tune's own state in the search's folder: which space file (and its fingerprint), the
overrides, and where its MLflow records are, so --resume and `python -m search.tracking sync` find them.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from search.errors import UsageError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from search.space import Space

STATE_FILE = "search.json"


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
        return os.path.join(self.storage, self.name)

    @property
    def resume_command(self) -> str:
        return f"python -m search.run {self.space.path} --resume --name {self.name}"


def state_path(storage: str, name: str) -> Path:
    if "://" in storage:
        raise UsageError("remote --storage: keep search state on a shared path for now (an NFS mount)")
    return Path(storage, name, STATE_FILE)


def check_storage(storage: str) -> None:
    """Fails before anything starts when a search could not keep its state and checkpoints in `storage`; it
    creates nothing.

    Raises:
        UsageError: a URI (see `state_path`), or a path that cannot be written, naming the path and why.
    """
    state_path(storage, "")
    existing = Path(storage)
    while not existing.exists():  # checked without creating anything: nothing is written before the search
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--storage {storage}: cannot write there ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--storage {storage}: cannot write there (no write permission on {existing})")


def read_state(folder: Path) -> SearchState:
    """Reads a search folder's search.json.

    Raises:
        UsageError: no search.json there, or one this version cannot read.
    """
    path = Path(folder, STATE_FILE)
    if not path.exists():
        raise UsageError(f"{folder}: not a search folder (no {STATE_FILE})")
    try:
        return SearchState(**json.loads(path.read_text()))
    except (TypeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: unreadable search state ({exc})") from None


def write_state(folder: Path, state: SearchState) -> None:
    """Writes search.json atomically: a crash leaves the old file or the new one, never half of one."""
    path = Path(folder, STATE_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    os.replace(tmp, path)


@contextmanager
def claim(storage: str, name: str, state: SearchState) -> Iterator[Path]:
    """Claims `storage/name` for a new search: its search.json, created exclusively and whole (`state`, its parent
    run still to come), and the block that creates the parent and writes its id with `write_state`.

    Two searches started with one --name both find no search.json; only one can create it: the file is written
    aside and hard-linked into place, which is atomic and fails when the name exists (on NFS too). A search killed
    inside the block leaves a readable search.json without a parent_run_id, which --resume starts afresh. If the
    block fails instead, the claim is released: the file goes, and the folder too when the claim made it and it is
    still empty.

    Raises:
        UsageError: a search of that name exists, or is starting this moment.
    """
    path = state_path(storage, name)
    made = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{STATE_FILE}.{uuid.uuid4().hex}")
    aside.write_text(json.dumps(asdict(state), indent=2))
    try:
        os.link(aside, path)
    except FileExistsError:
        raise UsageError(
            f"--name {name}: a search of that name exists in {storage}; use --resume or a new name"
        ) from None
    finally:
        aside.unlink()
    try:
        yield path
    except BaseException:
        if not read_state(path.parent).parent_run_id:  # never recorded: nothing of this search exists
            path.unlink()
            if made:
                with suppress(OSError):  # something else is in it now
                    path.parent.rmdir()
        raise


BEST_CONFIG_FILE = "best_config.json"


def write_best_config(folder: str | os.PathLike, config: dict) -> Path:
    """Writes a search's winning config, whole and exact, as best_config.json (atomically, replacing the last
    winner's): `python -m search.train --config` of it trains that trial again.

    Returns:
        The file's path.
    """
    path = Path(folder, BEST_CONFIG_FILE)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path
