"""Trainables for the fast tests' real Tune runs. Ray workers import this module to unpickle them, so it imports
nothing but Ray: a worker that imported a test module (torch, MLflow, the search package) took ~12 s to start."""

from __future__ import annotations

import os
import signal

from ray import tune


def fake_trial(config: dict) -> None:
    """Reports `epochs` epochs of a made-up val_acc; crashes at epoch `crash_at` when given."""
    for epoch in range(1, config["epochs"] + 1):
        if config.get("crash_at") == epoch:
            raise RuntimeError("boom at epoch 2")
        tune.report({"epoch": epoch, "val_acc": 0.1 * epoch + config["x"], "train_loss": 1.0 / epoch})


def fake_trial_variant(config: dict) -> None:
    fake_trial(config["variant"])  # the grid passes whole configs under "variant"


def one_or_two_epochs(config: dict) -> None:
    for epoch in range(1, config["epochs"] + 1):
        tune.report({"epoch": epoch, "val_acc": 0.1 * epoch, "epoch_seconds": 0.01, "outcome": "running"})


def one_result(config: dict) -> None:
    tune.report({"epoch": 1, "val_acc": 0.5})


def one_result_then_ctrl_c(config: dict) -> None:
    """Reports, then sends the driver (`config["driver"]`, its pid) a SIGINT as the trial ends: a Ctrl-C that lands
    while Tune winds up a run whose trials have all ended."""
    tune.report({"epoch": 1, "val_acc": 0.5})
    os.kill(config["driver"], signal.SIGINT)
