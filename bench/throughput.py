"""Trial throughput: training images per second of our trainer, the tutorial pipeline and the compute limit.

All three train the same model (vgg7, widths 32/64) with the same optimizer, batch size and precision (fp32
on the CPU) on fake CIFAR-10 written in the real on-disk format by `search.data.write_fake`:

- ours: `search.train.train` for one epoch, its loop over `Batches` (uint8 images in memory, crop and flip
  for the whole batch with tensor ops, channels_last, as every trial runs); the figure is the trainer's own
  `images_per_second`, the training pass alone.
- tutorial: written the way the PyTorch and Ray Tune CIFAR tutorials do it: torchvision's CIFAR10 dataset
  class, per-image PIL RandomCrop(32, padding=4) / RandomHorizontalFlip / ToTensor / Normalize, a
  DataLoader with two workers, NCHW. Timed from `iter(loader)` (worker start-up included) to the last step.
- limit: the same train steps on one fixed, already normalized batch in memory, NCHW and channels_last.

Repetitions interleave the four pipelines, rotating their order, and every ratio is taken within one
repetition, so load from other processes on the machine hits all of them alike.

    python -m bench.throughput [--quick] [--reps 5] [--images 2048]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from bench.common import emit, line, out_dir, save, spread, verdict
from models import build_model
from search.data import DATASETS, write_fake
from search.train import TrainConfig, train

MODEL = {"width1": 32, "width2": 64}  # vgg7 at the widths the issue names: small enough for a 2-core CPU
BATCH_SIZE = 128
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4  # TrainConfig's defaults, for every pipeline
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # the tutorials' constants
TUTORIAL_WORKERS = 2
FAKE_TRAIN = 4608  # images in the fake CIFAR-10 files: 4,147 after the 10% validation split
FAKE_TEST = 256
TARGET_VS_LIMIT = 0.9  # ours at least 90% of the best compute limit
TARGET_VS_TUTORIAL = 1.3


def fake_cifar10() -> str:
    root = out_dir("data", "cifar10")
    info = DATASETS["cifar10"]
    if not (root / info.folder / "test_batch").exists():
        write_fake("cifar10", str(root), train=FAKE_TRAIN, test=FAKE_TEST)
    return str(root)


def _model(device: torch.device, channels_last: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = build_model("vgg7", num_classes=10, **MODEL).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    return model.train(), optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours(data_dir: str, images: int, device: torch.device, bf16: bool = False) -> float:
    """Images per second of one epoch of `search.train.train`, as a trial runs it."""
    config = TrainConfig(
        model="vgg7", dataset="cifar10", data_dir=data_dir, epochs=1, batch_size=BATCH_SIZE, lr=LR,
        momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, augment=True, channels_last=True, bf16=bf16,
        train_subset=images, val_subset=BATCH_SIZE, device=str(device), model_options=dict(MODEL),
    )  # fmt: skip
    return train(config).history[-1]["images_per_second"]


def tutorial_dataset(data_dir: str, images: int) -> Subset:
    augment = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
    ])  # fmt: skip
    # torchvision's CIFAR10 with the md5 check of the extracted files off, so it reads the fake files.
    dataset = DATASETS["cifar10"].torchvision_class(data_dir, train=True, transform=augment)
    return Subset(dataset, range(images))


def tutorial(dataset: Subset, device: torch.device, workers: int = TUTORIAL_WORKERS) -> tuple[float, float]:
    """(images per second, seconds to the first batch) of one epoch through a DataLoader."""
    model, optimizer = _model(device, channels_last=False)
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers, drop_last=True)
    seen, first = 0, 0.0
    _sync(device)
    start = time.perf_counter()
    for inputs, labels in loader:
        if not first:
            first = time.perf_counter() - start
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        loss.item()  # the tutorials' running_loss += loss.item()
        seen += len(labels)
    _sync(device)
    return seen / (time.perf_counter() - start), first


def limit(images: int, device: torch.device, channels_last: bool, bf16: bool = False) -> float:
    """Images per second of the same train steps on one fixed batch already in memory."""
    model, optimizer = _model(device, channels_last)
    x = torch.randn(BATCH_SIZE, 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH_SIZE,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    steps = images // BATCH_SIZE
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        with autocast:
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    loss.item()
    _sync(device)
    return steps * BATCH_SIZE / (time.perf_counter() - start)


def measure(images: int, reps: int, device: torch.device) -> dict[str, list[float]]:
    """Every pipeline `reps` times, interleaved in rotating order, after one untimed warm-up of each."""
    data_dir = fake_cifar10()
    dataset = tutorial_dataset(data_dir, images)
    pipelines = {
        "ours": lambda n: ours(data_dir, n, device),
        "tutorial": lambda n: tutorial(dataset, device),
        "limit_nchw": lambda n: limit(n, device, channels_last=False),
        "limit_channels_last": lambda n: limit(n, device, channels_last=True),
    }
    for run in pipelines.values():  # first calls build oneDNN kernels and read the files: not timed
        run(2 * BATCH_SIZE)
    results: dict[str, list] = {name: [] for name in pipelines}
    names = list(pipelines)
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            results[name].append(pipelines[name](images))
    results["tutorial_first_batch_s"] = [r[1] for r in results["tutorial"]]
    results["tutorial"] = [r[0] for r in results["tutorial"]]
    return results


def report(r: dict[str, list[float]]) -> dict:
    """Prints the figures and returns them with the per-repetition ratios."""
    best = [max(a, b) for a, b in zip(r["limit_nchw"], r["limit_channels_last"], strict=True)]
    vs_limit = [o / b for o, b in zip(r["ours"], best, strict=True)]
    vs_tutorial = [o / t for o, t in zip(r["ours"], r["tutorial"], strict=True)]
    vs_nchw = [o / b for o, b in zip(r["ours"], r["limit_nchw"], strict=True)]
    tutorial_vs_limit = [t / b for t, b in zip(r["tutorial"], r["limit_nchw"], strict=True)]
    for name in ("ours", "tutorial", "limit_nchw", "limit_channels_last"):
        emit(line(f"throughput.{name}", r[name], "img/s", ".0f"))
    emit(line("throughput.tutorial_first_batch", r["tutorial_first_batch_s"], "s", ".2f", "(worker start-up)"))
    emit(line("throughput.ours_vs_best_limit", vs_limit, "x", ".3f",
              verdict(spread(vs_limit)[0] >= TARGET_VS_LIMIT, f">= {TARGET_VS_LIMIT}")))  # fmt: skip
    emit(line("throughput.ours_vs_limit_nchw", vs_nchw, "x", ".3f"))
    emit(line("throughput.ours_vs_tutorial", vs_tutorial, "x", ".2f",
              verdict(spread(vs_tutorial)[0] >= TARGET_VS_TUTORIAL, f">= {TARGET_VS_TUTORIAL}x")))  # fmt: skip
    emit(line("throughput.tutorial_vs_limit_nchw", tutorial_vs_limit, "x", ".3f"))
    return {
        **r,
        "ours_vs_best_limit": vs_limit,
        "ours_vs_tutorial": vs_tutorial,
        "ours_vs_limit_nchw": vs_nchw,
        "tutorial_vs_limit_nchw": tutorial_vs_limit,
        "met": {
            "vs_limit": spread(vs_limit)[0] >= TARGET_VS_LIMIT,
            "vs_tutorial": spread(vs_tutorial)[0] >= TARGET_VS_TUTORIAL,
        },
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 repetitions of 512 images: a fast check")
    p.add_argument("--reps", type=int, default=5, help="repetitions of every pipeline")
    p.add_argument("--images", type=int, default=2048, help="training images per timed epoch")
    args = p.parse_args(argv)
    reps, images = (2, 4 * BATCH_SIZE) if args.quick else (args.reps, args.images)
    images -= images % BATCH_SIZE
    device = torch.device("cpu")
    emit(f"# throughput: vgg7 {MODEL}, batch {BATCH_SIZE}, fp32, {images} images x {reps} reps, "
         f"{torch.get_num_threads()} torch threads")  # fmt: skip
    figures = report(measure(images, reps, device))
    save("throughput", {"images": images, "reps": reps, "threads": torch.get_num_threads(), **figures})
    return figures


if __name__ == "__main__":
    main()
