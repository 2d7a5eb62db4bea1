"""Orchestration overhead: 30 trials x 10 reported epochs of a trainable that does no training.

What is left when training costs nothing is what the search machinery costs. Three stacks, each under
Optuna's TPE and ASHA (bench/spaces/overhead.py: grace 1, reduction factor 3, two trials at a time), each
measured in a fresh process that starts and stops its own Ray:

- ours: `search.tuner.build_tuner` (OptunaASHA behind a ConcurrencyLimiter, ASHA, actor reuse) and
  `search.tracking.LiveTracking` logging to a real local MLflow store (SQLite in a temporary folder), as
  `search.run` wires them; the trainable reports what `search.trainable` reports, with no checkpoint.
- bare: Ray Tune with stock OptunaSearch, ASHA and actor reuse; no tracking. The floor.
- ours_untracked: ours without `LiveTracking`, to tell what tracking costs from what the rest of ours does.
- defaults: Ray Tune's defaults (a new worker process per trial: `reuse_actors=False`) with Ray's own
  `MLflowLoggerCallback` to the same kind of store; `defaults_untracked` is the same without the callback.

Every trial reports a made-up learning curve drawn from the order in which the trials start, not from
its config, so the stacks do the same work: their searchers propose different configs, but ASHA sees the
same scores in (nearly) the same order and stops the same trials. The figure is the wall time of
`Tuner.fit()`; `ray.init` and creating the MLflow store come before it. The stacks take turns, rep by
rep, and each of ours is compared with the bare run beside it.

    python -m bench.overhead [--quick] [--reps 5] [--slow-reps 2]
"""

from __future__ import annotations

import argparse
import fcntl
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # as search.run sets them, for every stack alike

from bench.common import child_result, emit, line, run_child, save, spread, verdict  # noqa: E402

SPACE_FILE = str(Path(__file__).parent / "spaces" / "overhead.py")
KINDS = ("ours", "bare", "ours_untracked", "defaults", "defaults_untracked")
TRIALS, EPOCHS = 30, 10
TARGET_VS_BARE = 1.2  # ours at most 1.2x the bare stack's time
TARGET_VS_DEFAULTS = 5.0  # and at least 5x faster than the defaults with MLflowLoggerCallback


def fake_metrics(trial_number: int, lr: float, epoch: int) -> dict:
    """The metrics `search.trainable` reports each epoch, on a made-up learning curve of the trial number."""
    quality = random.Random(trial_number).uniform(0.3, 0.9)
    val_acc = quality * (1 - math.exp(-epoch / 3))
    return {
        "epoch": epoch,
        "train_loss": 2.3 * (1 - val_acc),
        "train_acc": val_acc + 0.02,
        "val_loss": 2.3 * (1 - val_acc) + 0.05,
        "val_acc": val_acc,
        "val_top5": min(1.0, val_acc + 0.1),
        "lr": lr,
        "epoch_seconds": 0.0,
        "images_per_second": 0.0,
        "outcome": "running",
    }


def start_number(counter: str) -> int:
    """How many trials of this run started before this one, from a file the workers share."""
    with open(counter, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        f.seek(0)
        number = len(f.read())
        f.write(".")
    return number


def trivial(config: dict, checkpoint_seconds: float = 0.0) -> None:
    """Reports made-up epochs and no checkpoint (`build_tuner` passes every trainable its checkpoint policy)."""
    from ray import tune

    number = start_number(config["counter"])
    for epoch in range(1, config["epochs"] + 1):
        tune.report(fake_metrics(number, config["lr"], epoch))


def _asha(s: dict):
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epoch",
        metric=s.METRIC,
        mode=s.MODE,
        max_t=s.MAX_EPOCHS,
        grace_period=s.GRACE_PERIOD,
        reduction_factor=s.REDUCTION_FACTOR,
    )


def _store(root: str) -> tuple[str, str, str]:
    """A local MLflow store with its tables created, an experiment and a parent run: (uri, exp, run)."""
    from mlflow.tracking import MlflowClient

    from search.tracking import ensure_experiment

    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "overhead")
    return uri, experiment_id, client.create_run(experiment_id, run_name="search").info.run_id


def build_tuner(kind: str, trials: int, epochs: int, root: str):
    """The Tuner of one stack; see the module docstring."""
    import optuna
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from search.space import load_space
    from search.tracking import LiveTracking
    from search.tuner import build_tuner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(SPACE_FILE, {"NUM_SAMPLES": trials, "MAX_EPOCHS": epochs})
    s = space.settings
    fixed = {"epochs": epochs, "counter": os.path.join(root, "started")}
    param_space = {**space.params, **fixed}
    storage = os.path.join(root, "ray")
    # The stock searchers get the sampler make_searcher gives ours, so only the wiring differs.
    sampler = optuna.samplers.TPESampler(seed=s.SEED, constant_liar=True, multivariate=True)
    if kind in ("ours", "ours_untracked"):  # the product's own build_tuner, with the trivial trainable
        callbacks = []
        if kind == "ours":
            uri, experiment_id, parent = _store(root)
            callbacks = [LiveTracking(uri, experiment_id, parent, s.MAX_EPOCHS)]
        return build_tuner(
            space, trivial, path=os.path.join(storage, kind), param_space=fixed, max_concurrent=s.MAX_CONCURRENT,
            callbacks=callbacks,
        )  # fmt: skip
    if kind == "bare":
        searcher = OptunaSearch(metric=s.METRIC, mode=s.MODE, sampler=sampler)
        return tune.Tuner(
            tune.with_resources(trivial, {"cpu": s.CPUS_PER_TRIAL}),
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=s.MAX_CONCURRENT),
                scheduler=_asha(s),
                num_samples=s.NUM_SAMPLES,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(name="bare", storage_path=storage, verbose=0),
        )
    callbacks = []
    if kind == "defaults":
        uri, _, _ = _store(root)
        callbacks = [MLflowLoggerCallback(tracking_uri=uri, experiment_name="overhead")]
    return tune.Tuner(
        trivial,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(metric=s.METRIC, mode=s.MODE, sampler=sampler),
            scheduler=_asha(s),
            num_samples=s.NUM_SAMPLES,
        ),
        run_config=tune.RunConfig(name=kind, storage_path=storage, callbacks=callbacks),
    )


def one(kind: str, trials: int, epochs: int) -> dict:
    """One measurement in this process: ray.init, build, time fit(), ray.shutdown."""
    import ray

    with tempfile.TemporaryDirectory(prefix=f"overhead-{kind}-") as root:
        start = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - start
        tuner = build_tuner(kind, trials, epochs, root)
        start = time.perf_counter()
        results = tuner.fit()
        fit_s = time.perf_counter() - start
        ray.shutdown()
    reported = sum((r.metrics or {}).get("epoch", 0) for r in results)
    errors = sum(r.error is not None for r in results)
    return {
        "kind": kind,
        "seconds": fit_s,
        "init_seconds": init_s,
        "trials": len(results),
        "results": reported,
        "errors": errors,
    }


def measure(kinds_reps: dict[str, int], trials: int, epochs: int) -> dict[str, list[dict]]:
    """Fresh processes, interleaved: rep 1 of every kind, then rep 2 of those that have one, ..."""
    runs: dict[str, list[dict]] = {k: [] for k in kinds_reps}
    for rep in range(max(kinds_reps.values())):
        for kind, reps in kinds_reps.items():
            if rep < reps:
                args = ["--one", kind, "--trials", str(trials), "--epochs", str(epochs)]
                runs[kind].append(run_child("bench.overhead", args, timeout=900))
    return runs


def report(runs: dict[str, list[dict]]) -> dict:
    seconds = {k: [r["seconds"] for r in v] for k, v in runs.items()}
    per_result = {k: [r["seconds"] / r["results"] * 1000 for r in v] for k, v in runs.items()}
    for kind, values in seconds.items():
        errors = sum(r["errors"] for r in runs[kind])
        note = f"({spread([r['results'] for r in runs[kind]])[0]:.0f} results{f', {errors} errored' if errors else ''})"
        emit(line(f"overhead.{kind}", values, "s", ".1f", note))
    for kind, values in per_result.items():
        emit(line(f"overhead.{kind}_per_result", values, "ms", ".0f"))
    # Ours and bare run in turn, so each of ours is compared with the bare run next to it.
    vs_bare = [o / b for o, b in zip(seconds["ours"], seconds["bare"], strict=False)]
    met = {"vs_bare": spread(vs_bare)[0] <= TARGET_VS_BARE}
    emit(line("overhead.ours_vs_bare", vs_bare, "x", ".2f", verdict(met["vs_bare"], f"<= {TARGET_VS_BARE}x")))
    per_result_vs_bare = [o / b for o, b in zip(per_result["ours"], per_result["bare"], strict=False)]
    emit(line("overhead.ours_vs_bare_per_result", per_result_vs_bare, "x", ".2f"))
    if "ours_untracked" in seconds:
        tracking = [o / u for o, u in zip(seconds["ours"], seconds["ours_untracked"], strict=False)]
        emit(line("overhead.ours_vs_ours_untracked", tracking, "x", ".2f", "(what LiveTracking adds)"))
    out = {"seconds": seconds, "per_result_ms": per_result, "ours_vs_bare": vs_bare, "runs": runs, "met": met}
    if "defaults" in seconds:
        speedup = [d / spread(seconds["ours"])[0] for d in seconds["defaults"]]
        met["vs_defaults"] = spread(speedup)[0] >= TARGET_VS_DEFAULTS
        target = f">= {TARGET_VS_DEFAULTS}x faster"
        emit(line("overhead.defaults_vs_ours", speedup, "x", ".1f", verdict(met["vs_defaults"], target)))
        out["defaults_vs_ours"] = speedup
    if "defaults" in seconds and "defaults_untracked" in seconds:
        callback = [
            (d["seconds"] - u["seconds"]) / d["results"] * 1000
            for d in runs["defaults"]
            for u in runs["defaults_untracked"]
        ]
        note = "(defaults minus defaults_untracked, per reported result)"
        emit(line("overhead.mlflowloggercallback_per_result", callback, "ms", ".0f", note))
        out["mlflowloggercallback_ms_per_result"] = callback
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="8 trials, one repetition of each stack")
    p.add_argument("--reps", type=int, default=5, help="repetitions of ours and bare")
    p.add_argument("--slow-reps", type=int, default=2, help="repetitions of the defaults stacks (slow)")
    p.add_argument("--trials", type=int, default=TRIALS)
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--one", choices=KINDS, help=argparse.SUPPRESS)  # a single measurement, in this process
    args = p.parse_args(argv)
    if args.one:
        child_result(one(args.one, args.trials, args.epochs))
        sys.exit(0)
    trials = 8 if args.quick else args.trials
    reps, slow = (1, 1) if args.quick else (args.reps, args.slow_reps)
    slow_untracked = max(1, slow - 1) if slow else 0  # --slow-reps 0 leaves both defaults stacks out
    emit(
        f"# overhead: {trials} trials x {args.epochs} epochs, TPE + ASHA ({SPACE_FILE}), "
        f"{reps} reps of ours/bare/ours_untracked, {slow} of defaults, {slow_untracked} of defaults_untracked"
    )
    kinds = {
        "ours": reps,
        "bare": reps,
        "ours_untracked": reps,
        "defaults": slow,
        "defaults_untracked": slow_untracked,
    }
    kinds = {kind: n for kind, n in kinds.items() if n}
    figures = report(measure(kinds, trials, args.epochs))
    save("overhead", {"trials": trials, "epochs": args.epochs, **figures})
    return figures


if __name__ == "__main__":
    main()
