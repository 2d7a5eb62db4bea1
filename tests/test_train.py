"""The plain trainer on fake data in the real on-disk formats: it learns, resumes exactly, and fails clearly."""

from __future__ import annotations

import pytest
import torch

from search.errors import ConfigError
from search.train import (
    OPTIMIZERS,
    SCHEDULERS,
    CheckpointError,
    TrainConfig,
    build_optimizer,
    build_scheduler,
    evaluate_test,
    load_checkpoint,
    save_checkpoint,
    train,
)
from search.train import main as train_main

SMALL = {"width1": 8, "width2": 16, "fc1": 32}


def config(data_dir, **overrides) -> TrainConfig:
    values = {
        "model": "vgg7", "dataset": "fashion_mnist", "data_dir": str(data_dir), "epochs": 2, "batch_size": 32,
        "lr": 0.05, "scheduler": "none", "augment": False, "test_subset": 200, **SMALL, **overrides,
    }  # fmt: skip
    return TrainConfig.from_dict(values)


def test_learns_well_above_chance(fashion_dir):
    seen = []
    result = train(config(fashion_dir, epochs=3), on_epoch=lambda m, s: seen.append(m))
    assert result.outcome == "completed"
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    assert set(seen[0]) == {
        "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "epoch_seconds",
        "images_per_second",
    }  # fmt: skip
    assert seen[-1]["val_acc"] > 0.6, seen[-1]  # chance is 0.1
    test = evaluate_test(result.model, result.config)
    assert test["test_acc"] > 0.6 and test["test_loss"] >= 0 and test["test_top5"] >= test["test_acc"]


def test_resume_is_exact(fashion_dir, tmp_path):
    # dropout and augmentation draw random numbers: both must replay identically after a resume
    cfg = config(fashion_dir, epochs=4, dropout=0.3, augment=True, scheduler="cosine")

    def save(metrics, state):
        save_checkpoint(tmp_path / f"e{metrics['epoch']}.pt", state)

    straight = train(cfg, on_epoch=save).model.state_dict()  # saving draws no random numbers: it is the reference
    resumed = train(cfg, resume=tmp_path / "e2.pt")
    assert resumed.epoch == 4 and [m["epoch"] for m in resumed.history] == [1, 2, 3, 4]
    for key, value in straight.items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_non_finite_loss_is_diverged_not_an_error(fashion_dir):
    result = train(config(fashion_dir, epochs=3, lr=1e8, optimizer="sgd", momentum=0.0))
    assert result.outcome == "diverged"
    assert result.epoch == 1  # stops after the first epoch with a non-finite loss


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_steps(name):
    model = torch.nn.Linear(4, 2)
    opt = build_optimizer(TrainConfig(optimizer=name, lr=0.1), model.parameters())
    before = model.weight.detach().clone()
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_steps(name):
    model = torch.nn.Linear(4, 2)
    cfg = TrainConfig(scheduler=name, epochs=6, step_size=2, milestones="2,4", warmup_epochs=2, lr=0.1)
    opt = build_optimizer(cfg, model.parameters())
    sched = build_scheduler(cfg, opt, steps_per_epoch=3)
    lrs = []
    for _ in range(6 * (3 if name == "onecycle" else 1)):
        opt.step()
        sched.step(1.0) if name == "plateau" else sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(lr > 0 for lr in lrs[:-1])  # cosine reaches 0 only after the last epoch
    if name not in ("none", "plateau"):
        assert len(set(lrs)) > 1, f"{name} never changed the lr"


def test_the_seeds_step_schedule_divides_by_three_every_twenty_epochs():
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(scheduler="step", step_size=20, lr=0.3, epochs=60)
    opt = build_optimizer(cfg, model.parameters())
    sched = build_scheduler(cfg, opt, 1)
    for _ in range(40):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.3 / 9)


@pytest.mark.parametrize("batch_size", [64, 256])
def test_lr_per_lr_batch_examples_scales_with_the_batch(batch_size):
    cfg = TrainConfig(scheduler="onecycle", lr=0.8, lr_batch=1024, batch_size=batch_size, epochs=1)
    opt = build_optimizer(cfg, torch.nn.Linear(2, 2).parameters())
    sched = build_scheduler(cfg, opt, 10)
    assert sched.optimizer.param_groups[0]["max_lr"] == pytest.approx(0.8 * batch_size / 1024)
    assert TrainConfig(lr=0.8, batch_size=batch_size).step_lr == 0.8  # lr_batch 0: lr as given


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("lr", [0.01, 0.3])
def test_decoupled_weight_decay_per_step_does_not_move_with_lr(optimizer, lr):
    # with zero gradients a step only decays: by weight_decay (x batch_size / lr_batch) at the peak, whatever lr
    layer = torch.nn.Linear(4, 4, bias=False)
    before = layer.weight.detach().clone()
    cfg = TrainConfig(optimizer=optimizer, lr=lr, weight_decay=0.08, decoupled_wd=True, lr_batch=512, batch_size=256)
    opt = build_optimizer(cfg, layer.parameters())
    layer.weight.grad = torch.zeros_like(layer.weight)
    opt.step()
    assert torch.allclose(layer.weight, before * (1 - 0.08 * 256 / 512))
    coupled = build_optimizer(TrainConfig(optimizer=optimizer, lr=lr, weight_decay=0.08), layer.parameters())
    assert coupled.param_groups[0]["weight_decay"] == 0.08  # the old meaning stays the default


def test_bad_config_names_the_key():
    with pytest.raises(ConfigError, match="decoupled_wd: for sgd and adamw only, not optimizer 'adam'"):
        TrainConfig(optimizer="adam", decoupled_wd=True, dataset="cifar10").validate()
    with pytest.raises(ConfigError, match="lr_batch: must be >= 0"):
        TrainConfig(lr_batch=-1, dataset="cifar10").validate()
    # ConfigError: one of the project's own errors (one line at the CLI), still a ValueError for callers
    with pytest.raises(ConfigError, match="val_fraction: must be between 0 and 1"):
        TrainConfig(val_fraction=1.0, dataset="cifar10").validate()
    with pytest.raises(ConfigError, match="train_subset: must be >= 0"):
        TrainConfig(train_subset=-5, dataset="cifar10").validate()
    with pytest.raises(ValueError, match="optimizer: unknown 'sgdd'"):
        TrainConfig(optimizer="sgdd", dataset="cifar10").validate()
    with pytest.raises(ValueError, match="lr: must be > 0"):
        TrainConfig(lr=0, dataset="cifar10").validate()
    with pytest.raises(ValueError, match="epochs: expected int"):
        TrainConfig.from_dict({"epochs": "two"})
    with pytest.raises(ValueError, match="width9"):
        TrainConfig.from_dict({"model": "vgg7", "dataset": "cifar10", "width9": 3}).validate()


def test_checkpoints_are_verified(fashion_dir, tmp_path):
    states = []
    train(config(fashion_dir, epochs=1), on_epoch=lambda m, s: states.append(s))
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, states[0])
    assert load_checkpoint(path, config(fashion_dir))["epoch"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="for model 'vgg7', not 'lenet5'"):
        load_checkpoint(path, TrainConfig(model="lenet5", dataset="fashion_mnist"))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path, config(fashion_dir, width1=4))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_cli_trains_and_reports(fashion_dir, tmp_path, cli_exit):
    argv = ["--model", "vgg7", "--dataset", "fashion_mnist", "--data-dir", fashion_dir, "--epochs", "1",
            "--batch-size", "32", "--no-augment", "--set", "width1=8", "--set", "width2=16", "--set", "fc1=32",
            "--out", tmp_path / "out"]  # fmt: skip
    code, out, _ = cli_exit(train_main, argv)
    assert code == 0
    assert "epoch   1" in out and "test_acc" in out
    assert (tmp_path / "out" / "checkpoint.pt").exists() and (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--optimizer", "sgdd"], "optimizer: unknown 'sgdd'"),
        (["--epochs", "x"], "epochs: expected int"),
        (["--set", "width1"], "expected key=value"),
        (["--model", "vgg16", "--dataset", "fashion_mnist"], "block 5 max-pool"),
        (["--resume", "missing.pt"], "missing.pt: no such checkpoint"),  # a CheckpointError, one line
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),  # not argparse's usage block
        (["--val-fraction", "1.5"], "val_fraction: must be between 0 and 1"),
    ],
)
def test_cli_errors_are_one_line(args, message, fashion_dir, cli_exit):
    code, _, err = cli_exit(train_main, ["--data-dir", fashion_dir, "--dataset", "cifar10", *args])
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("values", "augment"),
    [
        ({"dataset": "cifar100"}, True),  # crops and flips suit 32x32 photos
        ({"dataset": "fashion_mnist"}, False),  # not 28x28 garments in a short run
        ({"dataset": "fashion_mnist", "augment": "true"}, True),  # asked for: kept
        ({"dataset": "cifar10", "augment": False}, False),
        ({"dataset": "fashion_mnist", "augment": None}, False),  # a config that left it unset
    ],
)
def test_augmentation_defaults_to_what_suits_the_dataset(values, augment):
    config = TrainConfig.from_dict(values)
    assert config.augment is augment
    assert config.flat()["augment"] is augment  # what MLflow logs is the value used, never None


@pytest.mark.parametrize("text", ["[1, 2]", '"lr=0.1"', "3"])
def test_a_config_file_that_is_not_one_object_of_keys_is_one_line(text, tmp_path, cli_exit):
    """A list or a string in --config was an AttributeError traceback."""
    path = tmp_path / "config.json"
    path.write_text(text)
    code, _, err = cli_exit(train_main, ["--config", path])
    assert code == 2 and f"--config {path}: expected a JSON object of config keys" in err
    assert len(err.strip().splitlines()) == 1, err
