"""A next search on the narrowed space file against one on the original, both warm-started, on real Fashion-MNIST.

Per seed, in one fresh process: a first search of bench/spaces/fashion_bench.py writes its narrowed_space.py
(`search.narrow`); then two second searches of the same budget, both with `--warm-start` from the first: one on
the narrowed file, one on the original space file. Every search is `search.run.search` (TPE, MLflow tracking).

Sized for a 2-core CPU (about 3 minutes a seed): 2,000 training images, 1,000 for validation, 2 epochs a trial
with GRACE_PERIOD 2 (every trial runs in full, so that PED-ANOVA has all of the first search's trials), 12 trials
in the first search and 6 in each second one. The test set is Fashion-MNIST's whole 10,000.

Figures: the test accuracy of each second search's winner and the epochs it trained, per seed and as a median with
its spread, the narrowed search's lead over the original's, and how many of the first search's trials fit each.

    python -m bench.narrow [--quick] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.common import child_result, emit, line, out_dir, run_child, save
from bench.efficiency import data_dir

SPACE_FILE = str(Path(__file__).parent / "spaces" / "fashion_bench.py")
SETS = {"TRAIN_SUBSET": 2000, "val_subset": 1000, "MAX_EPOCHS": 2, "GRACE_PERIOD": 2, "AUDIT_FRACTION": 0.0}
FIRST, SECOND = 12, 6  # trials of the first search, and of each second one
QUICK = {"TRAIN_SUBSET": 600, "val_subset": 300, "MAX_EPOCHS": 1, "GRACE_PERIOD": 1, "AUDIT_FRACTION": 0.0}


def run_one(seed: int, sets: dict) -> dict:
    """The first search and the two second ones of one seed."""
    from search.run import search
    from search.searcher import load_study, warm_trials
    from search.space import load_space

    root, stamp = out_dir("narrow"), time.strftime("%Y%m%d-%H%M%S")
    common = {"storage": str(root / "runs"), "tracking_uri": f"sqlite:///{root}/mlflow.db", "data_dir": data_dir(),
              "quiet": True}  # fmt: skip
    sets = {**sets, "SEED": seed}
    first_name = f"first-seed{seed}-{stamp}"
    first = search(SPACE_FILE, sets={**sets, "NUM_SAMPLES": FIRST}, name=first_name, **common)
    narrowed = first.summary["narrowed"]
    if "path" not in narrowed:
        raise RuntimeError(f"seed {seed}: no narrowed space: {narrowed['skipped']}")
    study = load_study(str(root / "runs" / first_name))
    out = {"seed": seed, "first_test_acc": first.test["test_acc"], "importance": first.summary["importance"]["params"],
           "searched": narrowed["searched"], "fixed": narrowed["fixed"]}  # fmt: skip
    for kind, space_file in (("narrowed", narrowed["path"]), ("original", SPACE_FILE)):
        start = time.perf_counter()
        second = search(space_file, sets={**sets, "NUM_SAMPLES": SECOND}, name=f"{kind}-seed{seed}-{stamp}",
                        warm_start=first_name, **common)  # fmt: skip
        out[kind] = {
            "test_acc": second.test["test_acc"],
            "best_val": second.best_val,
            "epochs": second.summary["epochs_trained"],
            "seconds": time.perf_counter() - start,
            "warm_trials": len(warm_trials(study, load_space(space_file, sets))),
            "best_config": second.summary["best_config"],
        }
    return out


def report(runs: list[dict]) -> dict:
    for kind in ("narrowed", "original"):
        emit(line(f"narrow.{kind}_test_acc", [r[kind]["test_acc"] for r in runs], fmt=".4f"))
        emit(line(f"narrow.{kind}_epochs", [r[kind]["epochs"] for r in runs], fmt=".0f"))
        emit(line(f"narrow.{kind}_warm_trials", [r[kind]["warm_trials"] for r in runs], fmt=".0f",
                  note=f"of the first search's {FIRST}"))  # fmt: skip
    lead = [(r["narrowed"]["test_acc"] - r["original"]["test_acc"]) * 100 for r in runs]
    emit(line("narrow.narrowed_test_points_ahead", lead, "points", ".2f"))
    for r in runs:
        emit(
            f"#   seed {r['seed']}: searched {', '.join(r['searched'])}; importance "
            + ", ".join(f"{k} {v:.2f}" for k, v in r["importance"].items())
        )
    return {"runs": runs, "test_points_ahead": lead}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.narrow", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="600 images, one epoch a trial: a check that it runs")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; one first search and two second ones each")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sets = QUICK if args.quick else SETS
    if args.one is not None:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        child_result(run_one(args.one, sets))
        sys.exit(0)
    data_dir()  # copy the data once
    seeds = [int(s) for s in args.seeds.split(",")]
    emit(f"# narrow: {SPACE_FILE} with {sets}, {FIRST} trials then {SECOND} on each second search"
         f"{' (quick)' if args.quick else ''}, seeds {seeds}")  # fmt: skip
    runs = [run_child("bench.narrow", ["--one", str(seed), *(["--quick"] if args.quick else [])], 1800)
            for seed in seeds]  # fmt: skip
    figures = report(runs)
    save("narrow", {"space": SPACE_FILE, "sets": sets, "quick": args.quick, "seeds": seeds, **figures})
    return figures


if __name__ == "__main__":
    main()
