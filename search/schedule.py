"""The arithmetic of a search's schedule, with nothing to import: how trials end (`outcome_of`), ASHA's rungs and
the epochs it is expected to train, the audit's controls, and when PATIENCE says a search has converged.

Tune's wiring (`search.tuner`), the live table (`search.progress`), the record's read-back (`search.tracking`)
and the summary (`search.report`) all stand on these, not on each other.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from search.space import Settings


def outcome_of(result: dict | None, max_epochs: int, error: bool = False) -> str:
    """completed, stopped_early (ASHA or the time budget), diverged or errored."""
    if error:
        return "errored"
    if not result:
        return "stopped_early"
    if result.get("outcome") == "diverged":
        return "diverged"
    return "completed" if result.get("epoch", 0) >= max_epochs else "stopped_early"


def is_control(seed: int, trial_id: str, fraction: float) -> bool:
    """Whether a trial is one of the audit's controls: a seeded coin flip per trial id, the same everywhere."""
    return fraction > 0 and random.Random(f"{seed}:{trial_id}").random() < fraction


def rung_epochs(settings: Settings) -> list[int]:
    """The epochs at which ASHA compares trials."""
    epochs, rung = [], settings.GRACE_PERIOD
    while rung < settings.MAX_EPOCHS:
        epochs.append(rung)
        rung *= settings.REDUCTION_FACTOR
    return epochs


def checkpoint_due(epoch: int, last_epoch: int, seconds_since: float, every: float) -> bool:
    """Whether a trial checkpoints after this epoch: at its last (the model a winner is), and otherwise once `every`
    seconds have passed since its last checkpoint, or since it started (0: every epoch).

    Tune snapshots the whole experiment, O(trials), each time a trial has made `num_to_keep` (2) checkpoints since
    the last snapshot; with a checkpoint every epoch that was most of the driver's work in a search of many trials
    of short epochs (issue 19). Checkpoints at ASHA's rungs would keep that: a trial's rungs follow each other
    within seconds there. A trial ASHA stops keeps the model of its last checkpoint, not of its last epoch.
    """
    return epoch >= last_epoch or seconds_since >= every


def expected_epochs(settings: Settings) -> float:
    """Epochs a trial runs on average under ASHA: all to the first rung, 1/REDUCTION_FACTOR past each next one.

    The audit's controls (AUDIT_FRACTION of the trials) always run in full.
    """
    s, epochs, done = settings, 0.0, 0
    for k, rung in enumerate([*rung_epochs(s), s.MAX_EPOCHS]):
        epochs += (rung - done) / s.REDUCTION_FACTOR**k
        done = rung
    return s.AUDIT_FRACTION * s.MAX_EPOCHS + (1 - s.AUDIT_FRACTION) * epochs


def converged_after(values: list[float | None], mode: str, patience: int, min_delta: float) -> int | None:
    """How many trials (in the order they ended) it took for `patience` in a row not to beat the best by more
    than `min_delta`; None if that never happened. A trial without the metric (crashed first) does not beat it."""
    best, since = None, 0
    for i, value in enumerate(values, 1):
        gain = None if value is None or best is None else (value - best if mode == "max" else best - value)
        if value is not None and math.isfinite(value) and (best is None or gain > min_delta):
            best, since = value, 0
        else:
            since += 1
        if patience and since >= patience:
            return i
    return None
