"""The thin Tune wrapper over the plain trainer: one `tune.report` per epoch, with a checkpoint."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from search.train import TrainConfig, load_checkpoint, save_checkpoint, train

CHECKPOINT_FILE = "checkpoint.pt"


def trainable(config: dict) -> None:
    """Trains one trial; Ray calls it in a worker process that stays alive across trials (actor reuse).

    Reports every epoch's metrics plus `outcome` ('running', or 'diverged' on a non-finite loss) and, on the
    first report after a restore, the epochs trained before it (`history`), so tracking can fill any gap.
    """
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
    backfill = list(resume["history"]) if resume else []
    node_id = ray.get_runtime_context().get_node_id()  # tells apart two Ray nodes on one host

    def report(metrics: dict, state: dict) -> None:
        nonlocal backfill
        metrics = dict(metrics, outcome="running", node_id=node_id)
        if backfill:
            metrics["history"], backfill = backfill, []
        if not math.isfinite(metrics["train_loss"]):
            # No checkpoint: nothing worth resuming from NaN weights.
            tune.report(dict(metrics, outcome="diverged"))
            return
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(Path(folder) / CHECKPOINT_FILE, state)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    train(train_config, on_epoch=report, resume=resume)
