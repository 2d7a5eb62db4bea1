"""Memory: resident memory of Ray workers running trials back to back, and of N trials at once.

A worker loads a dataset once (`search.data.load_arrays` caches it per process) and, with actor reuse,
keeps it for every later trial. So a worker's memory should not grow by a dataset per trial, and N
concurrent trials should hold N copies (one per worker process), not one per trial.

The trials are real (`search.trainable.trainable`: vgg7 at widths 8/16, one epoch on 512 images) on
CIFAR-100-sized fake data (50,000 + 10,000 images written by `write_fake`), so the dataset dominates what
a trial adds. A thin wrapper reads the worker's /proc/self/status before and after each trial: RssAnon,
the worker's private memory (heap, tensors, the dataset), is the figure; VmRSS also counts shared libraries
(torch's alone map hundreds of MB, shared by every worker) and VmHWM is the peak. The back-to-back run is
repeated with MALLOC_ARENA_MAX=2: Tune runs each trial in a new thread, and glibc gives new threads new
malloc arenas that keep freed memory. A last figure, in this process: how much `load_splits` (what every
trial calls) adds on top of the cached arrays, because the seeded train/val split is a copy.

    python -m bench.memory [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from bench.common import child_result, emit, out_dir, run_child, save, verdict  # noqa: E402

TRAIN, TEST = 50_000, 10_000  # CIFAR-100's sizes: 184 MB of uint8 images
QUICK_TRAIN, QUICK_TEST = 10_000, 2_000
LOG_ENV = "BENCH_MEMORY_LOG"
MB = 2**20


def proc_status() -> dict[str, float]:
    """This process's resident memory, its peak so far, and the part of it that is its own, in MB.

    RssAnon is the process's private memory (heap, tensors, the dataset); RssFile is mostly shared libraries
    (torch's alone map hundreds of MB), shared by every worker on the machine.
    """
    values = {}
    for row in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = row.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            values[key] = int(rest.split()[0]) / 1024  # kB
    return {"rss": values["VmRSS"], "peak": values["VmHWM"], "anon": values["RssAnon"], "file": values["RssFile"]}


def measured(config: dict) -> None:
    """`search.trainable.trainable`, with the worker's memory written down before and after."""
    from ray import tune

    from search.trainable import trainable

    trial = tune.get_context().get_trial_id()
    record = {"pid": os.getpid(), "trial": trial, "start": time.time(), "before": proc_status()}
    trainable(config)
    record.update(after=proc_status(), end=time.time())
    with open(os.environ[LOG_ENV], "a") as f:
        f.write(json.dumps(record) + "\n")


def fake_data(quick: bool) -> tuple[str, int]:
    """The data dir, and the bytes of its images once loaded (uint8, train + test)."""
    from search.data import DATASETS
    from search.fake_data import write_fake

    train, test = (QUICK_TRAIN, QUICK_TEST) if quick else (TRAIN, TEST)
    root = out_dir("data", f"cifar100-{train}")
    if not (root / DATASETS["cifar100"].folder / "meta").exists():
        write_fake("cifar100", str(root), train=train, test=test)
    return str(root), (train + test) * 3 * 32 * 32


def run_trials(data_dir: str, trials: int, concurrent: int, arenas: int = 0) -> list[dict]:
    """`trials` trials, `concurrent` at a time (each a worker process), actor reuse on.

    `arenas` > 0 sets the workers' MALLOC_ARENA_MAX.
    """
    import ray
    from ray import tune

    log = out_dir("memory") / f"trials-{concurrent}-{os.getpid()}.jsonl"
    log.unlink(missing_ok=True)
    env = {LOG_ENV: str(log), **({"MALLOC_ARENA_MAX": str(arenas)} if arenas else {})}
    ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    config = {
        "model": "vgg7",
        "dataset": "cifar100",
        "data_dir": data_dir,
        "epochs": 1,
        "batch_size": 128,
        "train_subset": 512,
        "val_subset": 512,
        "width1": 8,
        "width2": 16,
        "fc1": 32,
        "lr": tune.grid_search([0.01 * (i + 1) for i in range(trials)]),
    }
    tuner = tune.Tuner(
        tune.with_resources(measured, {"cpu": 2 / concurrent}),
        param_space=config,
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(name=f"memory-{concurrent}", storage_path=str(out_dir("memory", "runs")), verbose=0),
    )
    results = tuner.fit()
    ray.shutdown()
    errors = [str(r.error).splitlines()[-1] for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} trials failed: {errors[0]}")
    return sorted((json.loads(x) for x in log.read_text().splitlines()), key=lambda r: r["end"])


def split_copy(data_dir: str) -> dict:
    """RSS added by load_arrays (the cached dataset), then by one load_splits (a trial's split)."""
    from search.data import load_arrays, load_splits

    base = proc_status()["rss"]
    load_arrays("cifar100", data_dir)
    arrays = proc_status()["rss"]
    splits = load_splits("cifar100", data_dir)
    return {"arrays_mb": arrays - base, "splits_mb": proc_status()["rss"] - arrays, "split_images": len(splits.train_x)}


def per_worker(records: list[dict]) -> dict[int, list[dict]]:
    workers: dict[int, list[dict]] = {}
    for r in records:
        workers.setdefault(r["pid"], []).append(r)
    return workers


def increments(records: list[dict]) -> tuple[float, list[float]]:
    """The busiest worker's private memory: (added by its first trial, added by each later trial)."""
    trials = max(per_worker(records).values(), key=len)
    anon = [trials[0]["before"]["anon"]] + [t["after"]["anon"] for t in trials]
    return anon[1] - anon[0], [b - a for a, b in zip(anon[1:], anon[2:], strict=False)]


def report(runs: dict, copy: dict, dataset_mb: float) -> dict:
    back, arena = runs["back_to_back"], runs["back_to_back_arena2"]
    first, later = increments(back)
    first_a, later_a = increments(arena)
    worker = max(per_worker(back).values(), key=len)
    # A copy of the dataset per trial would add a whole dataset every trial; malloc's arenas add less, unevenly.
    held_once = sum(later) < 0.5 * len(later) * dataset_mb
    start, end = worker[0]["before"], worker[-1]["after"]
    emit(f"memory.dataset: {dataset_mb:.0f} MB of uint8 images (train + test)")
    emit(
        f"memory.worker_before_data: {start['anon']:.0f} MB private, {start['rss']:.0f} MB RSS "
        "(shared libraries the rest), before its first trial"
    )
    emit(
        f"memory.worker_trial_1: +{first:.0f} MB private = {first / dataset_mb:.2f}x dataset (the dataset, "
        "the loading's freed buffers that malloc keeps, the model)"
    )
    emit(
        f"memory.worker_later_trials: {', '.join(f'{x:+.0f}' for x in later)} MB private, trials 2..{len(worker)}: "
        f"{sum(later):+.0f} MB in all, {sum(later) / (len(later) * dataset_mb):.2f}x a copy per trial "
        f"({len(later) * dataset_mb:.0f} MB) {verdict(held_once, 'dataset held once per worker: < 0.5x')}"
    )
    emit(
        f"memory.worker_later_trials_arena2: {', '.join(f'{x:+.0f}' for x in later_a)} MB private with "
        f"MALLOC_ARENA_MAX=2 (trial 1: +{first_a:.0f} MB)"
    )
    emit(
        f"memory.worker_end: {end['anon']:.0f} MB private, {end['rss']:.0f} MB RSS, peak RSS {end['peak']:.0f} MB "
        f"after {len(worker)} trials"
    )
    out = {
        "dataset_mb": dataset_mb,
        **runs,
        "split_copy": copy,
        "first_trial_mb": first,
        "later_trials_mb": later,
        "later_trials_arena2_mb": later_a,
        "met": {"held_once": held_once},
    }
    one = worker[1]["after"]["anon"]  # the back-to-back worker after 2 trials, as many as each one here runs
    for n in (2, 4):
        ws = per_worker(runs[f"concurrent_{n}"])
        anon = [w[-1]["after"]["anon"] for w in ws.values()]
        rss = [w[-1]["after"]["rss"] for w in ws.values()]
        emit(
            f"memory.concurrent_{n}: {sum(anon):.0f} MB private in {len(ws)} workers after {2 * n} trials "
            f"({min(anon):.0f}..{max(anon):.0f} each; {sum(anon) / one:.2f}x one worker after 2 trials), "
            f"{sum(rss):.0f} MB summed RSS"
        )
    emit(
        f"memory.split_copy_per_trial: +{copy['splits_mb']:.0f} MB for load_splits over the cached arrays "
        f"(+{copy['arrays_mb']:.0f} MB) = {copy['splits_mb'] / dataset_mb:.2f}x dataset, held while a trial "
        "trains on the full split"
    )
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10,000 + 2,000 images, fewer trials")
    p.add_argument("--one", help=argparse.SUPPRESS)  # "trials,concurrent[,arenas]" or "split", in this process
    args = p.parse_args(argv)
    data_dir, nbytes = fake_data(args.quick)
    if args.one == "split":
        child_result(split_copy(data_dir))
        sys.exit(0)
    if args.one:
        trials, concurrent, arenas = ([int(x) for x in args.one.split(",")] + [0])[:3]
        child_result({"records": run_trials(data_dir, trials, concurrent, arenas)})
        sys.exit(0)
    extra = ["--quick"] if args.quick else []
    n = 3 if args.quick else 8
    emit(f"# memory: fake CIFAR-100, {nbytes / MB:.0f} MB; {n} trials back to back (twice), then 2 and 4 at once")
    plan = {"back_to_back": f"{n},1", "back_to_back_arena2": f"{n},1,2", "concurrent_2": "4,2", "concurrent_4": "8,4"}
    runs = {name: run_child("bench.memory", ["--one", one, *extra], 1800)["records"] for name, one in plan.items()}
    copy = run_child("bench.memory", ["--one", "split", *extra], 600)
    figures = report(runs, copy, nbytes / MB)
    save("memory", figures)
    return figures


if __name__ == "__main__":
    main()
