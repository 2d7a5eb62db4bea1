"""search.tuner: the audit's control trials, when PATIENCE ends a search; Ctrl-C after a run."""

from __future__ import annotations

import os
import signal

import pytest
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from tune_fakes import one_result, one_result_then_ctrl_c

from search.schedule import converged_after, is_control
from search.tuner import AuditedASHA, fit


def test_control_trials_run_on_where_asha_stops_the_rest_as_asha_would():
    ids = [f"t{i:03d}" for i in range(60)]
    asha = {"time_attr": "epoch", "metric": "val_acc", "mode": "max", "max_t": 9, "grace_period": 1,
            "reduction_factor": 3}  # fmt: skip
    audited, plain = AuditedASHA(seed=0, audit_fraction=0.25, **asha), ASHAScheduler(**asha)
    decisions = {}
    for scheduler in (audited, plain):
        trials = [Trial("trainable", trial_id=i, stub=True) for i in ids]
        for trial in trials:
            scheduler.on_trial_add(None, trial)
        for k, trial in enumerate(trials):  # each worse than the last: ASHA stops most at its first rung
            result = {"epoch": 1, "val_acc": 1 - k / 100, "training_iteration": 1}
            decisions.setdefault(trial.trial_id, []).append(scheduler.on_trial_result(None, trial, result))
    controls = [i for i in ids if is_control(0, i, 0.25)]
    assert 5 < len(controls) < 25  # a seeded random quarter, the same pick in every process
    assert all(decisions[i][0] == TrialScheduler.CONTINUE for i in controls)
    assert any(decisions[i][1] == TrialScheduler.STOP for i in controls)  # ASHA alone would have stopped some
    assert all(decisions[i][0] == decisions[i][1] for i in ids if i not in controls)
    assert not any(is_control(0, i, 0.0) for i in ids) and all(is_control(0, i, 1.0) for i in ids)


@pytest.mark.parametrize(
    ("values", "mode", "patience", "min_delta", "after"),
    [
        ([0.5, 0.6, 0.55, 0.58, 0.59], "max", 3, 0.0, 5),  # 0.6 stands for three trials
        ([0.5, 0.6, 0.55, 0.61, 0.59], "max", 3, 0.0, None),  # 0.61 beat it: the count restarts
        ([0.5, 0.6, 0.605, 0.608], "max", 2, 0.01, 4),  # beating by less than MIN_DELTA does not count
        ([1.0, 0.9, 0.95, 0.97], "min", 2, 0.0, 4),  # val_loss: lower is better
        ([None, 0.4, None, None], "max", 2, 0.0, 4),  # crashed trials do not beat anything
        ([float("nan"), float("nan")], "max", 2, 0.0, 2),
        ([0.5, 0.4, 0.4], "max", 0, 0.0, None),  # 0 = never
    ],
)
def test_a_search_converges_once_patience_trials_in_a_row_do_not_beat_the_best(
    values, mode, patience, min_delta, after
):
    assert converged_after(values, mode, patience, min_delta) == after


def test_fit_leaves_ctrl_c_as_it_found_it(tmp_path, local_ray):
    """Tune leaves its SIGINT handler installed after a run: a Ctrl-C in the final evaluation was swallowed."""
    before = signal.getsignal(signal.SIGINT)
    tuner = tune.Tuner(one_result, run_config=tune.RunConfig(name="x", storage_path=str(tmp_path), verbose=0))
    assert fit(tuner).num_terminated == 1
    assert signal.getsignal(signal.SIGINT) is before


def test_a_ctrl_c_that_tune_caught_is_an_interrupt_though_every_trial_had_ended(tmp_path, local_ray):
    """Tune's handler saves its state on the first Ctrl-C and returns early. When the trials had all ended by then,
    the ResultGrid looked like a whole search: a notebook's stop button pressed then got a summary, not a stop."""
    before = signal.getsignal(signal.SIGINT)
    tuner = tune.Tuner(one_result_then_ctrl_c, param_space={"driver": os.getpid()},
                       run_config=tune.RunConfig(name="x", storage_path=str(tmp_path), verbose=0))  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        fit(tuner)
    assert signal.getsignal(signal.SIGINT) is before
