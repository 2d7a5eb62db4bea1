"""Search efficiency on real Fashion-MNIST: TPE + ASHA against random search that trains every config in full.

Both search the same space file (bench/spaces/fashion_bench.py) with the same number of configs, the same
epochs per full trial, the same trainable (`search.trainable.trainable`) and two trials at a time:

- ours: `search.run.search`, as `python -m search.run bench/spaces/fashion_bench.py` runs it: Optuna's TPE
  through `OptunaASHA`, ASHA stopping weak trials at epochs 1 and 3, MLflow tracking; the best completed
  trial is then tested.
- random: Ray Tune's BasicVariantGenerator (random search) over the same SPACE, no scheduler: every trial
  trains MAX_EPOCHS; the trial with the best final val_acc is tested the same way.

Figures: the best validation accuracy each found, the test accuracy of that trial, and the epochs each
trained. Each search runs in a fresh process (Debian's Fashion-MNIST is copied into bench/out/data once).

    python -m bench.efficiency [--quick] [--seeds 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.common import child_result, emit, line, out_dir, run_seeds, save, spread, verdict

SPACE_FILE = str(Path(__file__).parent / "spaces" / "fashion_bench.py")
QUICK = {"NUM_SAMPLES": 4, "MAX_EPOCHS": 3, "TRAIN_SUBSET": 1000, "val_subset": 500}
TARGET_POINTS = 0.5  # ours within half a point of random search's best validation accuracy
TARGET_EPOCHS = 0.30  # for at most 30% of its epochs


def data_dir() -> str:
    from search.data import load_arrays

    root = out_dir("data", "fashion_mnist")
    load_arrays("fashion_mnist", str(root))  # copies Debian's dataset-fashion-mnist on first use
    return str(root)


def run_ours(seed: int, sets: dict) -> dict:
    from search.run import search

    root = out_dir("efficiency")
    start = time.perf_counter()
    result = search(
        SPACE_FILE,
        sets={**sets, "SEED": seed},
        name=f"asha-tpe-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}",
        storage=str(root / "runs"),
        tracking_uri=f"sqlite:///{root}/mlflow.db",
        data_dir=data_dir(),
        quiet=True,
    )
    s = result.summary
    return {
        "best_val": result.best_val,
        "test_acc": result.test["test_acc"],
        "epochs": s["epochs_trained"],
        "epochs_if_all_full": s["epochs_if_all_full"],
        "trials": s["trials"],
        "outcomes": s["outcomes"],
        "seconds": time.perf_counter() - start,
        "best_config": s["best_config"],
    }


def run_random(seed: int, sets: dict) -> dict:
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from search.space import load_space
    from search.train import evaluate_test, load_data, model_from_checkpoint
    from search.trainable import CHECKPOINT_FILE, trainable

    space = load_space(SPACE_FILE, {**sets, "SEED": seed})
    s = space.settings
    root = out_dir("efficiency")
    start = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": s.CPUS_PER_TRIAL}),
        param_space={**space.params, **space.base_config(data_dir())},  # the SPACE samplers, sampled at random
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=s.MAX_CONCURRENT),
            num_samples=s.NUM_SAMPLES,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"random-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(root / "runs"),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    )
    results = tuner.fit()
    ray.shutdown()
    done = [r for r in results if r.error is None and r.metrics and r.checkpoint]
    best = max(done, key=lambda r: r.metrics[s.METRIC])
    model, config = model_from_checkpoint(Path(best.checkpoint.path) / CHECKPOINT_FILE)
    test = evaluate_test(model, config, load_data(config))
    return {
        "best_val": best.metrics[s.METRIC],
        "test_acc": test["test_acc"],
        "epochs": sum(r.metrics.get("epoch", 0) for r in results if r.metrics),
        "epochs_if_all_full": len(results) * s.MAX_EPOCHS,
        "trials": len(results),
        "errors": sum(r.error is not None for r in results),
        "seconds": time.perf_counter() - start,
        "best_config": {k: v for k, v in best.config.items() if k in space.params},
    }


def report(runs: dict[str, list[dict]]) -> dict:
    ours, rand = runs["ours"], runs["random"]
    gap = [(r["best_val"] - o["best_val"]) * 100 for o, r in zip(ours, rand, strict=True)]
    epochs = [o["epochs"] / r["epochs"] for o, r in zip(ours, rand, strict=True)]
    wall = [o["seconds"] / r["seconds"] for o, r in zip(ours, rand, strict=True)]
    test_gap = [(r["test_acc"] - o["test_acc"]) * 100 for o, r in zip(ours, rand, strict=True)]
    for name, key, fmt in (
        ("best_val_acc", "best_val", ".4f"),
        ("test_acc", "test_acc", ".4f"),
        ("epochs", "epochs", ".0f"),
        ("wall", "seconds", ".0f"),
    ):
        for kind, values in runs.items():
            emit(line(f"efficiency.{kind}_{name}", [v[key] for v in values], "s" if key == "seconds" else "", fmt))
    met = {
        "points": spread(gap)[0] <= TARGET_POINTS,
        "epochs": spread(epochs)[0] <= TARGET_EPOCHS,
    }
    emit(
        line("efficiency.val_points_behind_random", gap, "points", ".2f", verdict(met["points"], f"<= {TARGET_POINTS}"))
    )
    emit(line("efficiency.test_points_behind_random", test_gap, "points", ".2f"))
    emit(line("efficiency.epochs_vs_random", epochs, "x", ".3f", verdict(met["epochs"], f"<= {TARGET_EPOCHS}")))
    emit(line("efficiency.wall_vs_random", wall, "x", ".3f"))
    return {
        "runs": runs,
        "val_points_behind": gap,
        "test_points_behind": test_gap,
        "epochs_ratio": epochs,
        "wall_ratio": wall,
        "met": met,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.efficiency", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 configs x 3 epochs on 1,000 images")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; one pair of searches per seed")
    p.add_argument("--one", choices=("ours", "random"), help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sets = QUICK if args.quick else {}
    if args.one:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        child_result((run_ours if args.one == "ours" else run_random)(args.seed, sets))
        sys.exit(0)
    data_dir()  # copy the data once, before two processes race for it
    seeds = [int(s) for s in args.seeds.split(",")]
    emit(f"# efficiency: {SPACE_FILE}{' (quick: ' + str(QUICK) + ')' if args.quick else ''}, seeds {seeds}")
    figures = report(run_seeds("bench.efficiency", ("ours", "random"), seeds, args.quick))
    save("efficiency", {"space": SPACE_FILE, "quick": args.quick, "seeds": seeds, **figures})
    return figures


if __name__ == "__main__":
    main()
