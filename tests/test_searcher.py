"""search.searcher: outcomes, and what the Optuna study learns of each way a trial can end (in-memory study)."""

from __future__ import annotations

import optuna
import pytest

from search.schedule import outcome_of
from search.searcher import OptunaASHA, make_searcher, warm_trials
from search.space import load_space
from search.train import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize(
    ("result", "error", "expected"),
    [
        ({"epoch": 10}, False, "completed"),
        ({"epoch": 3}, False, "stopped_early"),
        ({"epoch": 3, "outcome": "diverged"}, False, "diverged"),
        ({"epoch": 10}, True, "errored"),
        (None, False, "stopped_early"),
    ],
)
def test_outcome_of(result, error, expected):
    assert outcome_of(result, 10, error) == expected


def test_the_study_learns_how_each_trial_ended():
    space = {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
    searcher = OptunaASHA(space=space, metric="val_acc", mode="max", max_epochs=4, penalty=0.1,
                          sampler=optuna.samplers.RandomSampler(seed=0))  # fmt: skip
    for trial_id in "abcd":
        assert searcher.suggest(trial_id) is not None
    for epoch in (1, 2):
        for trial_id in "abcd":
            searcher.on_trial_result(trial_id, {"val_acc": 0.1 * epoch, "epoch": epoch})
    searcher.on_trial_complete("a", {"val_acc": 0.9, "epoch": 4})  # ran in full
    searcher.on_trial_complete("b", {"val_acc": 0.3, "epoch": 3})  # ASHA stopped it at 3
    searcher.on_trial_complete("c", {"val_acc": float("nan"), "epoch": 2, "outcome": "diverged"})
    searcher.on_trial_complete("d", None, error=True)
    searcher.on_trial_complete("d", None, error=True)  # told twice: ignored
    trials = searcher.study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE", "FAIL"]
    assert trials[0].value == 0.9 and trials[2].value == 0.1  # the diverged one: the chance-level penalty
    assert trials[1].intermediate_values == {
        1: pytest.approx(0.1),
        2: pytest.approx(0.2),
        3: pytest.approx(0.3),
    }  # the stopping result


def test_a_multi_objective_study_learns_each_objective_and_how_each_trial_ended():
    space = {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
    sampler = optuna.samplers.TPESampler(seed=0, multivariate=True, constant_liar=True)
    searcher = OptunaASHA(space=space, metric=["val_acc", "macs"], mode=["max", "min"], max_epochs=4, penalty=0.1,
                          sampler=sampler)  # fmt: skip
    for trial_id in "abcd":
        assert searcher.suggest(trial_id) is not None
        searcher.on_trial_result(trial_id, {"val_acc": 0.2, "epoch": 1, "macs": 5e6})  # no intermediate values here
    searcher.on_trial_complete("a", {"val_acc": 0.9, "epoch": 4, "macs": 8e6})
    searcher.on_trial_complete("b", {"val_acc": 0.3, "epoch": 3, "macs": 2e6})  # ASHA stopped it
    searcher.on_trial_complete("c", {"val_acc": float("nan"), "epoch": 2, "outcome": "diverged", "macs": 1e6})
    searcher.on_trial_complete("d", {"val_acc": 0.8, "epoch": 4, "macs": 4e6})
    trials = searcher.study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"]
    assert trials[0].values == [0.9, 8e6] and trials[3].values == [0.8, 4e6]
    assert trials[2].values == [0.1, float("inf")]  # diverged: worst on every objective, however cheap
    assert {t.number for t in searcher.study.best_trials} == {0, 3}  # the front: no diverged trial on it
    assert searcher.suggest("e") is not None  # TPE proposes from the front


def test_max_macs_refuses_over_budget_proposals_before_they_train(tmp_path):
    path = tmp_path / "budget.py"
    path.write_text(
        "from ray import tune\nDATASET = 'cifar10'\nMODEL = 'vgg7'\nMAX_MACS = 60e6\nSEED = 3\n"
        "SPACE = {'width1': tune.choice([16, 64]), 'width2': tune.choice([32, 128]),\n"
        "         'lr': tune.loguniform(1e-3, 0.1)}\n"
    )
    space = load_space(path)
    searcher = make_searcher(space, max_concurrent=12)
    configs = [searcher.suggest(f"t{i}") for i in range(12)]
    macs = [TrainConfig.from_dict({**space.base_config(), **c}).cost()["macs"] for c in configs]
    assert all(m <= 60e6 for m in macs), macs
    trials = searcher.searcher.study.get_trials(deepcopy=False)
    refused = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert refused and all(t.constraints["macs"] > 0 for t in refused)  # what TPE learns to keep away from
    assert all(t.constraints["macs"] <= 0 for t in trials if t.state == optuna.trial.TrialState.RUNNING)


def test_a_warm_start_keeps_the_earlier_trials_that_fit_the_new_space(tmp_path):
    path = tmp_path / "narrowed.py"
    path.write_text(
        "from ray import tune\nDATASET = 'cifar10'\nMODEL = 'vgg7'\n"
        "FIXED = {'optimizer': 'sgd'}\nSPACE = {'lr': tune.loguniform(1e-2, 0.1), 'width1': tune.choice([16, 32])}\n"
    )
    space = load_space(path)
    wide = {
        "lr": optuna.distributions.FloatDistribution(1e-3, 0.1, log=True),
        "width1": optuna.distributions.CategoricalDistribution([16, 32, 64]),
        "optimizer": optuna.distributions.CategoricalDistribution(["sgd", "adamw"]),
    }
    previous = optuna.create_study(direction="maximize")
    states = optuna.trial.TrialState
    for lr, width1, optimizer, state in [
        (0.05, 32, "sgd", states.COMPLETE),  # fits
        (0.02, 16, "sgd", states.PRUNED),  # fits, with its learning curve
        (0.002, 16, "sgd", states.COMPLETE),  # lr below the new range
        (0.05, 64, "sgd", states.COMPLETE),  # width1=64 no longer a choice
        (0.05, 32, "adamw", states.COMPLETE),  # the new space fixes sgd
        (0.05, 32, "sgd", states.FAIL),  # crashed: nothing to learn
    ]:
        previous.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "width1": width1, "optimizer": optimizer}, distributions=wide, state=state,
            value=0.5 if state == states.COMPLETE else None, intermediate_values={1: 0.3},
        ))  # fmt: skip
    warm = warm_trials(previous, space)
    assert [(t.params, t.state) for t in warm] == [
        ({"lr": 0.05, "width1": 32}, states.COMPLETE),
        ({"lr": 0.02, "width1": 16}, states.PRUNED),
    ]
    assert warm[1].intermediate_values == {1: 0.3}
    study = make_searcher(space, 1, warm).searcher.study
    assert len(study.trials) == 2  # TPE starts from them
