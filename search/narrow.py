"""After a search: its space file narrowed to where the best trials lie, for a next search that `--warm-start`
builds on.

The parameters that mattered (a PED-ANOVA share of at least an equal one, `report.importances`) are searched
again on the range the top trials and the winner span, widened at each end by WIDEN of the old range (on a log
scale for a log-scaled one) and kept inside it; a categorical one on the choices they used. The others are fixed
at the winner's values. The new file is the old one's text with a block appended that sets SPACE and FIXED (FIXED
takes a key out of SPACE), so every other setting stays as it was.
"""

from __future__ import annotations

import math
import textwrap
import time

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from search import record
from search.report import plain, ranked_trials, top_count
from search.space import Space, distributions

NARROWED_FILE = "narrowed_space.py"
WIDEN = 0.1  # of the old range, added at each end of the top trials' range: they are few, the optimum lies near


def write_narrowed(folder: str, name: str, space: Space, study: optuna.Study, summary: dict) -> dict:
    """Writes `folder/narrowed_space.py` (a path or URI) and says what it searches and fixes, or, in `skipped`,
    why there is none: a define-by-run space, or no importances.

    Args:
        folder: the search's folder; name: the search's name, for --warm-start.
        summary: `report.summarize`'s, with `importance` and `best_config`.
    """
    if callable(space.params):
        return {"skipped": "space(trial) is define-by-run; only a SPACE dict of ray.tune samplers can be narrowed"}
    if "params" not in summary.get("importance", {}):
        return {"skipped": "no importances to narrow it by"}
    searched, fixed = narrow(space, study, summary["importance"], summary["best_config"])
    path = record.join(folder, NARROWED_FILE)
    record.write_text(path, narrowed_source(space, name, summary, searched, fixed))
    return {"path": path, "search": name, "searched": list(searched), "fixed": fixed}


def narrow(space: Space, study: optuna.Study, importance: dict, winner: dict) -> tuple[dict[str, str], dict]:
    """The important parameters' new samplers (as source text, `tune.loguniform(0.05, 0.2)`; "" for one kept as
    it was) and the others' fixed values, the winner's."""
    dists, shares = distributions(space), importance["params"]
    ranked = ranked_trials(study, space.settings)
    top = ranked[: top_count(len(ranked))]
    searched, fixed = {}, {}
    for key, dist in dists.items():
        if shares.get(key, 0.0) < 1 / len(dists):  # less than an equal share: noise, at a search's few trials
            if key in winner:
                fixed[key] = plain(winner[key])
            continue
        values = [t.params[key] for t in top if key in t.params] + ([plain(winner[key])] if key in winner else [])
        sampler = _sampler(dist, values)
        if isinstance(sampler, str):
            searched[key] = sampler
        else:  # the top trials agree on one value
            fixed[key] = sampler[0]
    if not searched:  # the top trials agree on every important value: the most important is searched as it was
        key = next(k for k in shares if k in dists)
        fixed.pop(key, None)
        searched[key] = ""
    return searched, fixed


def _sampler(dist: optuna.distributions.BaseDistribution, values: list) -> str | tuple:
    """A ray.tune sampler's source for `dist` cut to `values` (widened by WIDEN), or (value,) when one is left."""
    if isinstance(dist, CategoricalDistribution):
        used = [c for c in dist.choices if c in values]
        return f"tune.choice({used!r})" if len(used) > 1 else (used[0],)
    scale = (math.log, math.exp) if dist.log else (float, float)
    low, high = scale[0](min(values)), scale[0](max(values))
    pad = WIDEN * (scale[0](dist.high) - scale[0](dist.low))
    low, high = max(dist.low, scale[1](low - pad)), min(dist.high, scale[1](high + pad))
    step = dist.step
    if step:  # onto the old grid, outward: an int's step is 1
        low = dist.low + math.floor(round((low - dist.low) / step, 9)) * step
        high = min(dist.high, dist.low + math.ceil(round((high - dist.low) / step, 9)) * step)
    else:  # three significant digits, outward, for a file a person reads
        low, high = max(dist.low, _round(low, math.floor)), min(dist.high, _round(high, math.ceil))
    if isinstance(dist, IntDistribution):
        low, high = int(low), int(high)
        if low == high:
            return (low,)
        if dist.log:
            return f"tune.lograndint({low}, {high + 1})"  # ray's upper bound is exclusive
        return f"tune.qrandint({low}, {high}, {dist.step})" if dist.step > 1 else f"tune.randint({low}, {high + 1})"
    assert isinstance(dist, FloatDistribution)
    if step:
        low, high = round(low, 12), round(high, 12)
    if low == high:
        return (low,)
    if dist.log:
        return f"tune.loguniform({low!r}, {high!r})"
    return f"tune.quniform({low!r}, {high!r}, {step!r})" if step else f"tune.uniform({low!r}, {high!r})"


def _round(x: float, direction) -> float:
    """`x` to three significant digits, rounded with `direction` (math.floor or math.ceil)."""
    if x == 0:
        return 0.0
    unit = 10.0 ** (math.floor(math.log10(abs(x))) - 2)
    return float(f"{direction(x / unit) * unit:.3g}")


def narrowed_source(space: Space, name: str, summary: dict, searched: dict, fixed: dict) -> str:
    """The space file's own text, with SPACE and FIXED narrowed in a block at its end."""
    importance = summary["importance"]
    shares = ", ".join(f"{k} {v:.2f}" for k, v in importance["params"].items())
    notes = (
        f"narrowed after search {name} ({time.strftime('%Y-%m-%d %H:%M')}) by search.narrow. PED-ANOVA importance, "
        f"reaching the top {importance['top']} of {importance['trials']} completed trials: {shares}. The important "
        f"parameters are searched where those trials and the winner lie (widened by {WIDEN:.0%} of the old range at "
        f"each end); the others are fixed at the winner's ({summary['best_trial']}) values. Run it with  python -m "
        f"search.run {NARROWED_FILE} --warm-start {name}  (and the flags that search had)."
    )
    lines = [
        "",
        "",
        *[f"# {text}" for text in textwrap.wrap(notes, 116, break_on_hyphens=False)],
        "from ray import tune",
        "",
        "FIXED = {",
        *[f"    {k!r}: {plain(v)!r}," for k, v in space.settings.FIXED.items() if k not in fixed],
        *[f"    {k!r}: {v!r},  # importance {importance['params'].get(k, 0.0):.2f}" for k, v in fixed.items()],
        "}",
        "SPACE = {",
        "    **SPACE,  # FIXED takes its keys out of SPACE",
        *[f"    {k!r}: {v},  # importance {importance['params'].get(k, 0.0):.2f}" for k, v in searched.items() if v],
        "}",
        f"START_WITH = []  # the configs it started with are among the trials of {name}, which --warm-start adds",
        "",
    ]
    return space.source.rstrip("\n") + "\n".join(lines)
