"""GPU figures, when a CUDA device is present; otherwise one line saying they were skipped.

- vgg16_bn at 32x32 (100 classes, batch 256): train-step images per second on one fixed batch, fp32 NCHW
  against bf16 autocast + channels_last, interleaved step by step.
- trial throughput on the GPU: bench.throughput's comparison (ours with data resident on the GPU, batched
  augmentation, bf16, channels_last, against the tutorial pipeline; target >= 10x).
- packing: aggregate training images per second of 1, 2, 4 and 8 vgg7 trials at once on one GPU with
  fractional GPUs (`search.trainable.trainable` under Ray Tune, 1/n GPU each), CIFAR-100-sized fake data.
- the seeds' vgg7 (default widths, batch 128, bf16, channels_last): seconds per epoch of 45,000 images.

    python -m bench.gpu [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import torch  # noqa: E402

from bench import throughput  # noqa: E402
from bench.common import child_result, emit, line, out_dir, run_child, save, spread  # noqa: E402

PACKING = (1, 2, 4, 8)
VGG16_BATCH = 256


def vgg16_precision(device: torch.device, steps: int, reps: int, batch: int) -> dict[str, list[float]]:
    variants = {
        "fp32": throughput.Limit(device, channels_last=False, model="vgg16_bn", batch=batch, num_classes=100),
        "bf16_channels_last": throughput.Limit(
            device, channels_last=True, bf16=True, model="vgg16_bn", batch=batch, num_classes=100
        ),
    }
    for v in variants.values():
        for _ in range(3):  # cuDNN picks its algorithms on the first steps
            v.step()
    out: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(reps):
        turns = throughput.Turns(variants, turn=rep)
        for _ in range(steps):
            turns()
        for k in variants:
            out[k].append(turns.images[k] / sum(turns.steps[k]))
    return out


def fake_cifar100(quick: bool) -> str:
    from search.data import DATASETS
    from search.fake_data import write_fake

    train, test = (5_000, 1_000) if quick else (50_000, 10_000)
    root = out_dir("data", f"cifar100-{train}")
    if not (root / DATASETS["cifar100"].folder / "meta").exists():
        write_fake("cifar100", str(root), train=train, test=test)
    return str(root)


def trial_config(data_dir: str, epochs: int, device: str, quick: bool) -> dict:
    return {
        "model": "vgg7",
        "dataset": "cifar100",
        "data_dir": data_dir,
        "epochs": epochs,
        "batch_size": 128,
        "bf16": True,
        "channels_last": True,
        "device": device,
        "train_subset": 2048 if quick else 0,
    }


def packed(n: int, quick: bool, device: str) -> dict:
    """n trials at once, 1/n GPU each: the sum of their last-epoch training images per second."""
    import ray
    from ray import tune

    from search.trainable import trainable

    data_dir = fake_cifar100(quick)
    ray.init(include_dashboard=False, log_to_driver=False, num_gpus=1 if device == "cuda" else 0)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // n)
    resources = {"cpu": cpus, "gpu": 1 / n} if device == "cuda" else {"cpu": 2 / n}
    config = trial_config(data_dir, 2, device, quick)
    config["seed"] = tune.grid_search(list(range(n)))
    start = time.perf_counter()
    results = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=config,
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(name=f"packing-{n}", storage_path=str(out_dir("gpu", "runs")), verbose=0),
    ).fit()
    wall = time.perf_counter() - start
    ray.shutdown()
    rates = [r.metrics["images_per_second"] for r in results if r.metrics and r.error is None]
    if len(rates) < n:
        raise RuntimeError(f"packing {n}: {n - len(rates)} trials failed")
    return {"n": n, "aggregate": sum(rates), "per_trial": rates, "wall": wall}


def epoch_time(quick: bool, device: str) -> list[float]:
    from search.train import train

    config = trial_config(fake_cifar100(quick), 3, device, quick)
    return [m["epoch_seconds"] for m in train(config).history[1:]]  # epoch 1 includes cuDNN's warm-up


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps, 2,048-image epochs")
    # cpu runs every code path here at toy sizes, to check the script on a machine without a GPU.
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help=argparse.SUPPRESS)
    p.add_argument("--one-packing", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        emit("gpu: skipped: no CUDA device")
        return {"skipped": "no CUDA device"}
    extra = (["--quick"] if args.quick else []) + ["--device", args.device]
    if args.one_packing:
        child_result(packed(args.one_packing, args.quick, args.device))
        sys.exit(0)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (code-path check only)"
    toy = args.quick or device.type == "cpu"
    steps, reps, batch = (4, 2, 32) if toy else (20, 5, VGG16_BATCH)
    emit(f"# gpu: {name}, torch {torch.__version__}")
    figures: dict = {"device": name}

    prec = vgg16_precision(device, steps, reps, batch)
    speedup = [b / f for b, f in zip(prec["bf16_channels_last"], prec["fp32"], strict=True)]
    for k, v in prec.items():
        emit(line(f"gpu.vgg16_bn_{k}", v, "img/s", ".0f", f"(batch {batch}, 32x32)"))
    emit(line("gpu.vgg16_bn_bf16_channels_last_vs_fp32", speedup, "x", ".2f"))
    figures["vgg16_bn"] = {**prec, "speedup": speedup}

    tp_steps, tp_reps = (4, 2) if toy else (50, 5)
    figures["throughput"] = throughput.report(throughput.measure(tp_steps, tp_reps, device, bf16=True), gpu=True)

    packing = [run_child("bench.gpu", ["--one-packing", str(n), *extra], 1200) for n in PACKING]
    one = packing[0]["aggregate"]
    for r in packing:
        emit(
            f"gpu.packing_{r['n']}: {r['aggregate']:.0f} img/s aggregate over {r['n']} trials "
            f"({statistics.median(r['per_trial']):.0f} per trial) {r['aggregate'] / one:.2f}x one trial"
        )
    figures["packing"] = packing

    seconds = epoch_time(toy, args.device)
    emit(line("gpu.vgg7_epoch", seconds, "s", ".1f", f"({'2,048' if toy else '45,000'} images, bf16, channels_last)"))
    figures["vgg7_epoch_seconds"] = seconds
    figures["vgg7_epoch_median"] = spread(seconds)[0]
    save("gpu", figures)
    return figures


if __name__ == "__main__":
    main()
