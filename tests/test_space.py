"""Space files: every shipped one loads, and every mistake is one line naming the file and the setting."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from search.run import main as run_main
from search.space import SpaceError, load_space, parse_duration

SPACES = sorted(Path(__file__).parents[1].joinpath("spaces").glob("*.py"))
GOOD = """
from ray import tune
DATASET = "cifar10"
MODEL = "vgg7"
MAX_EPOCHS = 4
SPACE = {"lr": tune.loguniform(1e-3, 0.1), "optimizer": tune.choice(["sgd", "adamw"])}
"""


def write(tmp_path: Path, body: str, name: str = "space.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
@pytest.mark.parametrize("smoke", [False, True])
def test_every_shipped_space_loads(path, smoke):
    space = load_space(path, smoke=smoke)
    assert space.settings.NUM_SAMPLES >= 1 and space.params
    if smoke:
        assert space.settings.MAX_EPOCHS == 2 and space.settings.TRAIN_SUBSET == 512


def test_objectives_make_their_first_the_metric(tmp_path):
    space = load_space(write(tmp_path, GOOD + "OBJECTIVES = {'val_loss': 'min', 'latency_ms': 'min'}\n"))
    assert (space.settings.METRIC, space.settings.MODE) == ("val_loss", "min")
    assert space.settings.objectives == {"val_loss": "min", "latency_ms": "min"}
    assert load_space(write(tmp_path, GOOD)).settings.objectives == {"val_acc": "max"}


def test_overrides_fix_a_parameter_or_change_a_setting(tmp_path):
    space = load_space(write(tmp_path, GOOD), {"lr": 0.01, "NUM_SAMPLES": 3})
    assert "lr" not in space.params and space.fixed["lr"] == 0.01
    assert space.settings.NUM_SAMPLES == 3
    assert space.base_config()["lr"] == 0.01


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("DATASET = 'cifar10'\nMODEL = 'vgg7'\nSPACE = {'lr': 0.1\n", r"space.py:\d+: syntax error"),
        (GOOD + "MAX_EPOCH = 3\n", "unknown setting MAX_EPOCH"),
        (GOOD + "MAX_EPOCHS = '3'\n", "MAX_EPOCHS must be int"),
        (GOOD + "NUM_SAMPLES = 0\n", "NUM_SAMPLES=0: must be at least 1"),
        (GOOD + "GRACE_PERIOD = 9\n", "GRACE_PERIOD=9: must not exceed MAX_EPOCHS"),
        (GOOD + "MODE = 'maximum'\n", "MODE='maximum'"),
        (GOOD + "TIME_BUDGET = 'two hours'\n", "TIME_BUDGET='two hours'"),
        (GOOD + "CPUS_PER_TRIAL = 0.5\n", "CPUS_PER_TRIAL=0.5: a trial trains with at least 1 CPU"),
        (GOOD.replace('"cifar10"', '"cifar1000"'), "DATASET='cifar1000': unknown dataset"),
        (GOOD.replace('"vgg7"', '"vgg8"'), "MODEL='vgg8': unknown model"),
        (GOOD + "SPACE['optimizer'] = tune.choice([])\n", r"SPACE\['optimizer'\]: .*one or more elements"),
        (GOOD + "SPACE['optimizer'] = tune.choice(['sgd', 'sgdd'])\n", "optimizer: unknown 'sgdd'"),
        (GOOD + "SPACE['scheduler'] = tune.choice(['cosine', 'linear'])\n", "scheduler: unknown 'linear'"),
        (GOOD + "SPACE['lr'] = tune.uniform(0.0, 0.1)\n", "lr: must be > 0"),
        (GOOD + "SPACE['lr'] = tune.uniform(0.1, 0.01)\n", r"SPACE\['lr'\]: `low <= high` must hold"),
        (GOOD + "SPACE['lr'] = tune.loguniform(0, 0.1)\n", r"space.py:\d+: ValueError: LogUniform requires"),
        (GOOD + "SPACE['width1'] = 'wide'\n", "width1"),
        (
            GOOD + "SPACE['stride1'] = tune.choice([16, 32])\nFIXED = {'kernel1': 16, 'kernel2': 4}\n",
            "every architecture",
        ),
        (GOOD + "MAX_MACS = -1\n", r"MAX_MACS=-1.0: must not be negative"),
        (GOOD + "CHECKPOINT_SECONDS = -5\n", r"CHECKPOINT_SECONDS=-5.0: must not be negative"),
        (GOOD + "OBJECTIVES = {'val_acc': 'max'}\n", r"OBJECTIVES=.*: .*needs at least two objectives"),
        (GOOD + "OBJECTIVES = {'val_acc': 'max', 'flops': 'min'}\n", r"OBJECTIVES=.*unknown objective 'flops'"),
        (GOOD + "OBJECTIVES = {'val_acc': 'max', 'macs': 'low'}\n", r"OBJECTIVES=.*macs: direction 'low'"),
        (GOOD + "OBJECTIVES = {'macs': 'min', 'val_acc': 'max'}\n", r"OBJECTIVES=.*first objective is the metric"),
        (
            GOOD + "METRIC = 'val_loss'\nOBJECTIVES = {'val_acc': 'max', 'macs': 'min'}\n",
            r"OBJECTIVES=.*the first objective \(val_acc: max\) must be METRIC and MODE \(val_loss: min\)",
        ),
        (
            GOOD + "MAX_MACS = 1e6\n",
            r"MAX_MACS=1e\+06: none of \d+ sampled configs fits \(the cheapest costs 1.36e\+08",
        ),
        (
            GOOD + "SPACE['width1'] = tune.choice([8, 64])\nMAX_MACS = 1.2e8\nSTART_WITH = [{'lr': 0.01, "
            "'optimizer': 'sgd', 'width1': 64}]\n",
            r"START_WITH\[0\] costs 1.36e\+08 MACs per image, over MAX_MACS \(1.2e\+08\)",
        ),
        (GOOD + "SPACE = {}\n", "SPACE is empty"),
        ("DATASET = 'cifar10'\nMODEL = 'vgg7'\n", "no search space"),
        ("MODEL = 'vgg7'\nSPACE = {'lr': 0.1}\n", "DATASET is required"),
        (GOOD + "x = [1]\n", "unknown name 'x'"),
        (GOOD + "raise RuntimeError('boom')\n", r"space.py:\d+: RuntimeError: boom"),
    ],
)
def test_bad_space_is_one_line_naming_file_and_setting(tmp_path, body, message):
    with pytest.raises(SpaceError, match=message) as info:
        load_space(write(tmp_path, body))
    assert str(info.value).startswith(str(tmp_path / "space.py"))
    assert "\n" not in str(info.value)


def test_define_by_run_space_errors_name_the_function(tmp_path):
    body = """
    DATASET = "cifar10"
    MODEL = "vgg7"
    def space(trial):
        trial.suggest_float("lr", 0.5, 0.1)
    """
    with pytest.raises(SpaceError, match=r"space\(trial\): ValueError"):
        load_space(write(tmp_path, body))


def test_define_by_run_parameters_are_checked_too(tmp_path):
    body = """
    DATASET = "cifar10"
    MODEL = "vgg7"
    def space(trial):
        trial.suggest_categorical("scheduler", ["cosine", "triangle"])
    """
    with pytest.raises(SpaceError, match="scheduler: unknown 'triangle'"):
        load_space(write(tmp_path, body))


def test_missing_and_non_python_files(tmp_path):
    with pytest.raises(SpaceError, match="no such space file"):
        load_space(tmp_path / "nope.py")
    with pytest.raises(SpaceError, match="a space file is a Python file"):
        load_space(write(tmp_path, "DATASET: cifar10", "space.yaml"))


def test_unknown_override_setting(tmp_path):
    with pytest.raises(SpaceError, match="--set MAX_EPOCH: unknown setting"):
        load_space(write(tmp_path, GOOD), {"MAX_EPOCH": 3})


@pytest.mark.parametrize(("text", "seconds"), [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("60", 60)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{bad}"], "bad.py:2: syntax error"),
        (["{good}", "--num-samples", "0"], "--num-samples: must be an integer >= 1, got '0'"),
        (["{good}", "--num-samples", "abc"], "--num-samples: must be an integer >= 1, got 'abc'"),
        (["{good}", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["{good}", "--max-epochs", "-1"], "--max-epochs: must be an integer >= 1, got '-1'"),
        (["{good}", "--set", "lr"], "--set 'lr': expected key=value"),
        (["{good}", "--time-budget", "soon"], "TIME_BUDGET='soon'"),
        (["{good}", "--cpus-per-trial", "0.5"], "CPUS_PER_TRIAL=0.5"),
        (["{good}", "--resume", "--name", "nope"], "--resume nope: no such search"),
    ],
)
def test_cli_rejects_bad_input_before_starting_anything(tmp_path, args, message, cli_exit, monkeypatch):
    good = write(tmp_path, GOOD)
    bad = write(tmp_path, "DATASET = 'cifar10'\nSPACE = {\n", "bad.py")
    argv = [a.format(good=good, bad=bad) for a in args]
    monkeypatch.chdir(tmp_path)
    code, _, err = cli_exit(run_main, argv)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()  # no MLflow run
    assert not (tmp_path / "runs").exists()  # no Ray, no Tune state


def test_resume_refuses_a_changed_space_file(tmp_path, cli_exit, monkeypatch):
    space = write(tmp_path, GOOD)
    state = tmp_path / "runs" / "old" / "search.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"space_path": str(space), "space_sha": "0" * 16, "overrides": {}, "smoke": False}))
    monkeypatch.chdir(tmp_path)
    code, _, err = cli_exit(run_main, [space, "--resume", "--name", "old"])
    assert code == 2
    assert f"--resume old: it searched {space} as it was then; {space} has changed" in err


@pytest.mark.parametrize("setting", ["MAX_EPOCHS = -1", "NUM_SAMPLES = 0"])
def test_a_smoke_run_checks_the_files_own_settings_that_smoke_replaces(tmp_path, setting):
    """--smoke is how a space file gets tried: a setting the real run would refuse must not pass unseen."""
    with pytest.raises(SpaceError, match=setting.split()[0]):
        load_space(write(tmp_path, GOOD + setting + "\n"), smoke=True)


def test_a_fixed_value_wins_over_start_with(tmp_path):
    """--set or --smoke fixing a parameter that START_WITH gives was refused ("must give every searched parameter")."""
    space = load_space(write(tmp_path, GOOD + "START_WITH = [{'lr': 0.05, 'optimizer': 'sgd'}]\n"), {"lr": 0.01})
    assert space.start_with() == [{"optimizer": "sgd"}]
