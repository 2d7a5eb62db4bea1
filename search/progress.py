"""What a person sees while a search runs: its cost up front, then a live table with where it stands.

The table is Ray's CLIReporter with the trials' outcome as they end (not as they last reported) and one more
line: trials done, running and queued, the best so far, the elapsed time, and an estimate of the time left from
the measured epoch times and the epochs ASHA is expected to run.
"""

from __future__ import annotations

import time

from ray import tune
from ray.tune.experiment import Trial
from ray.widgets.util import in_notebook

from search.schedule import expected_epochs, outcome_of
from search.space import Settings, Space, distributions


def cost_line(settings: Settings, concurrency: int) -> str:
    """The search's budget before it starts, in trials and epochs."""
    s = settings
    expected = expected_epochs(s) * s.NUM_SAMPLES
    return (
        f"budget: {s.NUM_SAMPLES} trials x up to {s.MAX_EPOCHS} epochs = at most {s.NUM_SAMPLES * s.MAX_EPOCHS} "
        f"epochs; ASHA expects about {expected:.0f}; {concurrency} trials at once"
        # what a trial holds is what it is charged: the summary's GPU-hours are trial-hours x GPUS_PER_TRIAL
        + (f", {s.GPUS_PER_TRIAL:g} GPU each ({concurrency * s.GPUS_PER_TRIAL:g} GPUs)" if s.GPUS_PER_TRIAL else "")
        + (f"; time budget {s.TIME_BUDGET}" if s.TIME_BUDGET else "")
        + "; the live table estimates hours once the first epochs are timed"
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


TABLE_PARAMETERS = 6  # parameter columns of the live table: with the metrics, about 165 characters


class SearchReporter(tune.CLIReporter):
    """Ray's table plus a status line; ended trials show how they ended."""

    def __init__(self, settings: Settings, searched: list[str], concurrency: int) -> None:
        s = settings
        super().__init__(
            metric_columns={"epoch": "epoch", s.METRIC: s.METRIC, "macs": "MACs", "outcome": "outcome"},
            parameter_columns=searched[:TABLE_PARAMETERS] or None,
            # sorted here, not by Ray: its sort fails on two trials that ended before their first result (a time
            # budget stopping trials that had just started), which ended a finished search with a TypeError
            # no metric/mode: Ray's "Current best trial" line prints every float unrounded; the status line names
            # the best trial and the table, best first, shows its params
            max_report_frequency=30, sort_by_metric=False,
            # Ray decides from its global verbosity when the reporter is built, which an earlier run in the same
            # process (a notebook's first search, the final retrains) leaves too low for rows: the table was empty
            print_intermediate_tables=True,
        )  # fmt: skip
        self.settings, self.concurrency, self.start = settings, concurrency, time.time()
        self._table = None  # in a notebook: the one output that each report updates (IPython's DisplayHandle)

    @classmethod
    def for_space(cls, space: Space, concurrency: int) -> SearchReporter:
        """The table of a space's search: its first six searched parameters as columns, a define-by-run space's
        too (with none named, Ray shows every key of the config: the main space's table was 234 characters wide),
        less those fixed (FIXED, --set, --smoke)."""
        searched = [name for name in distributions(space) if name not in space.fixed]
        return cls(space.settings, searched[:TABLE_PARAMETERS], concurrency)

    def _print(self, msg: str) -> None:
        """In a terminal Ray prints each table below the last; a notebook cell would then grow a table every 30 s,
        so there the first table is displayed and each later one replaces it, leaving the cell's other lines."""
        if not in_notebook():
            return super()._print(msg)
        from IPython.display import Pretty, display  # a notebook's kernel has IPython: no dependency of ours

        if self._table is None:
            self._table = display(Pretty(msg), display_id=True)
        else:
            self._table.update(Pretty(msg))

    def report(self, trials: list[Trial], done: bool, *sys_info: str) -> None:
        for trial in trials:
            if trial.status in (Trial.TERMINATED, Trial.ERROR) and trial.last_result:
                trial.last_result["outcome"] = outcome_of(
                    trial.last_result, self.settings.MAX_EPOCHS, trial.status == Trial.ERROR
                )
        super().report(sorted(trials, key=self._rank), done, *sys_info, self.status_line(trials))

    def _rank(self, trial: Trial) -> tuple[bool, float]:
        """Best first; trials without the metric yet last."""
        value = (trial.last_result or {}).get(self.settings.METRIC)
        if value is None or value != value:  # none yet, or NaN
            return True, 0.0
        return False, -value if self.settings.MODE == "max" else value

    def status_line(self, trials: list[Trial]) -> str:
        s = self.settings
        ended = [t for t in trials if t.status in (Trial.TERMINATED, Trial.ERROR)]
        running = [t for t in trials if t.status == Trial.RUNNING]
        queued = s.NUM_SAMPLES - len(ended) - len(running)
        scored = [t for t in trials if t.last_result and s.METRIC in t.last_result]
        best = min(scored, key=self._rank) if scored else None
        line = f"trials: {len(ended)} done, {len(running)} running, {queued} queued"
        line += f" | best {s.METRIC} {best.last_result[s.METRIC]:.4f} (trial {best.trial_id})" if best else ""
        elapsed = time.time() - self.start
        line += f" | elapsed {_duration(elapsed)}"
        times = [t.last_result["epoch_seconds"] for t in trials if t.last_result and "epoch_seconds" in t.last_result]
        left = None
        if times:
            per_epoch = sorted(times)[len(times) // 2]
            expected = expected_epochs(s)
            epochs = queued * expected + sum(max(0.0, expected - t.last_result.get("epoch", 0)) for t in running)
            left = epochs * per_epoch / max(1, self.concurrency)
        if s.time_budget_s is not None and (left is None or s.time_budget_s - elapsed < left):
            return line + f" | {_duration(max(0.0, s.time_budget_s - elapsed))} left of the time budget"
        return line + (f" | about {_duration(left)} left" if left is not None else "")
