"""search.narrow and the summary's importances: which knobs mattered, and the space file of a better next search.

Fast tests on in-memory studies of known structure (one parameter decides the score, the others are noise), and one
slow end-to-end: a search, then a second one on the narrowed file it wrote, warm-started from the first.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from search import narrow
from search.narrow import NARROWED_FILE, write_narrowed
from search.report import MIN_PLOT_TRIALS, format_summary, importances
from search.searcher import warm_trials
from search.space import distributions, load_space, read_space

SPACE_FILE = '''
"""A test space: lr decides the score, the rest is noise."""

from ray import tune

DATASET = "fashion_mnist"
MODEL = "vgg7"
MAX_EPOCHS = 3  # kept as it is in the narrowed file
NUM_SAMPLES = 7
FIXED = {"augment": False, "fc1": 32}
START_WITH = [{"lr": 0.1, "dropout": 0.1, "width1": 8, "batch_size": 64, "warmup_epochs": 0}]

SPACE = {
    "lr": tune.loguniform(1e-4, 1.0),
    "dropout": tune.uniform(0.0, 0.5),
    "width1": tune.choice([8, 16]),
    "batch_size": tune.choice([64, 128]),
    "warmup_epochs": tune.randint(0, 3),
}
'''
BEST_LR = 0.01  # the score peaks here


def space_of(tmp_path: Path, text: str = SPACE_FILE):
    path = tmp_path / "space.py"
    path.write_text(textwrap.dedent(text))
    return read_space(path)


def lr_study(space, n: int = 40, seed: int = 0) -> optuna.Study:
    """`n` random trials whose val_acc depends on lr alone (peaking at BEST_LR), plus a little noise of their own."""
    dists = distributions(space)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    for i in range(n):
        trial = study.ask(dists)
        score = 0.9 - 0.2 * abs(math.log10(trial.params["lr"] / BEST_LR)) + 0.001 * (i % 3)
        study.tell(trial, score)
    return study


def summary_of(space, study) -> dict:
    best = study.best_trial
    return {"importance": importances(study, space.settings), "best_config": dict(best.params),
            "best_trial": f"t{best.number}"}  # fmt: skip


def test_the_parameter_that_decides_ranks_first_and_the_noise_is_fixed_at_the_winners_values(tmp_path):
    space = space_of(tmp_path)
    study = lr_study(space)
    summary = summary_of(space, study)
    found = summary["importance"]
    assert found["evaluator"] == "PED-ANOVA" and found["trials"] == 40 and found["top"] == 4
    assert next(iter(found["params"])) == "lr" and found["params"]["lr"] > 0.5
    assert math.isclose(sum(found["params"].values()), 1.0, abs_tol=1e-3)
    searched, fixed = narrow.narrow(space, study, found, summary["best_config"])
    assert list(searched) == ["lr"]
    assert fixed == {k: v for k, v in study.best_trial.params.items() if k != "lr"}


def test_the_range_is_cut_around_the_top_trials_and_a_log_range_stays_log(tmp_path):
    space = space_of(tmp_path)
    study = lr_study(space)
    summary = summary_of(space, study)
    folder = tmp_path / "search"
    written = write_narrowed(str(folder), "first", space, study, summary)
    narrowed = read_space(folder / NARROWED_FILE)
    lr = distributions(narrowed)["lr"]
    assert lr.log and 1e-4 <= lr.low < lr.high <= 1.0
    top = sorted(study.get_trials(), key=lambda t: t.value, reverse=True)[:4]
    assert all(lr.low <= t.params["lr"] <= lr.high for t in top)
    assert lr.low <= BEST_LR <= lr.high
    assert math.log(lr.high / lr.low) < 0.5 * math.log(1.0 / 1e-4)  # less than half the old range, on a log scale
    assert written["searched"] == ["lr"] and set(written["fixed"]) == {"dropout", "width1", "batch_size",
                                                                        "warmup_epochs"}  # fmt: skip


def test_the_narrowed_file_loads_keeps_the_other_settings_and_runs_the_winner(tmp_path):
    space = space_of(tmp_path)
    study = lr_study(space)
    summary = summary_of(space, study)
    write_narrowed(str(tmp_path / "search"), "first", space, study, summary)
    narrowed = load_space(tmp_path / "search" / NARROWED_FILE)  # everything a search checks before it starts
    assert narrowed.settings.MAX_EPOCHS == 3 and narrowed.settings.NUM_SAMPLES == 7
    assert narrowed.settings.START_WITH == []
    winner = study.best_trial.params
    assert narrowed.fixed == {"augment": False, "fc1": 32, **{k: v for k, v in winner.items() if k != "lr"}}
    assert list(narrowed.params) == ["lr"]
    # --warm-start keeps the earlier trials that fit: the winner among them, the noise's other values not
    kept = warm_trials(study, narrowed)
    assert winner["lr"] in [t.params["lr"] for t in kept]
    assert all(t.params == {"lr": t.params["lr"]} for t in kept)


def test_every_kind_of_range_is_cut_inside_the_old_one_on_its_grid():
    values = {
        "int": (IntDistribution(1, 64), [20, 24]),
        "int_step": (IntDistribution(0, 100, step=10), [33]),
        "int_log": (IntDistribution(1, 1024, log=True), [30, 40]),
        "float_step": (FloatDistribution(0.0, 1.0, step=0.05), [0.35, 0.45]),
        "float_edge": (FloatDistribution(0.0, 0.5), [0.0, 0.01]),
        "choice": (CategoricalDistribution(["a", "b", "c"]), ["c", "a"]),
    }
    made = {k: narrow._sampler(d, v) for k, (d, v) in values.items()}
    assert made == {
        "int": "tune.randint(13, 32)",  # 20..24 widened by 6.3 each way, then inclusive 13..31
        "int_step": "tune.qrandint(20, 50, 10)",
        "int_log": "tune.lograndint(15, 81)",
        "float_step": "tune.quniform(0.25, 0.55, 0.05)",
        "float_edge": "tune.uniform(0.0, 0.06)",  # clipped at the old low end
        "choice": "tune.choice(['a', 'c'])",
    }
    assert narrow._sampler(CategoricalDistribution([16, 32]), [32, 32]) == (32,)  # one value left: fixed


def test_fewer_trials_than_the_evaluator_needs_is_one_line_and_no_file(tmp_path):
    space = space_of(tmp_path)
    study = lr_study(space, n=MIN_PLOT_TRIALS)  # 5 trials of 5 parameters: importance needs 6
    summary = summary_of(space, study)
    assert summary["importance"] == {"skipped": "5 completed trials; it needs 6 (more than the 5 searched parameters)"}
    summary["narrowed"] = write_narrowed(str(tmp_path / "search"), "first", space, study, summary)
    assert summary["narrowed"] == {"skipped": "no importances to narrow it by"}
    assert not (tmp_path / "search").exists()
    lines = _importance_lines(summary)
    assert lines == [
        "importance  not computed: 5 completed trials; it needs 6 (more than the 5 searched parameters)",
        "narrowed    not written: no importances to narrow it by",
    ]


def test_a_define_by_run_space_is_one_line_saying_it_cannot_be_narrowed(tmp_path):
    space = space_of(tmp_path, SPACE_FILE.replace("SPACE = {", "def space(trial):\n    trial.suggest_float('lr', "
                                                  "1e-4, 1.0, log=True)\n\n\n_UNUSED = {"))  # fmt: skip
    study = optuna.create_study(direction="maximize")
    for i in range(10):
        trial = study.ask()
        study.tell(trial, space.params(trial) or i / 10)
    summary = summary_of(space, study)
    assert summary["importance"]["params"] == {"lr": 1.0}
    assert write_narrowed(str(tmp_path / "search"), "first", space, study, summary) == {
        "skipped": "space(trial) is define-by-run; only a SPACE dict of ray.tune samplers can be narrowed"
    }
    assert not (tmp_path / "search").exists()


def test_a_multi_objective_search_ranks_by_its_metric(tmp_path):
    space = space_of(tmp_path, SPACE_FILE.replace("NUM_SAMPLES = 7", 'OBJECTIVES = {"val_acc": "max", "macs": "min"}'))
    single = lr_study(space)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for t in single.trials:  # macs from dropout alone: the front's other end, not what val_acc needs
        study.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                                  values=[t.value, t.params["dropout"]]))  # fmt: skip
    found = importances(study, space.settings)
    assert next(iter(found["params"])) == "lr"


def test_the_summary_prints_the_importances_and_the_narrowed_file():
    summary = {
        "importance": {"evaluator": "PED-ANOVA", "trials": 12, "top": 3, "params": {"lr": 0.7, "dropout": 0.3}},
        "narrowed": {"path": "runs/a/narrowed_space.py", "search": "a", "searched": ["lr"], "fixed": {"dropout": 0.1}},
    }
    assert _importance_lines(summary) == [
        "importance  lr 0.70  dropout 0.30 (PED-ANOVA: reaching the top 3 of 12 completed trials)",
        "narrowed    runs/a/narrowed_space.py (searches lr; fixes 1 at the winner's values): "
        "python -m search.run runs/a/narrowed_space.py --warm-start a",
    ]
    on_s3 = {**summary["narrowed"], "path": "s3://b/runs/a/narrowed_space.py"}  # search.run reads local files
    assert _importance_lines({**summary, "narrowed": on_s3})[1].endswith(
        "python -m search.run narrowed_space.py (a copy) --warm-start a"
    )


def _importance_lines(summary: dict) -> list[str]:
    """The summary's importance and narrowed lines, as `format_summary` prints them."""
    base = {
        "best_trial": "t", "best_config": {}, "best_val_acc": 0.9, "test_acc": 0.9, "test_top5": 1.0,
        "outcomes": {"completed": 1}, "epochs_trained": 1, "epochs_if_all_full": 1, "cpu_hours": 0.0,
        "gpu_hours": 0.0, "wall_seconds": 1, "audit": {"rungs": {}, "warning": ""}, "model": "m",
        "best_checkpoint": "c",
    }  # fmt: skip
    return [x for x in format_summary({**base, **summary}).splitlines() if x.startswith(("importance", "narrowed"))]


@pytest.mark.slow  # two whole searches on the session's Ray
def test_a_second_search_runs_on_the_narrowed_file_warm_started_from_the_first(
    smoke_data_dir, local_ray, sqlite_uri, tmp_path, monkeypatch, capsys
):
    from mlflow.tracking import MlflowClient

    from search.run import search

    monkeypatch.chdir(tmp_path)
    space = Path(__file__).parents[1] / "spaces" / "vgg_fashion_mnist.py"
    # one epoch each: every trial completes, enough for PED-ANOVA's 9 (8 searched parameters)
    sets = {"NUM_SAMPLES": 10, "MAX_EPOCHS": 1, "AUDIT_FRACTION": 0.0}
    common = {"smoke": True, "data_dir": str(smoke_data_dir), "storage": str(tmp_path / "runs"),
              "tracking_uri": sqlite_uri, "quiet": True}  # fmt: skip
    first = search(str(space), sets=sets, name="first", **common)
    narrowed = first.summary["narrowed"]
    assert narrowed["path"] == str(tmp_path / "runs" / "first" / NARROWED_FILE)
    out = capsys.readouterr().out
    assert f"narrowed    {narrowed['path']} (searches " in out and "importance  " in out
    parent = MlflowClient(sqlite_uri).get_run(first.parent_run_id).data.metrics
    assert {f"importance.{k}" for k in first.summary["importance"]["params"]} <= set(parent)

    second = search(narrowed["path"], sets={"NUM_SAMPLES": 3, "MAX_EPOCHS": 1}, name="second", warm_start="first",
                    **common)  # fmt: skip
    out = capsys.readouterr().out
    assert "warm start: " in out and f"of the 10 trials of first fit {NARROWED_FILE}" in out
    assert second.summary["trials"] == 3
    for key, value in narrowed["fixed"].items():
        assert second.best_config.get(key, value) == value  # fixed, so not searched: never another value
    assert set(second.best_config) == set(narrowed["searched"])
