"""`python -m search.run SPACE`: Ray Tune drives the trials, Optuna's TPE proposes configs, ASHA stops weak
ones early, MLflow records every trial under one parent run; at the end the winner is tested and logged.

The same is one Python call: `search.run.search("spaces/vgg_cifar100.py", smoke=True)`.

This module checks what was asked (the flags, the space file's settings, --storage) before it imports the search
itself (`search.driver`: torch, torchvision, Ray, MLflow, seconds to load), so that a mistake answers at once.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from search import cli
from search.errors import UsageError
from search.record import check_storage
from search.space import read_space

if TYPE_CHECKING:
    from search.driver import SearchResult

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the compact CLIReporter table, plain lines off a terminal
# Tune snapshots the search whenever a trial has checkpointed twice since the last snapshot (search.tuner keeps 2
# checkpoints a trial), and warns to change that setting when it happens often, as with epochs of seconds: advice
# for this code, not for its user (its cost at scale is in bench/README.md).
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
cli.cap_mlflow_retries()  # before MLflow is imported, so the notebook's searches get it too


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
    register: str = "",
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
        data_dir: where datasets live, for this process (default ./data or $SEARCH_DATA_DIR): the trials get them
            from it through Ray's object store.
        address: an existing Ray cluster ("auto": this machine's, "ray://...", host:port); default: a private
            local Ray.
        warm_start: the name of an earlier search (under `storage`) whose trials that fit this space TPE starts
            from; a new search only.
        final_top_k, final_seeds: retrain the K best configs from scratch with S seeds each.
        final_front: retrain the members of the accuracy-against-MACs front instead of the top K.
        register: the REGISTER setting: the winner becomes a new version of this MLflow registered model, alias
            `champion` when its test accuracy beats the current champion's on the same test split, else
            `challenger`.
        quiet: no live table.

    Raises:
        UsageError: (SpaceError, DataError, ...) a mistake in what was asked, before anything is created.
        SearchFailed: the search ran but could not finish; its parent run is ended FAILED.
        KeyboardInterrupt: Ctrl-C or SIGTERM; the parent run is ended KILLED, and once it exists the error
            (errors.Interrupted) says how to resume.
    """
    _check_arguments(locals())
    space_path, storage, data_dir = os.fspath(space_path), os.fspath(storage), os.fspath(data_dir)
    overrides = dict(sets or {})
    for key, value in (
        ("NUM_SAMPLES", num_samples), ("MAX_EPOCHS", max_epochs), ("TIME_BUDGET", time_budget),
        ("CPUS_PER_TRIAL", cpus_per_trial), ("GPUS_PER_TRIAL", gpus_per_trial), ("MAX_CONCURRENT", max_concurrent),
        ("REGISTER", register),
    ):  # fmt: skip
        if value not in (None, ""):
            overrides[key] = value
    if final_top_k < 0 or final_seeds < 1:
        raise UsageError(f"--final-top-k {final_top_k} must be >= 0 and --final-seeds {final_seeds} >= 1")
    if final_top_k and final_front:
        raise UsageError(f"--final-top-k {final_top_k} and --final-front: retrain one or the other")
    if warm_start and resume:
        raise UsageError(f"--warm-start {warm_start}: a warm start begins a new search; --resume continues one")
    check_storage(storage)  # the cheap mistakes first: none of these needs torch, Ray or MLflow
    read_space(space_path, overrides, smoke)
    from search.driver import run_search  # the search itself: torch, Ray and MLflow load here

    return run_search(
        space_path, overrides, smoke=smoke, name=name, resume=resume, storage=storage, tracking_uri=tracking_uri,
        data_dir=data_dir, address=address, quiet=quiet, warm_start=warm_start, final_top_k=final_top_k,
        final_front=final_front, final_seeds=final_seeds,
    )  # fmt: skip


_KINDS = {"str": (str,), "int": (int,), "float": (float, int), "bool": (bool,), "dict": (dict,), "None": (type(None),)}
_PATHS = ("space_path", "storage", "data_dir")  # a notebook's pathlib.Path is welcome


def _check_arguments(values: dict) -> None:
    """A notebook's `search(..., storage=None)` is one line naming the argument, not a TypeError deep inside; an
    address is checked for its form before anything is created."""
    for key, value in values.items():
        wanted = search.__annotations__[key]
        kinds = tuple(k for name in wanted.split(" | ") for k in _KINDS[name])
        kinds += (os.PathLike,) if key in _PATHS else ()
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise UsageError(f"search({key}={value!r:.80}): expected {wanted}")
    if values["address"] not in ("", "auto", "local"):
        cli.parse_address("--address", values["address"], ("ray",))


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
    p.add_argument("--register", default="", metavar="NAME", help="register the winner in MLflow's Model Registry "
                   "(REGISTER): champion if it beats the current one, else challenger")  # fmt: skip
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
