"""The thin Tune wrapper over the plain trainer: one `tune.report` per epoch, with a checkpoint when one is due
(`search.schedule.checkpoint_due`)."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import tune

from models.cost import latency_ms
from search.data import adopt, load_arrays
from search.errors import UsageError
from search.schedule import checkpoint_due
from search.train import TrainConfig, load_checkpoint, resolve_device, save_checkpoint, train

CHECKPOINT_FILE = "checkpoint.pt"

# Ray logs "Checkpoint successfully created at: ..." for every epoch of every trial, and the driver prints its
# workers' logs: lines around the live table, and one after the summary, that tell a person nothing
logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)

_latency: dict[tuple, float] = {}  # architecture and device -> ms; a worker process runs many trials


def trial_cost(config: TrainConfig) -> dict[str, float]:
    """Parameters and MACs per image, counted; latency at batch 1 on the trial's device, measured once per
    architecture in this process."""
    cost = config.cost()
    device = resolve_device(config.device)
    key = (config.model, cost["params"], cost["macs"], str(device), torch.get_num_threads())
    if key not in _latency:
        model = config.build_model().to(device)
        _latency[key] = latency_ms(model.to(memory_format=torch.channels_last) if config.channels_last else model,
                                   config.input_shape)  # fmt: skip
    return {**cost, "latency_ms": _latency[key]}


def given_gpus(device: str) -> dict[str, str]:
    """The GPUs Ray gave this trial, as `gpu_ids` and the `cuda_visible_devices` Ray set from them ("" for none).

    Raises:
        UsageError: Ray gave GPUs and device is 'auto', but torch sees no CUDA device: a CPU-only torch build or
            one the node's driver cannot run would otherwise train on the CPU, 50-100x slower, without a word.
    """
    ids = ",".join(str(i) for i in ray.get_gpu_ids())
    if ids and device == "auto" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise UsageError(
            f"Ray gave this trial GPU {ids} but torch {torch.__version__} ({build}) sees no CUDA device on "
            f"{ray.util.get_node_ip_address()}: install the torch build for this node's CUDA driver (nvidia-smi), "
            "or set GPUS_PER_TRIAL = 0, or --set device=cpu to train on the CPU on purpose"
        )
    return {"gpu_ids": ids, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


# The datasets this process put in Ray's object store, by dataset, data dir, the arrays read and the Ray connection:
# `tune.with_parameters` keeps whatever it is given for the life of the process, so a notebook's every search
# would otherwise leave one more copy of its dataset there.
_shared: dict[tuple, tuple[tuple, ray.ObjectRef]] = {}


def shared_data(base_config: dict) -> dict:
    """The dataset of a search's trials (`base_config`: `Space.base_config`), read here by the driver once and put
    in Ray's object store once: the `data` argument of `trainable`, which `build_tuner` passes every trial."""
    name, data_dir = base_config["dataset"], base_config["data_dir"]
    arrays, ray_context = load_arrays(name, data_dir), ray.get_runtime_context()
    key = (name, data_dir, ray_context.get_node_id(), ray_context.get_job_id())
    if key not in _shared or _shared[key][0] is not arrays:  # new, or the files were read again
        # as numpy arrays, which a trial maps from the object store without a copy
        _shared[key] = arrays, ray.put((name, data_dir, tuple(a.numpy() for a in arrays)))
    return {"data": _shared[key][1]}


def trainable(config: dict, checkpoint_seconds: float = 0.0, data: tuple | None = None) -> None:
    """Trains one trial; Ray calls it in a worker process that stays alive across trials (actor reuse).

    Reports every epoch's metrics plus the trial's cost (`trial_cost`), `outcome` ('running', or 'diverged' on a
    non-finite loss), the node and the GPUs Ray gave it (`given_gpus`). Checkpoints at the last epoch and otherwise
    every `checkpoint_seconds` (CHECKPOINT_SECONDS, which `tune.with_parameters` passes; 0 = every epoch). A trial
    resumed from an earlier checkpoint reports the epochs since it again; the record keeps each epoch once.
    `data` (`shared_data`): the dataset as the driver decoded it, so that the trial reads no data file.
    """
    if data is not None:
        adopt(*data)
    # A grid over whole configs (the final retrains) arrives as one `variant` dict; `source_trial` only labels it.
    config = {**config, **config.get("variant", {})}
    config = {k: v for k, v in config.items() if k not in ("variant", "source_trial")}
    train_config = TrainConfig.from_dict(config)
    # Ray sets OMP_NUM_THREADS from the trial's CPUs; torch reads it only at import, so apply it per trial.
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            resume = load_checkpoint(Path(folder) / CHECKPOINT_FILE, train_config)
    node_id = ray.get_runtime_context().get_node_id()  # tells apart two Ray nodes on one host
    gpus = given_gpus(train_config.device)
    cost = trial_cost(train_config)

    saved = time.monotonic()

    def report(metrics: dict, state: dict) -> None:
        nonlocal saved
        metrics = dict(metrics, **cost, outcome="running", node_id=node_id, **gpus)
        if not math.isfinite(metrics["train_loss"]):
            # No checkpoint: nothing worth resuming from NaN weights.
            tune.report(dict(metrics, outcome="diverged"))
            return
        if not checkpoint_due(metrics["epoch"], train_config.epochs, time.monotonic() - saved, checkpoint_seconds):
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(Path(folder) / CHECKPOINT_FILE, state)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        saved = time.monotonic()

    train(train_config, on_epoch=report, resume=resume)
