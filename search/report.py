"""After a search: the trials table, the summary, the early-stopping audit and the plots."""

from __future__ import annotations

import io
import json
import math
import time
import warnings
from pathlib import Path

import matplotlib.figure  # not pyplot: drawing a file must not touch a notebook's backend or figures
import optuna
import pandas as pd
from optuna.trial import TrialState

from search import record
from search.schedule import converged_after, is_control, outcome_of, rung_epochs
from search.space import COST_MODES, METRICS_MODES

MIN_AUDIT_TRIALS = 4  # rank correlations of fewer trials say nothing
# Past this fraction of control trials, early stopping saves little: a search too small for MIN_AUDIT_TRIALS
# controls at this fraction is told so, never advised to run (almost) every trial in full.
MAX_ADVISED_AUDIT_FRACTION = 0.5
# Parallel coordinates of fewer completed trials are a few lines, not a pattern; importances need more completed
# trials than parameters too (`thin_plots`): fANOVA's forest on fewer gave every parameter exactly 1/8.
MIN_PLOT_TRIALS = 5
# PED-ANOVA's importance is that of reaching the top quantile of the completed trials: 10% (Optuna's default), but
# never fewer than this many trials, or one lucky trial decides every parameter's share.
MIN_TOP_TRIALS = 3
COST = tuple(COST_MODES)  # what a trial costs, from its last result
OUTCOME_COLORS = {"completed": "tab:green", "stopped_early": "tab:gray", "diverged": "tab:red", "errored": "black"}
FRONT_COSTS = {"macs": "min", "images_per_second": "max"}  # the fronts the summary reports: compute, training speed


class Figure(matplotlib.figure.Figure):
    """matplotlib's Figure that also shows as a PNG when it is a notebook cell's value: Jupyter draws a bare Figure
    only once `%matplotlib inline`, or a first figure made through pyplot, has told IPython how; ours never are."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")  # as Jupyter's inline backend draws one
        return buffer.getvalue()


def trials_frame(results, space) -> pd.DataFrame:
    """One row per trial: id, outcome, epochs, last metrics, searched params; in attrs the searched params'
    names (`params`), per-epoch curves (`curves`) and each trial's own config less data_dir (`configs`).

    A trial's row holds every searched param, empty where it did not use one (a conditional param); its config
    in attrs holds only what it used. Outcomes are those of `outcome_of`, and `no_epoch` for a trial that
    reported nothing (the time budget ended the search before its first epoch did).
    """
    max_epochs, base = space.settings.MAX_EPOCHS, space.base_config()
    rows, curves, params, configs = [], {}, [], {}
    for r in results:
        last = r.metrics or {}
        config = {k: v for k, v in (r.config or {}).items() if k != "data_dir"}  # data_dir: where, not what
        trial_id = last.get("trial_id") or (r.path and Path(r.path).name)
        configs[trial_id] = config
        for key in config:  # searched: whatever a trial's config sets beyond (or differently from) the base
            if (key not in base or config[key] != base[key]) and key not in params:
                params.append(key)
        outcome = outcome_of(last, max_epochs, error=r.error is not None)
        row = {
            "trial_id": trial_id,
            "outcome": "no_epoch" if outcome == "stopped_early" and not last.get("epoch") else outcome,
            "epoch": last.get("epoch", 0),
            **{k: last.get(k) for k in ("val_acc", "val_loss", "val_top5", "train_loss", "train_acc")},
            **{k: last.get(k) for k in COST},
            "seconds": last.get("time_total_s", 0.0),
            "ended": last.get("timestamp", 0),
            "checkpoint": record.checkpoint_uri(r.checkpoint) if r.checkpoint else "",
            "checkpoint_epoch": max((m.get("epoch", 0) for _, m in r.best_checkpoints or []), default=0),
        }
        rows.append(row)
        frame = r.metrics_dataframe
        if frame is not None and "epoch" in frame:
            # a trial resumed from a checkpoint before its last epochs reported them again: the later counts
            curve = frame[["epoch", *[c for c in METRICS_MODES if c in frame]]]
            curves[trial_id] = curve.drop_duplicates("epoch", keep="last").reset_index(drop=True)
    frame = pd.DataFrame(rows)
    for key in params:
        frame[key] = [(r.config or {}).get(key) for r in results]
    frame.attrs["params"], frame.attrs["curves"], frame.attrs["configs"] = params, curves, configs
    return frame


def as_of_checkpoint(frame: pd.DataFrame) -> pd.DataFrame:
    """The stopped trials that have a checkpoint, each with its metrics at that checkpoint's epoch: what a winner
    among them is when a time budget stopped every trial, since a trial's last checkpoint can be up to
    CHECKPOINT_SECONDS older than its last epoch (`search.schedule.checkpoint_due`)."""
    curves = frame.attrs["curves"]
    rows = frame[(frame.outcome == "stopped_early") & (frame.checkpoint_epoch > 0) & frame.trial_id.isin(list(curves))]
    rows = rows.copy()
    for i, row in rows.iterrows():
        curve = curves[row.trial_id]
        at = curve[curve.epoch == row.checkpoint_epoch].iloc[-1]
        for key in curve.columns:
            rows.at[i, key] = at[key]
    return rows


def trial_config(frame: pd.DataFrame, trial_id: str) -> dict:
    """A trial's whole config as Tune gave it (searched and fixed keys, exact values), less data_dir:
    `python -m search.train --config` of it trains that trial again."""
    return dict(frame.attrs["configs"][trial_id])


def searched_config(frame: pd.DataFrame, trial_id: str) -> dict:
    """The searched params a trial used, exact; none of the conditional ones it did not use."""
    config = frame.attrs["configs"][trial_id]
    return {k: config[k] for k in frame.attrs["params"] if k in config}


def audit(frame: pd.DataFrame, settings) -> dict:
    """How well each ASHA rung's ranking predicted the final ranking, on the control trials.

    The controls (AUDIT_FRACTION of the trials, chosen at random) ran in full whatever ASHA said, so their
    rankings at each rung are a fair sample; ASHA's survivors alone would be range-restricted and understate how
    well early rungs rank. Spearman correlation between the metric at the rung's epoch and the final one: a low
    one at the first rung means ASHA stops trials on noise, and a longer grace period would waste less.
    """
    metric, curves = settings.METRIC, frame.attrs["curves"]
    controls = [
        t for t, outcome in zip(frame.trial_id, frame.outcome, strict=True)
        if outcome == "completed" and t in curves and is_control(settings.SEED, t, settings.AUDIT_FRACTION)
    ]  # fmt: skip
    out = {"rungs": {}, "trials": len(controls), "warning": "", "note": ""}
    if settings.AUDIT_FRACTION == 0:  # turned off on purpose: nothing to warn of
        return out
    if len(controls) < MIN_AUDIT_TRIALS:
        if not (frame.outcome == "stopped_early").any():  # every trial ran in full: no stop to audit
            return out
        needed = math.ceil(100 * MIN_AUDIT_TRIALS / settings.NUM_SAMPLES) / 100
        if needed > MAX_ADVISED_AUDIT_FRACTION:
            out["note"] = (
                f"too few trials for an audit ({settings.NUM_SAMPLES} trials, {count(len(controls), 'control')} "
                f"run in full whatever ASHA said; it needs {MIN_AUDIT_TRIALS})"
            )
            return out
        out["warning"] = (
            f"{count(len(controls), 'control trial')} ran in full (AUDIT_FRACTION={settings.AUDIT_FRACTION}); "
            f"the early-stopping audit needs {MIN_AUDIT_TRIALS}: raise AUDIT_FRACTION to about "
            f"{needed:g}, or set it to 0 to turn the audit off"
        )
        return out
    final = {t: curves[t][metric].iloc[-1] for t in controls}
    for rung in rung_epochs(settings):
        at_rung = {t: curves[t].loc[curves[t].epoch == rung, metric] for t in controls}
        pairs = pd.DataFrame({"rung": {t: v.iloc[0] for t, v in at_rung.items() if len(v)}, "final": final})
        rho = float(pairs.corr(method="spearman").iloc[0, 1])
        out["rungs"][rung] = round(rho, 3) if math.isfinite(rho) else None  # None: all tied, no ranking at all
    weak = [r for r, c in out["rungs"].items() if c is None or c < 0.5]
    if weak:
        better = next((r for r, c in out["rungs"].items() if c is not None and c >= 0.7), settings.GRACE_PERIOD * 2)
        out["warning"] = (
            f"rankings at epoch {', '.join(map(str, weak))} predicted the final ranking poorly; "
            f"consider GRACE_PERIOD = {max(better, weak[-1] + 1)}"
        )
    return out


def pareto_front(frame: pd.DataFrame, metric: str, mode: str, cost: str, cost_mode: str = "min") -> pd.DataFrame:
    """The rows no other row beats on both `metric` and `cost` (one at least as good on both and better on one),
    cheapest first."""
    rows = frame.dropna(subset=[metric, cost])
    gain = rows[metric].to_numpy(float) * (1 if mode == "max" else -1)  # higher is better
    spend = rows[cost].to_numpy(float) * (1 if cost_mode == "min" else -1)  # lower is better
    beaten = [((gain >= g) & (spend <= c) & ((gain > g) | (spend < c))).any() for g, c in zip(gain, spend, strict=True)]
    return rows[[not b for b in beaten]].sort_values(cost, ascending=cost_mode == "min")


def fronts(frame: pd.DataFrame, pool: pd.DataFrame, settings) -> dict:
    """The accuracy-against-cost fronts of the trials that trained as long as the winner (`pool`), each member
    with its metric, cost and config."""
    out, costs = {}, {**FRONT_COSTS, **{k: m for k, m in settings.objectives.items() if k in COST_MODES}}
    for cost, cost_mode in costs.items():
        front = pareto_front(pool, settings.METRIC, settings.MODE, cost, cost_mode)
        out[cost] = [
            {
                "trial_id": row.trial_id,
                settings.METRIC: round(float(row[settings.METRIC]), 4),
                **{k: _rounded(plain(row[k])) for k in COST if pd.notna(row[k])},
                "config": searched_config(frame, row.trial_id),
            }
            for _, row in front.iterrows()
        ]
    return out


def converged(frame: pd.DataFrame, settings) -> int | None:
    """After how many trials PATIENCE ended the search, replayed from Tune's record; None if it did not."""
    if not settings.PATIENCE:
        return None
    ordered = frame.sort_values("ended", kind="stable")
    values = [None if o == "errored" else v for v, o in zip(ordered[settings.METRIC], ordered.outcome, strict=True)]
    return converged_after(values, settings.MODE, settings.PATIENCE, settings.MIN_DELTA)


def summarize(space, frame, pool, best_row, test, start: float, model_uri: str, final: dict | None,
              study=None) -> dict:  # fmt: skip
    """What a search found. `pool`: the trials the winner was chosen from (those that ran in full, if any);
    `study`: its Optuna study, to say which plots it has too few trials for.

    Trials the search never started (the time budget or PATIENCE ended it first) count as `not_started`."""
    s = space.settings
    outcomes = {k: int(v) for k, v in frame.outcome.value_counts().items()}
    if len(frame) < s.NUM_SAMPLES:
        outcomes["not_started"] = s.NUM_SAMPLES - len(frame)
    seconds = float(frame.seconds.sum())
    skipped = thin_plots(study) if study is not None else {}
    return {
        "best_trial": best_row.trial_id,
        "best_config": searched_config(frame, best_row.trial_id),
        f"best_{s.METRIC}": float(best_row[s.METRIC]),
        **{k: round(v, 4) for k, v in test.items()},
        "trials": sum(outcomes.values()),
        "outcomes": outcomes,
        "epochs_trained": int(frame.epoch.sum()),
        "epochs_if_all_full": int(len(frame) * s.MAX_EPOCHS),
        "cpu_hours": round(seconds * s.CPUS_PER_TRIAL / 3600, 3),
        "gpu_hours": round(seconds * s.GPUS_PER_TRIAL / 3600, 3),
        "wall_seconds": round(time.time() - start, 1),
        "model": model_uri,
        "best_checkpoint": best_row.checkpoint,
        "audit": audit(frame, s),
        "front": fronts(frame, pool, s),
        **(
            {"converged_after": converged(frame, s), "patience": s.PATIENCE, "min_delta": s.MIN_DELTA}
            if converged(frame, s)
            else {}
        ),  # fmt: skip
        **({"final": final} if final else {}),
        **({"plots_skipped": skipped} if skipped else {}),
        **({"importance": importances(study, s)} if study is not None else {}),
    }


def ranked_trials(study, settings) -> list:
    """The study's completed trials with a finite METRIC (an earlier search's, given by --warm-start, included),
    best first."""
    done = [t for t in study.trials if t.state == TrialState.COMPLETE and math.isfinite(t.values[0])]
    return sorted(done, key=lambda t: t.values[0], reverse=settings.MODE == "max")


def top_count(trials: int) -> int:
    """How many of `trials` completed trials count as the top ones (`MIN_TOP_TRIALS`)."""
    return min(trials, max(MIN_TOP_TRIALS, math.ceil(0.1 * trials)))


def importances(study, settings) -> dict:
    """Each searched parameter's share (summing to 1) of what reaching the top trials of METRIC took, by Optuna's
    PED-ANOVA, which suits the few trials of a search; `trials` and `top`: how many trials it rests on.

    With fewer completed trials than the importance plot needs (`thin_plots`), `skipped` says so instead.
    """
    why = thin_plots(study).get("importance")
    if why:
        return {"skipped": why}
    trials = len(ranked_trials(study, settings))
    if trials < MIN_PLOT_TRIALS:  # completed, but some without a finite METRIC
        return {"skipped": f"{count(trials, 'completed trial')} with a finite {settings.METRIC}; it needs "
                           f"{MIN_PLOT_TRIALS}"}  # fmt: skip
    top = top_count(trials)
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=min(0.5, top / trials))
    # PED-ANOVA takes lower as better; a multi-objective study is asked about METRIC, the first objective
    sign = -1 if settings.MODE == "max" else 1
    target = (lambda t: sign * t.values[0]) if len(study.directions) > 1 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna warns of small samples: `trials` and `top` say how small
        shares = optuna.importance.get_param_importances(study, evaluator=evaluator, target=target)
    return {"evaluator": "PED-ANOVA", "trials": trials, "top": top,
            "params": {k: round(float(v), 4) for k, v in shares.items()}}  # fmt: skip


def thin_plots(study) -> dict[str, str]:
    """The study's plots that too few completed trials would make misleading, each with why."""
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    searched = len({name for t in done for name in t.params})
    needs = {
        "parallel_coordinates": (MIN_PLOT_TRIALS, "one line per trial"),
        "importance": (max(MIN_PLOT_TRIALS, searched + 1), f"more than the {searched} searched parameters"),
    }
    return {
        name: f"{count(len(done), 'completed trial')}; it needs {need} ({why})"
        for name, (need, why) in needs.items()
        if len(done) < need
    }


def plain(value: object) -> object:
    """A numpy or pandas scalar as the Python number it holds."""
    return value.item() if hasattr(value, "item") else value


def _rounded(value: object) -> object:
    """Four significant digits: 0.23073968112646592 -> 0.2307, 0.000123456 -> 0.0001235."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


def count(n: int, noun: str) -> str:
    """1 trial, 2 trials."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _finite(value: object) -> object:
    """`value` with every NaN or infinity inside it as None: strict JSON has neither."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def print_summary(summary: dict) -> None:
    print("\n" + format_summary(summary), flush=True)


def format_summary(summary: dict) -> str:
    metric = next(k for k in summary if k.startswith("best_") and k not in ("best_trial", "best_config"))
    lines = [
        f"best trial  {summary['best_trial']}   {metric} {summary[metric]:.4f}   "
        f"test_acc {summary['test_acc']:.4f}   test_top5 {summary['test_top5']:.4f}",
        "best config " + "  ".join(f"{k}={_rounded(v)}" for k, v in summary["best_config"].items()),
        *([f"config file {summary['best_config_file']}"] if "best_config_file" in summary else []),
        "trials      " + "  ".join(f"{k} {v}" for k, v in sorted(summary["outcomes"].items())),
        f"epochs      {summary['epochs_trained']} trained, {summary['epochs_if_all_full']} if every trial ran "
        f"in full ({summary['epochs_trained'] / max(1, summary['epochs_if_all_full']):.0%})",
        f"compute     {summary['cpu_hours']} CPU-hours, {summary['gpu_hours']} GPU-hours, "
        f"{summary['wall_seconds']:.0f} s wall",
    ]
    if "converged_after" in summary:
        lines.append(
            f"stopped     converged after {count(summary['converged_after'], 'trial')}: "
            f"the last {summary['patience']} did not beat the best {metric.removeprefix('best_')} "
            f"by more than {summary['min_delta']}"
        )
    rungs = summary["audit"]["rungs"]
    if rungs:
        lines.append(
            "early stop  rank correlation with the final ranking: "
            + ", ".join(f"epoch {r}: {'n/a' if c is None else c}" for r, c in rungs.items())
            + f" (over {count(summary['audit']['trials'], 'control trial')} run in full)"
        )
    if summary["audit"].get("note"):
        lines.append(f"early stop  {summary['audit']['note']}")
    if summary["audit"]["warning"]:
        lines.append(f"warning     {summary['audit']['warning']}")
    if "final" in summary:
        for row in summary["final"]["configs"]:
            lines.append(
                f"retrained   {row['trial_id']}: test_acc {row['test_acc_mean']:.4f} "
                f"± {row['test_acc_std']:.4f} over {count(row['seeds'], 'seed')}"
            )
    front = summary.get("front", {}).get("macs", [])
    if front:
        lines.append(f"front       {metric.removeprefix('best_')} against MACs per image: {count(len(front), 'trial')} "
                     "no other beats on both (plots/pareto_front.png)")  # fmt: skip
        lines += [f"  {_front_line(row, metric.removeprefix('best_'))}" for row in front]
    lines += [f"plots       {name}.png skipped: {why}" for name, why in summary.get("plots_skipped", {}).items()]
    lines += _importance_lines(summary)
    lines += [f"model       {summary['model']}", f"checkpoint  {summary['best_checkpoint']}"]
    if "registered" in summary:
        lines.append(f"registered  {_registered_line(summary['registered'])}")
    if "ui" in summary:
        lines.append(f"compare     {summary['ui']}")
    return "\n".join(lines)


def _importance_lines(summary: dict) -> list[str]:
    """The importance line (or why there is none) and the narrowed space file's (`search.narrow`)."""
    lines, found, narrowed = [], summary.get("importance", {}), summary.get("narrowed", {})
    if "params" in found:
        shares = "  ".join(f"{k} {v:.2f}" for k, v in found["params"].items())
        lines.append(f"importance  {shares} (PED-ANOVA: reaching the top {found['top']} of "
                     f"{count(found['trials'], 'completed trial')})")  # fmt: skip
    elif found:
        lines.append(f"importance  not computed: {found['skipped']}")
    if "path" in narrowed:
        searched = ", ".join(narrowed["searched"]) or "nothing"
        # search.run reads a space file from the local disk: one on s3:// runs from a copy of it
        local = narrowed["path"] if not record.is_remote(narrowed["path"]) else "narrowed_space.py (a copy)"
        lines.append(
            f"narrowed    {narrowed['path']} (searches {searched}; fixes {len(narrowed['fixed'])} at the "
            f"winner's values): python -m search.run {local} --warm-start {narrowed['search']}"
        )
    elif narrowed:
        lines.append(f"narrowed    not written: {narrowed['skipped']}")
    return lines


def _registered_line(registered: dict) -> str:
    """`NAME version N as champion (URI)`, or as challenger with why it is not champion (search.registry)."""
    where = f"{registered['name']} version {registered['version']} as {registered['alias']} ({registered['uri']})"
    return f"{where}: {registered['why']}" if registered["why"] else where


def _front_line(row: dict, metric: str) -> str:
    cost = [f"{_si(row['macs'])} MACs", f"{_si(row['params'])} params"]
    if "latency_ms" in row:
        cost.append(f"{row['latency_ms']:.2f} ms")
    if "images_per_second" in row:
        cost.append(f"{row['images_per_second']:.0f} img/s")
    config = "  ".join(f"{k}={_rounded(v)}" for k, v in row["config"].items())
    return f"{row['trial_id']}  {metric} {row[metric]:.4f}  {'  '.join(cost)}  {config}"


def _si(n: float) -> str:
    """26319872 -> 26.3M"""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def plot_front(frame: pd.DataFrame, metric: str, mode: str, pool: pd.DataFrame) -> Figure:
    """Metric against MACs and against training speed: every trial by outcome, the front of `pool` drawn over."""
    fig = Figure(figsize=(12, 5))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (cost, cost_mode) in zip(axes, FRONT_COSTS.items(), strict=True):
        rows = frame.dropna(subset=[metric, cost])
        for outcome, group in rows.groupby("outcome"):
            ax.scatter(group[cost], group[metric], s=18, color=OUTCOME_COLORS.get(outcome, "tab:blue"),
                       alpha=0.5, label=outcome)  # fmt: skip
        front = pareto_front(pool, metric, mode, cost, cost_mode)
        ax.plot(front[cost], front[metric], "o-", color="tab:orange", markerfacecolor="none", markersize=10,
                label="front")  # fmt: skip
        ax.set(xscale="log", xlabel={"macs": "MACs per image", "images_per_second": "training images/s"}[cost])
        ax.grid(alpha=0.3)
    axes[0].set(ylabel=metric, title=f"{metric} against compute")
    axes[1].set(title=f"{metric} against training speed")
    axes[0].legend()
    return fig


def plot_importance(importance: dict) -> Figure:
    """The summary's PED-ANOVA importances as bars, the most important on top."""
    if "params" not in importance:
        raise ValueError(importance["skipped"])
    shares = importance["params"]
    fig = Figure(figsize=(8, 1 + 0.4 * len(shares)))
    ax = fig.subplots()
    ax.barh(list(shares)[::-1], list(shares.values())[::-1], color="tab:blue")
    title = f"what reaching the top {importance['top']} of {importance['trials']} completed trials took"
    ax.set(xlabel="share of importance (PED-ANOVA)", title=title)
    ax.grid(alpha=0.3, axis="x")
    return fig


def plot_curves(frame: pd.DataFrame, metric: str) -> Figure:
    """Every trial's `metric` per epoch, coloured by outcome."""
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    outcome = dict(zip(frame.trial_id, frame.outcome, strict=True))
    for trial_id, curve in frame.attrs["curves"].items():
        if metric in curve:
            ax.plot(curve.epoch, curve[metric], color=OUTCOME_COLORS.get(outcome.get(trial_id), "tab:blue"), alpha=0.7)
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} of every trial (green: ran in full)")
    ax.grid(alpha=0.3)
    return fig


def log_to_parent(client, run_id: str, space, frame: pd.DataFrame, pool, study, summary: dict) -> None:
    """The trials CSV, the summary (strict JSON), the best config file, learning curves, the accuracy-cost fronts,
    and parallel coordinates and parameter importance when the study has enough trials for them (`thin_plots`)."""
    import matplotlib.pyplot as plt  # Optuna's plots draw through pyplot; they are closed once logged

    metric = space.settings.METRIC
    client.log_text(run_id, frame.drop(columns=["checkpoint", "checkpoint_epoch"]).to_csv(index=False), "trials.csv")
    summary_json = json.dumps(_finite(json.loads(json.dumps(summary, default=str))), indent=2, allow_nan=False)
    client.log_text(run_id, summary_json, "summary.json")
    client.log_text(run_id, format_summary(summary), "summary.txt")
    if "best_config_file" in summary:
        with record.local_copy(summary["best_config_file"]) as path:  # on s3:// too
            client.log_artifact(run_id, path)
    client.log_figure(run_id, plot_curves(frame, metric), "plots/learning_curves.png")
    client.log_figure(run_id, plot_front(frame, metric, space.settings.MODE, pool), "plots/pareto_front.png")
    from mlflow.entities import Metric
    from optuna.visualization import matplotlib as ovm

    # a multi-objective study's plots need to be told which objective: METRIC, the first
    target = {"target": lambda t: t.values[0], "target_name": metric} if len(study.directions) > 1 else {}
    skipped = thin_plots(study)
    shares = summary.get("importance", {}).get("params", {})
    if shares:  # metrics, so that the runs table can sort and compare searches by them
        client.log_batch(run_id, metrics=[Metric(f"importance.{k}", v, int(time.time() * 1000), 0)
                                          for k, v in shares.items()])  # fmt: skip
    for name, plot in (
        ("parallel_coordinates", ovm.plot_parallel_coordinate),
        ("importance", lambda study, **_: plot_importance(summary["importance"])),  # the summary's numbers
    ):
        if name in skipped:
            client.set_tag(run_id, f"plot.{name}", f"skipped: {skipped[name]}")
            continue
        before = set(plt.get_fignums())  # a notebook's own figures stay open
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = plot(study, **target)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # a study the plot cannot draw
            client.set_tag(run_id, f"plot.{name}", f"skipped: {exc}"[:500])
        else:
            fig = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            fig.set_size_inches(10, 6)
            client.log_figure(run_id, fig, f"plots/{name}.png")
        finally:
            for number in set(plt.get_fignums()) - before:
                plt.close(number)
