"""Pruned-trial feedback: our OptunaASHA against stock OptunaSearch, both under ASHA, over several seeds.

Stock OptunaSearch tells Optuna that a trial ASHA stopped is COMPLETE, with the score of the epoch it was
stopped at; `search.searcher.OptunaASHA` tells it PRUNED, so TPE ranks it below every trial that ran in full.
The difference shows where early scores mislead, so this runs a cheap proxy: a trainable that trains
nothing and reports a made-up learning curve per config, through the real Ray Tune, ASHA and Optuna
searchers, two trials at a time. Two families of curves, each over the same seeds:

- plateau: a high learning rate learns fast and plateaus low, a low one learns slowly and ends high (the
  best final score, at epoch 9, is near lr = 0.015). Early scores rank configs wrongly but stay below
  the good finals.
- peaking: the same, plus a transient for lr above 0.01 that lifts early scores and fades by epoch 5,
  as in runs that overfit or turn unstable: a fast starter's early score beats good configs' finals.

A second parameter matters a little and never misleads. Because the curves are known, every config TPE
proposes can be scored by its true final value, stopped or not. Figures, per seed: the mean true final
score of TPE's proposals after its random start-up trials (how well it learned where the good configs
are), the share of them that are fast starters (lr > 0.1), and the best final score among trials ASHA
ran in full (what the search returns).

    python -m bench.feedback [--quick] [--seeds 6] [--trials 40]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from bench.common import child_result, emit, line, out_dir, run_child, save  # noqa: E402

MAX_EPOCHS, GRACE, REDUCTION = 9, 1, 3  # rungs at epochs 1 and 3
STARTUP = 10  # TPE's random start-up trials (Optuna's default n_startup_trials)
LR_LOW, LR_HIGH = 1e-4, 1.0
CURVES = ("plateau", "peaking")
FAST_LR = 0.1  # above it, a config scores well early and ends low
NOISE = 0.005  # per-epoch score noise, as from a 2,000-image validation set


def _u(lr: float) -> float:
    """The learning rate's place in the searched range, 0 (lowest) to 1 (highest), on a log scale."""
    return (math.log10(lr) - math.log10(LR_LOW)) / (math.log10(LR_HIGH) - math.log10(LR_LOW))


def score(curves: str, lr: float, mix: float, epoch: int) -> float:
    """The noiseless learning curve of a config; see the module docstring."""
    u = _u(lr)
    plateau = 0.92 - 0.5 * (u - 0.45) ** 2 - 0.1 * (mix - 0.6) ** 2
    tau = 0.4 + 5 * (1 - u) ** 2  # epochs to reach 63% of the plateau
    value = plateau * (1 - math.exp(-epoch / tau))
    if curves == "peaking":
        value += 0.4 * max(0.0, u - 0.5) * math.exp(-(epoch - 1) / 2)
    return value


def final_score(curves: str, lr: float, mix: float) -> float:
    return score(curves, lr, mix, MAX_EPOCHS)


def curve(config: dict) -> None:
    from ray import tune

    rng = random.Random(hash((config["lr"], config["mix"])))
    for epoch in range(1, MAX_EPOCHS + 1):
        value = score(config["curves"], config["lr"], config["mix"], epoch) + rng.gauss(0, NOISE)
        tune.report({"epoch": epoch, "val_acc": value, "outcome": "running"})


def run(kind: str, curves: str, seed: int, trials: int) -> dict:
    """One search with the stock or our searcher; every proposal's true final score, in proposal order."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from search.searcher import STUDY_NAME, OptunaASHA

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True)  # as make_searcher
    if kind == "ours":
        searcher = OptunaASHA(
            metric="val_acc", mode="max", sampler=sampler, study_name=STUDY_NAME, max_epochs=MAX_EPOCHS, penalty=0.0
        )
    else:
        searcher = OptunaSearch(metric="val_acc", mode="max", sampler=sampler, study_name=STUDY_NAME)
    tuner = tune.Tuner(
        tune.with_resources(curve, {"cpu": 1}),
        param_space={"lr": tune.loguniform(LR_LOW, LR_HIGH), "mix": tune.uniform(0.0, 1.0), "curves": curves},
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=2),
            num_samples=trials,
            reuse_actors=True,
            scheduler=ASHAScheduler(
                time_attr="epoch",
                metric="val_acc",
                mode="max",
                max_t=MAX_EPOCHS,
                grace_period=GRACE,
                reduction_factor=REDUCTION,
            ),
        ),
        run_config=tune.RunConfig(
            name=f"feedback-{curves}-{kind}-{seed}", storage_path=str(out_dir("feedback")), verbose=0
        ),
    )
    results = tuner.fit()
    order = sorted(results, key=lambda r: r.metrics.get("trial_id", ""))  # Tune numbers trials as proposed
    proposals = [final_score(curves, r.config["lr"], r.config["mix"]) for r in order]
    lrs = [r.config["lr"] for r in order]
    full = [r.metrics["val_acc"] for r in order if r.metrics.get("epoch") == MAX_EPOCHS]
    return {
        "kind": kind,
        "curves": curves,
        "seed": seed,
        "proposals": proposals,
        "lrs": lrs,
        "best_full": max(full, default=0.0),
        "completed": len(full),
        "epochs": sum(r.metrics.get("epoch", 0) for r in results),
    }


def run_seeds(kind: str, seeds: list[int], trials: int) -> list[dict]:
    import ray

    ray.init(include_dashboard=False, log_to_driver=False, num_cpus=2)
    try:
        return [run(kind, curves, seed, trials) for curves in CURVES for seed in seeds]
    finally:
        ray.shutdown()


def report(runs: dict[str, list[dict]]) -> dict:
    out: dict = {"runs": runs}
    for curves in CURVES:
        by = {k: [r for r in v if r["curves"] == curves] for k, v in runs.items()}
        after = {k: [statistics.mean(r["proposals"][STARTUP:]) for r in v] for k, v in by.items()}
        fast = {k: [statistics.mean(lr > FAST_LR for lr in r["lrs"][STARTUP:]) for r in v] for k, v in by.items()}
        best = {k: [r["best_full"] for r in v] for k, v in by.items()}
        for kind in by:
            name = f"feedback.{curves}.{kind}"
            note = f"(mean true final score of TPE's proposals after trial {STARTUP}, per seed)"
            emit(line(f"{name}_proposal_score", after[kind], "", ".4f", note))
            emit(line(f"{name}_fast_starter_share", fast[kind], "", ".2f", f"(of those, lr > {FAST_LR})"))
            emit(line(f"{name}_best_full_trial", best[kind], "", ".4f", "(best score of a trial run in full)"))
        gain = [o - s for o, s in zip(after["ours"], after["stock"], strict=True)]
        note = f"(ours better on {sum(g > 0 for g in gain)} of {len(gain)} seeds)"
        emit(line(f"feedback.{curves}.ours_minus_stock_proposal_score", gain, "", "+.4f", note))
        best_gain = [o - s for o, s in zip(best["ours"], best["stock"], strict=True)]
        note = f"(ours better on {sum(g > 0 for g in best_gain)}, equal on {sum(g == 0 for g in best_gain)})"
        emit(line(f"feedback.{curves}.ours_minus_stock_best_full_trial", best_gain, "", "+.4f", note))
        out[curves] = {
            "proposal_score": after,
            "fast_starter_share": fast,
            "best_full": best,
            "gain": gain,
            "best_gain": best_gain,
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.feedback", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 seeds of 20 trials")
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--one", choices=("ours", "stock"), help=argparse.SUPPRESS)
    p.add_argument("--seed-list", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        child_result({"runs": run_seeds(args.one, [int(s) for s in args.seed_list.split(",")], args.trials)})
        sys.exit(0)
    seeds, trials = (list(range(2)), 20) if args.quick else (list(range(args.seeds)), args.trials)
    emit(
        f"# feedback: {trials} trials x {MAX_EPOCHS} epochs, ASHA (grace {GRACE}, rf {REDUCTION}), "
        f"curves {', '.join(CURVES)}, seeds {seeds}"
    )
    runs = {}
    for kind in ("ours", "stock"):
        argv = ["--one", kind, "--seed-list", ",".join(map(str, seeds)), "--trials", str(trials)]
        runs[kind] = run_child("bench.feedback", argv, timeout=1800)["runs"]
    figures = report(runs)
    save("feedback", {"trials": trials, "seeds": seeds, **figures})
    return figures


if __name__ == "__main__":
    main()
