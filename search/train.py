"""The plain PyTorch trainer: one config in, per-epoch metrics out. No Ray in here.

Every search trial runs `train`, and people run it alone to train one config:

    python -m search.train --model vgg7 --dataset fashion_mnist --epochs 2 --train-subset 10000

or, in a notebook, `train(TrainConfig(model="vgg7", dataset="fashion_mnist", epochs=2))`.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models import build_model
from models.cost import count
from search import cli, record
from search.batches import Batches
from search.data import DATASETS, Splits, load_splits, note_if_fake
from search.errors import CheckpointError, ConfigError, UsageError, one_line

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULERS = ("none", "step", "multistep", "cosine", "onecycle", "plateau", "exponential")
EVAL_BATCH_SIZE = 1024  # no gradients, so bigger batches just go faster


# Defaults that differ by dataset. Crops and flips pay on 32x32 photos over tens of epochs; on 28x28 centred
# garments in a short run they slow learning (vgg7, 2 epochs, real Fashion-MNIST: 0.907 test accuracy with
# these defaults; 0.836 with crops, flips and a cosine schedule at 0.05).
DATASET_DEFAULTS: dict[str, dict] = {"fashion_mnist": {"augment": False}}


@dataclass
class TrainConfig:
    """Everything one training run depends on. Every field is a string or a number so it logs to MLflow.

    Keys a trial sets that are not fields here (width1, stride2, fc1, dropout, ...) are model options and go
    to `models.build_model`.
    """

    model: str = "vgg7"
    dataset: str = "cifar100"
    data_dir: str = ""  # "" = search.data's default (./data or $SEARCH_DATA_DIR)
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1  # peak learning rate (onecycle's max_lr); per lr_batch examples when lr_batch is set
    # The batch size `lr` is stated for (airbench: 1024): a step uses lr x batch_size / lr_batch, so a search over
    # batch_size need not also learn where the right lr moves with it. 0 = every step uses lr as given.
    lr_batch: int = 0
    momentum: float = 0.9  # sgd and rmsprop
    nesterov: bool = False  # sgd only
    weight_decay: float = 5e-4  # as torch.optim means it (sgd: L2 in the gradient, adamw: x lr per step)
    # Decoupled from lr (sgd and adamw): weight_decay is the fraction of each weight decayed per step at the
    # schedule's peak (per lr_batch examples when lr_batch is set), whatever lr is, so the two are searched alone.
    decoupled_wd: bool = False
    scheduler: str = "onecycle"  # warm up, then anneal: the most a short, fixed budget buys
    warmup_epochs: int = 0  # cosine: linear warmup from lr/10 over this many epochs
    step_size: int = 20  # step: epochs between decays
    gamma: float = 1 / 3  # step, multistep, exponential, plateau: lr factor ("divide by 3 every 20 epochs")
    milestones: str = "50,75"  # multistep: comma-separated epochs (one string, one MLflow param)
    plateau_patience: int = 3  # plateau: epochs without val_loss improvement before decaying
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    augment: bool | None = None  # pad 4, random crop, horizontal flip, on whole batches; None: the dataset's
    val_fraction: float = 0.1  # of the training set, held out for validation (CIFAR: 45,000 / 5,000)
    train_subset: int = 0  # train on the first N images of the train split; 0 = all
    val_subset: int = 0
    test_subset: int = 0
    seed: int = 0
    device: str = "auto"  # auto = cuda when present
    bf16: bool = True  # autocast to bfloat16 on CUDA (no grad scaler needed, unlike fp16); CPU stays fp32
    channels_last: bool = True  # faster convolutions on CPU and on tensor cores
    model_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.augment is None:
            self.augment = DATASET_DEFAULTS.get(self.dataset, {}).get("augment", True)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Splits a flat dict (a trial's config) into fields and model options, casting to field types."""
        if not isinstance(values, dict):
            raise ConfigError(f"config: expected a dict of config keys, got {type(values).__name__} {values!r:.80}")
        names = {f.name: f for f in dataclasses.fields(cls) if f.name != "model_options"}
        if not isinstance(values.get("model_options") or {}, dict):
            raise ConfigError(f"model_options: expected a dict of model options, got {values['model_options']!r:.80}")
        kwargs, options = {}, dict(values.get("model_options") or {})
        for key, value in values.items():
            if key == "model_options":
                continue
            if key in names:
                kwargs[key] = _cast(key, value, names[key].type)
            else:
                options[key] = value
        return cls(**kwargs, model_options=options)

    def flat(self) -> dict:
        """The config as one flat dict, model options beside the fields: what MLflow logs as params."""
        out = dataclasses.asdict(self)
        out.update(out.pop("model_options"))
        return out

    def validate(self) -> None:
        """Checks names and ranges without touching data or building weights.

        Raises:
            ConfigError: naming the key and the bad value.
        """
        for f in dataclasses.fields(self):  # nan passes every range check below (nan < 0 is false)
            value = getattr(self, f.name)
            kinds = _FIELD_TYPES[f.type]  # a notebook's TrainConfig(epochs="2") skips from_dict's casts
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ConfigError(f"{f.name}: expected {f.type.replace(' | ', ' or ')}, got {value!r:.80}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name}: must be a finite number, got {value}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset: unknown '{self.dataset}'; choose from: {', '.join(DATASETS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer: unknown '{self.optimizer}'; choose from: {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler: unknown '{self.scheduler}'; choose from: {', '.join(SCHEDULERS)}")
        for key in ("epochs", "batch_size", "step_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be at least 1, got {getattr(self, key)}")
        for key in ("lr", "gamma"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key}: must be > 0, got {getattr(self, key)}")
        for key in ("weight_decay", "grad_clip", "warmup_epochs", "plateau_patience"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum: must be in [0, 1), got {self.momentum}")
        if not 0 <= self.label_smoothing <= 1:
            raise ConfigError(f"label_smoothing: must be between 0 and 1, got {self.label_smoothing}")
        if not 0 <= self.seed < 2**32:  # numpy's and Optuna's seeds are 32-bit
            raise ConfigError(f"seed: must be between 0 and 2**32 - 1, got {self.seed}")
        if self.device != "auto" and _device_type(self.device) not in DEVICE_TYPES:
            raise ConfigError(f"device: unknown '{self.device}'; choose from: auto, {', '.join(DEVICE_TYPES)}, cuda:N")
        for key in ("train_subset", "val_subset", "test_subset"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be >= 0 (0 = all), got {getattr(self, key)}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction: must be between 0 and 1, got {self.val_fraction}")
        if self.lr_batch < 0:
            raise ConfigError(f"lr_batch: must be >= 0 (0 = lr as given), got {self.lr_batch}")
        if self.decoupled_wd and self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"decoupled_wd: for sgd and adamw only, not optimizer '{self.optimizer}'")
        _milestones(self.milestones)
        try:
            with torch.device("meta"):  # checks model name, options and pooling collapse without allocating
                self.build_model()
        except ValueError as exc:  # models/ knows nothing of this project's errors; PoolingCollapse stays the cause
            raise ConfigError(str(exc)) from exc
        except RuntimeError as exc:  # on the meta device nothing is allocated: only the shapes can be at fault
            options = ", ".join(f"{k}={v!r}" for k, v in self.model_options.items())
            raise ConfigError(f"{self.model} with {options or 'its defaults'}: cannot be built ({exc})") from None

    @property
    def step_lr(self) -> float:
        """The peak learning rate a step applies: `lr`, scaled to the batch size when `lr_batch` is set."""
        return self.lr * self.batch_size / self.lr_batch if self.lr_batch else self.lr

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One image's (channels, height, width)."""
        info = DATASETS[self.dataset]
        return info.channels, info.size, info.size

    def cost(self) -> dict[str, int]:
        """The model's parameters and multiply-accumulates per image, counted without allocating weights."""
        with torch.device("meta"):
            return count(self.build_model(), self.input_shape)

    def build_model(self) -> nn.Module:
        info = DATASETS[self.dataset]
        return build_model(
            self.model,
            num_classes=info.num_classes,
            in_channels=info.channels,
            input_size=info.size,
            **self.model_options,
        )


# What each field's annotation admits (an int is a float too); `validate` checks them before any range.
_FIELD_TYPES = {"str": (str,), "int": (int,), "float": (float, int), "bool": (bool,), "bool | None": (bool, type(None)),
                "dict": (dict,)}  # fmt: skip


def _cast(key: str, value: object, type_name: str) -> object:
    """Casts a value from JSON, argparse or a sampler to the field's type, so '3' and 3.0 both work."""
    kind = type_name.split(" ")[0]
    if value is None and type_name.endswith("| None"):
        return None  # augment: the dataset's default
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return value.lower() in ("true", "1")
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        shown = " ".join(repr(value).split())  # one line, even for a numpy array
        raise ConfigError(f"{key}: expected {kind}, got {shown[:80]}") from None


def _milestones(text: str) -> list[int]:
    try:
        return sorted(int(m) for m in str(text).split(",") if m.strip())
    except ValueError:
        raise ConfigError(f"milestones: expected comma-separated epochs like '50,75', got {text!r}") from None


@dataclass
class TrainResult:
    """How a run ended: outcome 'completed' or 'diverged' (a non-finite loss), the epochs' metrics."""

    outcome: str
    history: list[dict]
    model: nn.Module
    config: TrainConfig

    @property
    def epoch(self) -> int:
        return self.history[-1]["epoch"] if self.history else 0


DEVICE_TYPES = ("cpu", "cuda", "mps")


def _device_type(name: str) -> str:
    try:
        return torch.device(name).type
    except (RuntimeError, TypeError):  # "Expected one of cpu, cuda, ... device type at start of device string"
        return ""


def resolve_device(name: str) -> torch.device:
    """The device to train on; checked where training runs, since a search's driver may have no GPU of its own.

    Raises:
        ConfigError: a device this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device: '{name}', but torch sees {torch.cuda.device_count()} CUDA devices here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: '{name}', but torch sees no MPS device here")
    return device


def load_data(config: TrainConfig) -> Splits:
    return load_splits(
        config.dataset,
        config.data_dir or None,
        val_fraction=config.val_fraction,
        train_subset=config.train_subset or None,
        val_subset=config.val_subset or None,
        test_subset=config.test_subset or None,
        seed=config.seed,
    )


def build_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    lr, wd = config.step_lr, config.weight_decay
    if config.decoupled_wd:
        # torch multiplies weight_decay by the step's lr (sgd through the momentum buffer, adamw directly), and the
        # peak step lr is lr (x batch_size / lr_batch): dividing by `lr` makes the decay per step weight_decay at
        # the peak (x batch_size / lr_batch), following the schedule.
        wd = wd / config.lr
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
            weight_decay=wd,
        )  # fmt: skip
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=config.momentum, weight_decay=wd)
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    raise ValueError(f"optimizer: unknown '{config.optimizer}'; choose from: {', '.join(OPTIMIZERS)}")


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The lr schedule. OneCycle steps every batch; the others step once per epoch (see `steps_per_batch`)."""
    s, epochs = config.scheduler, config.epochs
    sched = torch.optim.lr_scheduler
    if s == "none":
        return sched.LambdaLR(optimizer, lambda _: 1.0)
    if s == "step":
        return sched.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if s == "multistep":
        return sched.MultiStepLR(optimizer, milestones=_milestones(config.milestones), gamma=config.gamma)
    if s == "exponential":
        return sched.ExponentialLR(optimizer, gamma=config.gamma)
    if s == "plateau":
        return sched.ReduceLROnPlateau(optimizer, factor=config.gamma, patience=config.plateau_patience)
    if s == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=config.step_lr, total_steps=epochs * steps_per_epoch)
    if s == "cosine":
        warmup = min(config.warmup_epochs, epochs - 1)
        cosine = sched.CosineAnnealingLR(optimizer, T_max=max(1, epochs - warmup))
        if warmup == 0:
            return cosine
        ramp = sched.LinearLR(optimizer, start_factor=0.1, total_iters=warmup)
        return sched.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
    raise ValueError(f"scheduler: unknown '{s}'; choose from: {', '.join(SCHEDULERS)}")


def steps_per_batch(config: TrainConfig) -> bool:
    return config.scheduler == "onecycle"


def train_one_epoch(model, batches, optimizer, scheduler, config: TrainConfig, autocast) -> dict:
    """One pass over the training batches; loss and accuracy stay on the device until the end."""
    model.train()
    loss_sum = torch.zeros((), device=batches.device)
    correct = torch.zeros((), device=batches.device, dtype=torch.long)
    seen = 0
    for x, y in batches:
        with autocast:
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if steps_per_batch(config):
            scheduler.step()
        loss_sum += loss.detach().float() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return {"train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen, "images": seen}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, autocast=None) -> dict:
    """Top-1, top-5 and mean cross-entropy over every batch (no augmentation)."""
    model.eval()
    loss_sum = torch.zeros((), device=batches.device)
    top1 = torch.zeros((), device=batches.device, dtype=torch.long)
    top5 = torch.zeros((), device=batches.device, dtype=torch.long)
    seen = 0
    for x, y in batches:
        with autocast or torch.autocast("cpu", enabled=False):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += (ranked[:, 0] == y).sum()
        top5 += (ranked == y[:, None]).any(dim=1).sum()
        seen += len(y)
    return {"loss": loss_sum.item() / seen, "acc": top1.item() / seen, "top5": top5.item() / seen}


def _batches(splits: Splits, x, y, config: TrainConfig, device, *, train: bool) -> Batches:
    return Batches(
        x, y, batch_size=config.batch_size if train else EVAL_BATCH_SIZE, mean=splits.mean, std=splits.std,
        device=device, shuffle=train, augment=train and config.augment, seed=config.seed,
        channels_last=config.channels_last,
    )  # fmt: skip


def _autocast(config: TrainConfig, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and config.bf16)


def train(
    config: TrainConfig | dict,
    *,
    on_epoch: Callable[[dict, dict], None] | None = None,
    resume: dict | str | os.PathLike | None = None,
    splits: Splits | None = None,
) -> TrainResult:
    """Trains one config for `config.epochs` epochs.

    Args:
        config: a TrainConfig, or a flat dict of its fields and model options.
        on_epoch: called after every epoch with the metrics dict (epoch, train_loss, train_acc, val_loss,
            val_acc, val_top5, lr, epoch_seconds, images_per_second) and the checkpoint state; the caller
            decides whether to `save_checkpoint` it (the Tune wrapper does when one is due). By default each epoch
            prints its line (`format_metrics`), so a notebook's `train(...)` shows how it goes.
        resume: a checkpoint state or path; training continues after its epoch, exactly as if never stopped.
        splits: data already loaded (defaults to `load_data(config)`, which is cached per process).

    Returns:
        A TrainResult. A non-finite training loss stops training with outcome 'diverged'; errors raise.
    """
    config = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    config.validate()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    if resume is not None and not isinstance(resume, dict):
        resume = load_checkpoint(resume, config)  # before the data: a bad path fails in a second
    splits = splits or load_data(config)
    train_batches = _batches(splits, splits.train_x, splits.train_y, config, device, train=True)
    val_batches = _batches(splits, splits.val_x, splits.val_y, config, device, train=False)

    model = config.build_model().to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config, model.parameters())
    scheduler = build_scheduler(config, optimizer, len(train_batches))
    autocast = _autocast(config, device)
    history: list[dict] = []
    if resume is not None:
        state = resume
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        history = list(state["history"])

    outcome = "completed"
    for epoch in range(len(history) + 1, config.epochs + 1):
        train_batches.set_epoch(epoch)
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(model, train_batches, optimizer, scheduler, config, autocast)
        train_seconds = time.perf_counter() - start
        val = evaluate(model, val_batches, autocast)
        metrics = {
            "epoch": epoch,
            "train_loss": stats["train_loss"],
            "train_acc": stats["train_acc"],
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "val_top5": val["top5"],
            "lr": lr,
            "epoch_seconds": time.perf_counter() - start,
            "images_per_second": stats["images"] / train_seconds,
        }
        if not math.isfinite(metrics["train_loss"]):
            outcome = "diverged"
        elif config.scheduler == "plateau":
            scheduler.step(val["loss"])
        elif not steps_per_batch(config):
            scheduler.step()
        history.append(metrics)
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "epoch": epoch,
            "history": history,
            "config": config.flat(),
        }
        (on_epoch or _print_epoch)(metrics, state)
        if outcome == "diverged":
            break
    return TrainResult(outcome=outcome, history=history, model=model, config=config)


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Writes a checkpoint atomically: a crash mid-write leaves the previous file, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike, config: TrainConfig | None = None) -> dict:
    """Loads a checkpoint without executing pickled code, and checks it fits `config`'s model.

    Raises:
        CheckpointError: missing, truncated or corrupt file, or a checkpoint of another model.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # torch raises RuntimeError, pickle errors, EOFError... for a torn file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: {reason})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint of this trainer (it holds a {type(state).__name__})")
    missing = {"model", "optimizer", "scheduler", "rng", "epoch", "history", "config"} - set(state)
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint of this trainer (missing {', '.join(sorted(missing))})")
    kinds = {"model": dict, "optimizer": dict, "scheduler": dict, "rng": torch.Tensor, "epoch": int,
             "history": list, "config": dict}  # fmt: skip
    for key, kind in kinds.items():
        if not isinstance(state[key], kind) or (kind is int and isinstance(state[key], bool)):
            raise CheckpointError(f"{path}: not a checkpoint of this trainer ({key} is {type(state[key]).__name__})")
    if config is not None:
        _check_resumable(path, state, config)
    return state


# What an optimizer's and a scheduler's load_state_dict bring back from a checkpoint, so must not change on resume
RESUME_KEYS = ("optimizer", "scheduler", "lr", "lr_batch", "batch_size", "momentum", "nesterov", "weight_decay",
               "decoupled_wd")  # fmt: skip
SCHEDULE_KEYS = {
    "none": (), "exponential": ("gamma",), "step": ("step_size", "gamma"), "multistep": ("milestones", "gamma"),
    "plateau": ("gamma", "plateau_patience"), "cosine": ("epochs", "warmup_epochs"),
    "onecycle": ("epochs", "train_subset", "val_fraction"),  # its total steps are fixed at the start
}  # fmt: skip


def _check_resumable(path: Path, state: dict, config: TrainConfig) -> None:
    """What continuing a checkpoint under `config` needs: the same weights' shapes, the same optimizer and
    schedule (their settings come back from the checkpoint: a new value would be silently ignored), and an epoch
    not past `config.epochs`."""
    theirs = state["config"]
    for key in ("model", "dataset", *RESUME_KEYS, *SCHEDULE_KEYS[config.scheduler]):
        if key in theirs and theirs[key] != getattr(config, key):
            raise CheckpointError(
                f"{path}: checkpoint is for {key} {theirs[key]!r}, not {getattr(config, key)!r}; resume with the "
                f"same {key}, or train from scratch"
            )
    if state["epoch"] > config.epochs:
        raise CheckpointError(f"{path}: checkpoint is at epoch {state['epoch']}, past epochs={config.epochs}")
    shapes = {k: tuple(v.shape) for k, v in config.build_model().state_dict().items()}
    if shapes != {k: tuple(getattr(v, "shape", ())) for k, v in state["model"].items()}:
        raise CheckpointError(f"{path}: checkpoint weights do not fit this model's options")


def test_batches(config: TrainConfig, splits: Splits, device: torch.device | str = "cpu") -> Batches:
    return _batches(splits, splits.test_x, splits.test_y, config, device, train=False)


def evaluate_test(model: nn.Module, config: TrainConfig, splits: Splits | None = None) -> dict:
    """The held-out test set's top-1, top-5 and loss, as test_acc, test_top5, test_loss."""
    splits = splits or load_data(config)
    device = next(model.parameters()).device
    batches = test_batches(config, splits, device)
    return {f"test_{k}": v for k, v in evaluate(model, batches, _autocast(config, device)).items()}


def model_from_checkpoint(path: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, TrainConfig]:
    """Rebuilds the trained model and its config from a checkpoint."""
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    model = config.build_model()
    model.load_state_dict(state["model"])
    return model.to(device), config


def _print_epoch(metrics: dict, state: dict) -> None:
    print(format_metrics(metrics), flush=True)


def format_metrics(m: dict) -> str:
    return (
        f"epoch {m['epoch']:3d}  train_loss {m['train_loss']:.4f}  train_acc {m['train_acc']:.4f}  "
        f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}  val_top5 {m['val_top5']:.4f}  "
        f"lr {m['lr']:.2e}  {m['epoch_seconds']:.1f}s  {m['images_per_second']:.0f} img/s"
    )


RUN_LABELS = ("variant", "source_trial")  # what a final retrain's run holds beside its config: labels only


def config_from_params(params: dict[str, str]) -> dict:
    """A trial's config back from its MLflow params, which hold `str(value)`: fields as the strings TrainConfig
    casts ("None" for a field left to its default), model options parsed as `--set` parses them."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"model_options"}
    return {
        key: (None if text == "None" else text) if key in names else cli.parse_value(text)
        for key, text in params.items()
        if key not in RUN_LABELS
    }


@dataclass
class Rerun:
    """A search's trial trained again from its MLflow run (`--from-run`): the trial's config, the CPU threads it
    trained with (its search's CPUS_PER_TRIAL, as the Tune wrapper sets them), and the new run that logs the
    retraining, in the same experiment, tagged `reproduces=<the trial's run id>`. MLflow is imported here only."""

    client: object  # MlflowClient
    source: object  # the trial's mlflow Run
    config: dict
    threads: int = 0
    run_id: str = ""

    @classmethod
    def open(cls, run_id: str, tracking_uri: str) -> Rerun:
        """Reads a trial's run.

        Raises:
            UsageError: no such run in the store (or the store cannot be reached), or a run that is not a trial's.
        """
        cli.cap_mlflow_retries()
        import mlflow
        from mlflow.exceptions import MlflowException
        from requests.exceptions import RequestException

        uri = tracking_uri or mlflow.get_tracking_uri()
        try:
            client = mlflow.MlflowClient(uri)
            run = client.get_run(run_id)
            parent = run.data.tags.get("mlflow.parentRunId")
            settings = client.get_run(parent).data.params if parent else {}
        except (MlflowException, RequestException) as exc:
            reason = one_line(exc, 200)
            raise UsageError(f"--from-run {run_id}: no such run in the MLflow store {uri} ({reason})") from None
        if not run.data.tags.get("trial_id") or run.data.tags.get("stage") not in ("search", "final"):
            raise UsageError(
                f"--from-run {run_id}: not a search trial's run (no trial_id and stage tags); pass the run id of a "
                "trial, a child run of a search's parent run"
            )
        threads = int(float(settings.get("setting.CPUS_PER_TRIAL", 0)))
        return cls(client, run, config_from_params(run.data.params), threads)

    def start(self, config: TrainConfig) -> None:
        from mlflow.entities import Param

        from search import mlflow_ui

        source, trial_id = self.source.info, self.source.data.tags["trial_id"]
        tags = {**mlflow_ui.run_tags(), "reproduces": source.run_id, "reproduces.trial_id": trial_id}
        run = self.client.create_run(source.experiment_id, run_name=f"{source.run_name}-again", tags=tags)
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(config.flat().items())])
        mlflow_ui.inherit_dataset(self.client, self.run_id, source.run_id)

    def log(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(k, float(v), now, step) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"
        ])  # fmt: skip

    def end(self, outcome: str) -> None:
        self.client.set_tag(self.run_id, "outcome", outcome)
        self.client.set_terminated(self.run_id, status="FINISHED" if outcome == "completed" else "FAILED")
        source = self.source.info
        print(f"mlflow run {self.run_id} reproduces {source.run_id} (experiment {source.experiment_id})")


def _parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m search.train", description="Train one config and evaluate it on the test set."
    )
    p.add_argument("--config", help="JSON file of config keys (flags given here override it)")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model_options":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type.startswith("bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            p.add_argument(flag, default=None, help=f"default: {f.default}")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="model option, e.g. --set width1=32")
    p.add_argument("--out", default="", help="folder for the final checkpoint and metrics.json")
    p.add_argument("--resume", default="", help="checkpoint to continue from")
    p.add_argument("--from-run", default="", metavar="RUN_ID", help="train a search's trial again from its MLflow run")
    p.add_argument("--tracking-uri", default="", help="MLflow store of --from-run (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.from_run and (args.config or args.resume):
        raise UsageError(f"--from-run {args.from_run}: the run gives the config; drop --config and --resume")
    rerun = Rerun.open(args.from_run, args.tracking_uri) if args.from_run else None
    values: dict = dict(rerun.config) if rerun else {}
    if args.config:
        try:
            data = record.read_bytes(args.config)  # a path, or the s3:// URI a search's summary printed
            if data is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", args.config)
            values = json.loads(data.decode())
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise UsageError(f"--config {args.config}: {one_line(exc)}") from None
        if not isinstance(values, dict):  # best_config.json or a trial's params.json: one object of config keys
            raise UsageError(f"--config {args.config}: expected a JSON object of config keys, got {values!r:.80}")
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"model_options"}
    values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    values.update(cli.parse_sets(args.set))
    config = TrainConfig.from_dict(values)

    def progress(metrics: dict, state: dict) -> None:
        _print_epoch(metrics, state)
        if args.out:
            save_checkpoint(Path(args.out) / "checkpoint.pt", state)
        if rerun:
            rerun.log(metrics, metrics["epoch"])

    note_if_fake(config.dataset, config.data_dir)  # first, before any epoch: fake data is never taken for real
    if rerun:
        config.validate()  # before its run is created: a config no trainer accepts leaves nothing behind
        if rerun.threads:
            torch.set_num_threads(rerun.threads)  # as the trial trained: the same sums, the same curve on a CPU
        rerun.start(config)
    try:
        result = train(config, on_epoch=progress, resume=args.resume or None)
        test = evaluate_test(result.model, config)
    except BaseException:
        if rerun:
            rerun.end("errored")
        raise
    if rerun:
        rerun.log(test, result.epoch)
        rerun.end(result.outcome)
    print(
        f"{result.outcome} after {result.epoch} epochs: test_acc {test['test_acc']:.4f}  "
        f"test_top5 {test['test_top5']:.4f}  test_loss {test['test_loss']:.4f}"
    )
    if args.out:
        summary = {"outcome": result.outcome, "config": config.flat(), "history": result.history, **test}
        (Path(args.out) / "metrics.json").write_text(json.dumps(summary, indent=2))
        print(f"model: {Path(args.out) / 'checkpoint.pt'}")
    return 0 if result.outcome == "completed" else 1


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
