"""search.progress: what a search is expected to cost under ASHA, and the live table."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from ray import tune
from ray.tune.experiment import Trial
from tune_fakes import one_or_two_epochs, one_result

from search.progress import TABLE_PARAMETERS, SearchReporter, cost_line
from search.schedule import checkpoint_due, expected_epochs, rung_epochs
from search.space import Settings, distributions, load_space

ROOT = Path(__file__).resolve().parents[1]


def settings(**values) -> Settings:
    return Settings.check("space.py", {"DATASET": "cifar10", "MODEL": "vgg7", **values})


def test_rungs_and_expected_epochs_follow_asha():
    s = settings(MAX_EPOCHS=27, GRACE_PERIOD=1, REDUCTION_FACTOR=3, AUDIT_FRACTION=0.0)
    assert rung_epochs(s) == [1, 3, 9]
    # all reach epoch 1, a third run to 3, a ninth to 9, a 27th to 27
    assert expected_epochs(s) == pytest.approx(1 + 2 / 3 + 6 / 9 + 18 / 27)
    audited = settings(MAX_EPOCHS=27, GRACE_PERIOD=1, REDUCTION_FACTOR=3, AUDIT_FRACTION=0.5)
    assert expected_epochs(audited) == pytest.approx(0.5 * 27 + 0.5 * expected_epochs(s))


def test_a_trial_checkpoints_at_its_last_epoch_and_otherwise_every_checkpoint_seconds():
    last = 27
    assert [e for e in range(1, last + 1) if checkpoint_due(e, last, 5.0, 60.0)] == [27]  # none at ASHA's rungs
    assert all(checkpoint_due(e, last, 60.0, 60.0) for e in range(1, last + 1))  # the time has come
    assert all(checkpoint_due(e, last, 0.0, 0.0) for e in range(1, last + 1))  # 0: every epoch
    assert checkpoint_due(30, last, 0.0, 60.0)  # a trial given more epochs than the search's last: its end


def test_cost_line_names_the_budget():
    line = cost_line(settings(NUM_SAMPLES=40, MAX_EPOCHS=30, TIME_BUDGET="2h"), 4)
    assert "40 trials x up to 30 epochs = at most 1200 epochs" in line and "4 trials at once" in line
    assert "time budget 2h" in line


def test_the_live_table_shows_how_ended_trials_ended_and_where_the_search_stands(tmp_path, capsys, local_ray):
    """The table said `outcome: running` for trials that had TERMINATED; two trials that ended before their first
    result (a time budget stops trials that just started) ended a finished search with a TypeError in its sort;
    a second search in one process (a notebook's re-run cell) showed a table without rows; Ray's "Current best
    trial" line printed every float of the config unrounded."""
    tune.Tuner(one_result, run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()  # the first run
    s = settings(NUM_SAMPLES=4, MAX_EPOCHS=2, GRACE_PERIOD=1, REDUCTION_FACTOR=2)
    tune.Tuner(
        one_or_two_epochs,
        # the second ends after epoch 1 (stopped early), the last two before reporting anything
        param_space={"epochs": tune.grid_search([2, 1, 0, 0]), "dropout": 0.23073968112646592},
        tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path), progress_reporter=SearchReporter(s, ["epochs", "dropout"], 1), verbose=1
        ),  # fmt: skip
    ).fit()
    out = capsys.readouterr().out
    assert "0.23073968" not in out and "0.23074" in out, out
    table = out.split("Trial status")[-1]  # the last table, after every trial ended
    assert "completed" in table and "stopped_early" in table and "running" not in table.split("outcome")[-1]
    assert re.search(r"trials: 4 done, 0 running, 0 queued \| best val_acc 0\.2000 \(trial \w+\) \| elapsed ", table)
    rows = [row for row in table.split("Number of trials:")[-1].splitlines() if row.startswith("| one_or_two")]
    assert len(rows) == 4 and "0.2" in rows[0] and "0.1" in rows[1]  # best first, the ones without a result last


def test_the_time_left_is_never_more_than_the_time_budget_leaves():
    """A 17-minute budget said "about 19m40s left" nine minutes in: the estimate ignored the budget."""
    trial = Trial("one_result", stub=True)
    trial.set_status(Trial.RUNNING)
    trial.update_last_result({"epoch": 1, "epoch_seconds": 600.0, "val_acc": 0.5})
    unbounded = SearchReporter(settings(NUM_SAMPLES=4, MAX_EPOCHS=3, GRACE_PERIOD=3), ["lr"], 1)
    assert unbounded.status_line([trial]).endswith("| about 1h50m left")  # (3 queued x 3 epochs + 2) x 10 min
    budget = SearchReporter(settings(NUM_SAMPLES=4, MAX_EPOCHS=3, GRACE_PERIOD=3, TIME_BUDGET="1h"), ["lr"], 1)
    assert re.search(r"\| 59m5\ds left of the time budget$", budget.status_line([trial]))
    plenty = SearchReporter(settings(NUM_SAMPLES=4, MAX_EPOCHS=3, GRACE_PERIOD=3, TIME_BUDGET="5h"), ["lr"], 1)
    assert plenty.status_line([trial]).endswith("| about 1h50m left")
    assert budget.status_line([]).endswith("left of the time budget")  # before any epoch is timed


def test_the_main_spaces_table_fits_a_wide_terminal(tmp_path, capsys, local_ray):
    """The main space is define-by-run, so no parameter was named for the table and Ray showed every key of the
    config: 10 parameter columns, 234 characters. Its smoke run fixes the widths: they are no columns then."""
    space = load_space(ROOT / "spaces" / "vgg_cifar100.py", smoke=True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    config = {**study.ask(distributions(space)).params, **space.fixed}  # small floats printed at Ray's length
    searched = [name for name in distributions(space) if name not in space.fixed]
    tune.Tuner(
        one_result,
        param_space={**config, "weight_decay": 0.000205476, "lr": 0.0398069},
        run_config=tune.RunConfig(
            storage_path=str(tmp_path), progress_reporter=SearchReporter.for_space(space, 1), verbose=1
        ),
    ).fit()
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert table and max(len(line) for line in table) <= 180, "\n".join(table)  # a search: 164 with MACs
    columns = [c.strip() for c in table[0].split("|")]
    assert [c for c in columns if c in config] == searched[:TABLE_PARAMETERS], columns
