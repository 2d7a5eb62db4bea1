"""Untangled knobs on real Fashion-MNIST: lr per 1024 examples with decoupled weight decay, against torch's units.

Two space files search the same model, data and budget with the same seeds; only the parameterization of lr and
weight decay differs (bench/spaces/knobs_torch.py, bench/spaces/knobs_airbench.py, whose docstrings say how the
ranges correspond). Each search is `search.run.search` (TPE + ASHA, MLflow tracking) in a fresh process.

Figures: the best validation accuracy each found, the test accuracy of its winner, and the contender's lead over
the baseline, per seed and as a median with its spread.

    python -m bench.knobs [--quick] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.common import child_result, emit, line, out_dir, run_seeds, save
from bench.efficiency import data_dir

SPACES = {kind: str(Path(__file__).parent / "spaces" / f"knobs_{kind}.py") for kind in ("torch", "airbench")}
QUICK = {"NUM_SAMPLES": 4, "MAX_EPOCHS": 2, "TRAIN_SUBSET": 1000, "val_subset": 500}


def run_one(kind: str, seed: int, sets: dict) -> dict:
    from search.run import search

    root = out_dir("knobs")
    start = time.perf_counter()
    result = search(
        SPACES[kind], sets={**sets, "SEED": seed}, name=f"{kind}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}",
        storage=str(root / "runs"), tracking_uri=f"sqlite:///{root}/mlflow.db", data_dir=data_dir(), quiet=True,
    )  # fmt: skip
    return {
        "best_val": result.best_val,
        "test_acc": result.test["test_acc"],
        "epochs": result.summary["epochs_trained"],
        "seconds": time.perf_counter() - start,
        "best_config": result.summary["best_config"],
    }


def report(runs: dict[str, list[dict]]) -> dict:
    for kind, values in runs.items():
        emit(line(f"knobs.{kind}_best_val_acc", [v["best_val"] for v in values], fmt=".4f"))
        emit(line(f"knobs.{kind}_test_acc", [v["test_acc"] for v in values], fmt=".4f"))
        emit(line(f"knobs.{kind}_wall", [v["seconds"] for v in values], "s", ".0f"))
    pairs = list(zip(runs["torch"], runs["airbench"], strict=True))
    val_lead = [(a["best_val"] - t["best_val"]) * 100 for t, a in pairs]
    test_lead = [(a["test_acc"] - t["test_acc"]) * 100 for t, a in pairs]
    emit(line("knobs.airbench_val_points_ahead", val_lead, "points", ".2f"))
    emit(line("knobs.airbench_test_points_ahead", test_lead, "points", ".2f"))
    return {"runs": runs, "val_points_ahead": val_lead, "test_points_ahead": test_lead}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.knobs", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 configs x 2 epochs on 1,000 images")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; one pair of searches per seed")
    p.add_argument("--one", choices=tuple(SPACES), help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sets = QUICK if args.quick else {}
    if args.one:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        child_result(run_one(args.one, args.seed, sets))
        sys.exit(0)
    data_dir()  # copy the data once, before two processes race for it
    seeds = [int(s) for s in args.seeds.split(",")]
    emit(f"# knobs: {', '.join(SPACES.values())}{' (quick)' if args.quick else ''}, seeds {seeds}")
    figures = report(run_seeds("bench.knobs", tuple(SPACES), seeds, args.quick))
    save("knobs", {"spaces": SPACES, "quick": args.quick, "seeds": seeds, **figures})
    return figures


if __name__ == "__main__":
    main()
