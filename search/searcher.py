"""The Optuna side of a search: TPE behind Tune's searcher API, told how each trial really ended.

`outcome_of` names how a trial ended from its last result; the searcher tells Optuna the same (a trial ASHA
stopped is PRUNED, a diverged one COMPLETE with a chance-level penalty, a crashed one FAIL), and tracking and the
report use the same words.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from search import record
from search.schedule import outcome_of
from search.space import Space, distributions, load_space
from search.train import TrainConfig

STUDY_NAME = "search"
MAX_REFUSED = 500  # over-budget proposals in a row before a search gives up on MAX_MACS


class OptunaASHA(OptunaSearch):
    """OptunaSearch that tells the study how each trial really ended.

    Stock OptunaSearch tells every trial ASHA stopped as COMPLETE with its early-epoch score, which biases TPE
    toward configs that merely start fast. Here a stopped trial is PRUNED (its per-epoch values are already
    reported as intermediate values, which TPE uses to rank pruned trials), a diverged one COMPLETE with a
    penalty score, and a crashed one FAIL.

    With `max_macs`, a proposal over budget is refused before it trains: told to the study as PRUNED with its
    excess as its `macs` constraint (feasible when <= 0), so TPE learns to keep away, and another is asked for.
    """

    def __init__(self, *args, max_epochs: int, penalty: float, max_macs: float = 0.0,
                 macs_of: Callable[[dict], int] | None = None, **kwargs) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs
        self.penalty = penalty
        self.max_macs, self._macs_of = max_macs, macs_of

    def suggest(self, trial_id: str) -> dict | None:
        for _ in range(MAX_REFUSED):
            config = super().suggest(trial_id)
            if not self.max_macs or not isinstance(config, dict):
                return config
            trial, over = self._ot_trials[trial_id], self._macs_of(config) - self.max_macs
            trial.set_constraint("macs", over)
            if over <= 0:
                return config
            self._ot_study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            del self._ot_trials[trial_id]
        raise RuntimeError(f"MAX_MACS={self.max_macs:.3g}: TPE proposed {MAX_REFUSED} configs over it in a row")

    @property
    def multi_objective(self) -> bool:
        return isinstance(self.metric, list)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Optuna keeps no intermediate values in a multi-objective study: ASHA alone acts on the epochs there
        if result.get("outcome") == "diverged" or trial_id in self._completed_trials or self.multi_objective:
            return
        _report(self._ot_trials[trial_id], result[self.metric], result["epoch"])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        trial, states = self._ot_trials[trial_id], optuna.trial.TrialState
        outcome = outcome_of(result, self.max_epochs, error)
        if outcome in ("completed", "stopped_early") and not self.multi_objective:
            # Tune hands the result that made ASHA stop a trial to on_trial_complete only, not on_trial_result.
            _report(trial, result[self.metric], result["epoch"])
        if outcome == "errored":
            self._ot_study.tell(trial, state=states.FAIL)
        elif outcome == "diverged":
            self._ot_study.tell(trial, self._values(result, self.penalty))
        elif outcome == "stopped_early":
            self._ot_study.tell(trial, state=states.PRUNED)
        else:
            self._ot_study.tell(trial, self._values(result))
        self._completed_trials.add(trial_id)

    def _values(self, result: dict, penalty: float | None = None) -> float | list[float]:
        """What the study is told: the metric and each other objective's value; for a diverged trial, `penalty`
        and the worst value of every other objective, so it lands on no front however cheap it was."""
        if not self.multi_objective:
            return result[self.metric] if penalty is None else penalty
        if penalty is not None:
            return [penalty, *(math.inf if m == "min" else -math.inf for m in self.mode[1:])]
        return [result[m] for m in self.metric]

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    # The space comes from the space file at every start, not from the checkpoint: a define-by-run function
    # from a space file cannot be pickled by reference anyway.
    def save(self, checkpoint_path: str) -> None:
        state = {k: v for k, v in self.__dict__.items() if k not in ("_space", "_macs_of")}
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        # Tune's own searcher state, written by this process's search into its storage: the same trust as
        # Tune's experiment state, which Tune itself unpickles on restore.
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def _report(trial: optuna.Trial, value: float, epoch: int) -> None:
    """An epoch's value to Optuna; one reported again is ignored, without Optuna's warning. A trial resumed from a
    checkpoint before its last epochs reports them again, and the result that made ASHA stop a trial comes twice."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial.report(value, epoch)


class FixedParams:
    """Wraps a define-by-run space so `--set name=value` fixes a parameter it would otherwise suggest."""

    def __init__(self, space: Callable, fixed: dict) -> None:
        self.space, self.fixed = space, fixed

    def __call__(self, trial: optuna.Trial) -> dict | None:
        return self.space(_FixedTrial(trial, self.fixed))


class _FixedTrial:
    def __init__(self, trial: optuna.Trial, fixed: dict) -> None:
        self._trial, self._fixed = trial, fixed

    def __getattr__(self, name: str):
        attr = getattr(self._trial, name)
        if not name.startswith("suggest_"):
            return attr
        return lambda param, *args, **kwargs: (
            self._fixed[param] if param in self._fixed else attr(param, *args, **kwargs)
        )


def warm_trials(previous: optuna.Study, space: Space) -> list[optuna.trial.FrozenTrial]:
    """The finished trials of an earlier search that fit `space`, for TPE to start from.

    A trial fits when each value it searched is within the new space's range for it (or equals what the new space
    fixes it to); values the new space neither searches nor fixes are left out. Trials refused over MAX_MACS never
    trained and are left out too.
    """
    dists, states = distributions(space), optuna.trial.TrialState
    fitting, objectives = [], len(space.settings.objectives)
    for trial in previous.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)):
        if trial.state == states.COMPLETE and len(trial.values) != objectives:
            continue  # scored on other objectives than this search's
        if any(k in space.fixed and v != space.fixed[k] for k, v in trial.params.items()):
            continue
        if any(v > 0 for v in trial.constraints.values()):
            continue  # refused over MAX_MACS: never trained
        params = {k: v for k, v in trial.params.items() if k in dists}
        try:  # create_trial checks every value against its distribution
            fitting.append(optuna.trial.create_trial(
                params=params, distributions={k: dists[k] for k in params}, values=trial.values, state=trial.state,
                intermediate_values=trial.intermediate_values,
            ))  # fmt: skip
        except ValueError:
            continue
    return [t for t in fitting if t.params]


def make_sampler(seed: int) -> optuna.samplers.TPESampler:
    """Seeded multivariate TPE; constant_liar: running trials count as bad guesses, so parallel workers don't all
    sample one spot."""
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True)


def sampler_settings(sampler: optuna.samplers.TPESampler, seed: int) -> dict[str, object]:
    """What shapes the configs a sampler proposes, read from the sampler itself, so that a default a new Optuna
    changes (5.0 changed TPE's) shows in the record. Optuna keeps these private and keeps no seed (only the random
    state it seeded): the seed is the one it was built with."""
    estimator = sampler._parzen_estimator_parameters
    return {
        "sampler": type(sampler).__name__, "sampler.seed": seed, "sampler.multivariate": sampler._multivariate,
        "sampler.constant_liar": sampler._constant_liar, "sampler.n_startup_trials": sampler._n_startup_trials,
        "sampler.n_ei_candidates": sampler._n_ei_candidates, "sampler.group": sampler._group,
        "sampler.prior_weight": estimator.prior_weight, "sampler.consider_endpoints": estimator.consider_endpoints,
    }  # fmt: skip


def make_searcher(space: Space, max_concurrent: int, warm_start: list | None = None) -> ConcurrencyLimiter:
    """`make_sampler`'s TPE, told how trials ended, at most `max_concurrent` at once.

    `warm_start`: trials of an earlier search (`warm_trials`) the study starts with.
    """
    s = space.settings
    sampler = make_sampler(s.SEED)
    base = space.base_config()
    searcher = OptunaASHA(
        # The space goes to the searcher, not to the Tuner's param_space: a searcher that Tune restores from an
        # experiment killed before its first snapshot must still know it.
        space=FixedParams(space.params, space.fixed) if callable(space.params) else distributions(space),
        metric=list(s.OBJECTIVES) or s.METRIC, mode=list(s.OBJECTIVES.values()) or s.MODE,
        sampler=sampler, study_name=STUDY_NAME,
        points_to_evaluate=space.start_with() or None,
        max_epochs=s.MAX_EPOCHS, penalty=space.penalty(),
        max_macs=s.MAX_MACS, macs_of=lambda params: TrainConfig.from_dict({**base, **params}).cost()["macs"],
    )  # fmt: skip
    searcher.study.add_trials(warm_start or [])
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def load_study(experiment_path: str | Path, space: Space | None = None) -> optuna.Study:
    """The Optuna study of a search, as Tune last saved it (trials, states, intermediate values)."""
    if space is None:
        state = record.read_state(experiment_path)
        space = load_space(state.space_path, state.overrides, state.smoke)
    limiter = make_searcher(space, 1)
    with record.local_files(experiment_path, Searcher.CKPT_FILE_TMPL.format("*")) as folder:
        limiter.restore_from_dir(folder)
    return limiter.searcher.study
