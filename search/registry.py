"""The search's winner in MLflow's Model Registry, behind a champion/challenger gate (the REGISTER setting).

`register` adds the winner's logged model as a new version of the registered model, tagged with where it came
from (the search's parent run, the trial, the space file and its git commit) and with its test accuracy and the
test split it was measured on. The alias `champion` moves to the new version only when its `test_acc` beats the
current champion's on the same test split; otherwise the version gets `challenger` and `why` says why. A thin
layer over MlflowClient: whatever serves the tracking store serves the registry (a sqlite file, `mlflow server`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

if TYPE_CHECKING:
    from search.data import Splits
    from search.state import SearchJob

CHAMPION, CHALLENGER = "champion", "challenger"
METRIC = "test_acc"  # what the gate compares, as the search reports it
SPLIT = "test_split"  # the tag naming the test split METRIC was measured on


def register_winner(job: SearchJob, model_id: str, trial_id: str, test: dict, splits: Splits) -> dict:
    """Registers a search's winner (the logged model `model_id`) under the space's REGISTER name.

    Returns:
        What `register` returns, for the summary.
    """
    tags = {
        "parent_run_id": job.parent_run_id, "trial_id": str(trial_id), "space": str(job.space.path),
        "space_sha": job.space.sha, METRIC: repr(float(test[METRIC])), SPLIT: test_split_id(splits),
    }  # fmt: skip
    if commit := git_commit(job.space.path):
        tags["git_commit"] = commit
    return register(job.client, job.space.settings.REGISTER, model_id, job.parent_run_id, tags)


def register(client: MlflowClient, name: str, model_id: str, run_id: str, tags: dict[str, str]) -> dict:
    """A new version of `name` (created if need be) from the logged model `model_id`, then the gate.

    Args:
        tags: the version's tags; METRIC and SPLIT are what the gate compares.

    Returns:
        name, version, alias (CHAMPION or CHALLENGER), why (why not champion; '' when it is) and uri (the alias's
        models:/ URI, which loads it).
    """
    try:
        client.create_registered_model(name, description="winners of vgg-search searches (search.registry)")
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    aliases = client.get_registered_model(name).aliases
    champion = client.get_model_version(name, aliases[CHAMPION]) if CHAMPION in aliases else None
    logged = client.get_logged_model(model_id)
    # the logged model's own artifact location, not its models:/ URI: a sqlite registry resolves that URI through
    # MLflow's global tracking URI, which need not be this client's
    version = client.create_model_version(name, logged.artifact_location, run_id, tags, model_id=model_id)
    # the logged model's page links the versions made of it, as mlflow.register_model does
    known = json.loads(logged.tags.get(MLFLOW_MODEL_VERSIONS, "[]")) + [{"name": name, "version": str(version.version)}]
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(known)})
    why = gate(tags, champion.version if champion else None, champion.tags if champion else None)
    alias = CHALLENGER if why else CHAMPION
    client.set_registered_model_alias(name, alias, version.version)
    return {"name": name, "version": int(version.version), "alias": alias, "why": why,
            "uri": f"models:/{name}@{alias}"}  # fmt: skip


def gate(new: dict[str, str], champion_version: str | None, champion: dict[str, str] | None) -> str:
    """Why a new version with tags `new` must not become champion over `champion` (its tags); '' if it may."""
    if champion is None:
        return ""
    theirs = f"champion version {champion_version}"
    if champion.get(SPLIT) != new[SPLIT]:
        measured = f"on {champion[SPLIT]}" if SPLIT in champion else "on a test split it does not record"
        return f"not comparable: {theirs} was tested {measured}, this one on {new[SPLIT]}"
    try:
        best = float(champion[METRIC])
    except (KeyError, ValueError):
        return f"not comparable: {theirs} records no {METRIC}"
    if float(new[METRIC]) > best:
        return ""
    return f"{METRIC} {float(new[METRIC]):.4f} does not beat {theirs}'s {best:.4f}"


def test_split_id(splits: Splits) -> str:
    """The test split, wherever its files lie: the dataset, its size and a digest of its images and labels. Two
    test accuracies compare only when this is the same (a test_subset, other data, a fake set all change it)."""
    digest = hashlib.sha256()
    for part in (splits.test_x, splits.test_y):
        digest.update(str(list(part.shape)).encode())
        digest.update(part.contiguous().numpy().tobytes())
    return f"{splits.info.name} test set of {len(splits.test_y)} images, sha256 {digest.hexdigest()[:16]}"


def git_commit(path: str | os.PathLike) -> str:
    """The commit of the git work tree holding `path`, '-dirty' when its tracked files differ from it; else a Ray
    Job's SEARCH_GIT_COMMIT (its working folder has no .git), else ''."""
    folder = Path(path).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                   capture_output=True, text=True, timeout=10)  # fmt: skip
            return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):  # no git on the machine
        pass
    return os.environ.get("SEARCH_GIT_COMMIT", "")
