"""After a search: the trials table, the summary, the early-stopping audit, plots, and the final retrains."""

from __future__ import annotations

import json
import os
import subprocess
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from search.tracking import outcome_of  # noqa: E402

MIN_AUDIT_TRIALS = 4  # rank correlations of fewer trials say nothing


def git_commit() -> str:
    # A Ray job's working directory has no .git: search.submit sends the submitter's commit along.
    fallback = os.environ.get("SEARCH_GIT_COMMIT", "unknown")
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or fallback
    except (OSError, subprocess.SubprocessError):
        return fallback


def trials_frame(results, space) -> pd.DataFrame:
    """One row per trial: id, outcome, epochs, last metrics, searched params, and per-epoch curves in attrs."""
    max_epochs, base = space.settings["MAX_EPOCHS"], space.base_config()
    rows, curves, params = [], {}, []
    for r in results:
        last = r.metrics or {}
        config = r.config or {}
        trial_id = last.get("trial_id") or (r.path and Path(r.path).name)
        for key in config:  # searched: whatever a trial's config sets beyond (or differently from) the base
            if key != "data_dir" and (key not in base or config[key] != base[key]) and key not in params:
                params.append(key)
        row = {
            "trial_id": trial_id,
            "outcome": outcome_of(last, max_epochs, error=r.error is not None),
            "epoch": last.get("epoch", 0),
            **{k: last.get(k) for k in ("val_acc", "val_loss", "val_top5", "train_loss", "train_acc")},
            "seconds": last.get("time_total_s", 0.0),
            "checkpoint": r.checkpoint.path if r.checkpoint else "",
        }
        rows.append(row)
        frame = r.metrics_dataframe
        if frame is not None and "epoch" in frame:
            curves[trial_id] = frame[["epoch", *[c for c in ("val_acc", "val_loss") if c in frame]]]
    frame = pd.DataFrame(rows)
    for key in params:
        frame[key] = [(r.config or {}).get(key) for r in results]
    frame.attrs["params"], frame.attrs["curves"] = params, curves
    return frame


def rung_epochs(settings: dict) -> list[int]:
    epochs, rung = [], settings["GRACE_PERIOD"]
    while rung < settings["MAX_EPOCHS"]:
        epochs.append(rung)
        rung *= settings["REDUCTION_FACTOR"]
    return epochs


def audit(frame: pd.DataFrame, settings: dict) -> dict:
    """How well each ASHA rung's ranking predicted the final ranking, among trials that ran to the end.

    Spearman correlation between the metric at the rung's epoch and the final one. Low correlation at the
    first rung means ASHA stops trials on noise: a longer grace period would waste less.
    """
    metric, curves = settings["METRIC"], frame.attrs["curves"]
    finished = frame[frame.outcome == "completed"].trial_id
    out = {"rungs": {}, "trials": int(len(finished)), "warning": ""}
    if len(finished) < MIN_AUDIT_TRIALS:
        out["warning"] = f"only {len(finished)} trials reached the last rung; too few to audit early stopping"
        return out
    final = {t: curves[t][metric].iloc[-1] for t in finished if t in curves}
    for rung in rung_epochs(settings):
        at_rung = {t: c.loc[c.epoch == rung, metric] for t, c in curves.items() if t in final}
        pairs = pd.DataFrame({"rung": {t: v.iloc[0] for t, v in at_rung.items() if len(v)}, "final": final})
        out["rungs"][rung] = round(float(pairs.corr(method="spearman").iloc[0, 1]), 3)
    weak = [r for r, c in out["rungs"].items() if not c >= 0.5]
    if weak:
        better = next((r for r, c in out["rungs"].items() if c >= 0.7), settings["GRACE_PERIOD"] * 2)
        out["warning"] = (
            f"rankings at epoch {', '.join(map(str, weak))} predicted the final ranking poorly; "
            f"consider GRACE_PERIOD = {max(better, weak[-1] + 1)}"
        )
    return out


def summarize(space, frame, best_row, test, start: float, model_uri: str, final: dict | None) -> dict:
    s = space.settings
    outcomes = frame.outcome.value_counts().to_dict()
    seconds = float(frame.seconds.sum())
    return {
        "best_trial": best_row.trial_id,
        "best_config": {k: _plain(best_row[k]) for k in frame.attrs["params"]},
        f"best_{s['METRIC']}": float(best_row[s["METRIC"]]),
        **{k: round(v, 4) for k, v in test.items()},
        "trials": int(len(frame)),
        "outcomes": {k: int(v) for k, v in outcomes.items()},
        "epochs_trained": int(frame.epoch.sum()),
        "epochs_if_all_full": int(len(frame) * s["MAX_EPOCHS"]),
        "cpu_hours": round(seconds * s["CPUS_PER_TRIAL"] / 3600, 3),
        "gpu_hours": round(seconds * s["GPUS_PER_TRIAL"] / 3600, 3),
        "wall_seconds": round(time.time() - start, 1),
        "model": model_uri,
        "best_checkpoint": best_row.checkpoint,
        "audit": audit(frame, s),
        **({"final": final} if final else {}),
    }


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def print_summary(summary: dict) -> None:
    print("\n" + format_summary(summary), flush=True)


def format_summary(summary: dict) -> str:
    metric = next(k for k in summary if k.startswith("best_") and k not in ("best_trial", "best_config"))
    lines = [
        f"best trial  {summary['best_trial']}   {metric} {summary[metric]:.4f}   "
        f"test_acc {summary['test_acc']:.4f}   test_top5 {summary['test_top5']:.4f}",
        "best config " + "  ".join(f"{k}={v}" for k, v in summary["best_config"].items()),
        "trials      " + "  ".join(f"{k} {v}" for k, v in sorted(summary["outcomes"].items())),
        f"epochs      {summary['epochs_trained']} trained, {summary['epochs_if_all_full']} if every trial ran "
        f"in full ({summary['epochs_trained'] / max(1, summary['epochs_if_all_full']):.0%})",
        f"compute     {summary['cpu_hours']} CPU-hours, {summary['gpu_hours']} GPU-hours, "
        f"{summary['wall_seconds']:.0f} s wall",
    ]
    rungs = summary["audit"]["rungs"]
    if rungs:
        lines.append(
            "early stop  rank correlation with the final ranking: "
            + ", ".join(f"epoch {r}: {c}" for r, c in rungs.items())
        )
    if summary["audit"]["warning"]:
        lines.append(f"warning     {summary['audit']['warning']}")
    if "final" in summary:
        for row in summary["final"]["configs"]:
            lines.append(
                f"retrained   {row['trial_id']}: test_acc {row['test_acc_mean']:.4f} "
                f"± {row['test_acc_std']:.4f} over {row['seeds']} seeds"
            )
    lines += [f"model       {summary['model']}", f"checkpoint  {summary['best_checkpoint']}"]
    return "\n".join(lines)


def plot_curves(frame: pd.DataFrame, metric: str):
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {"completed": "tab:green", "stopped_early": "tab:gray", "diverged": "tab:red", "errored": "black"}
    outcome = dict(zip(frame.trial_id, frame.outcome, strict=True))
    for trial_id, curve in frame.attrs["curves"].items():
        if metric in curve:
            ax.plot(curve.epoch, curve[metric], color=colors.get(outcome.get(trial_id), "tab:blue"), alpha=0.7)
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} of every trial (green: ran in full)")
    ax.grid(alpha=0.3)
    return fig


def log_to_parent(client, run_id: str, space, frame: pd.DataFrame, study, summary: dict) -> None:
    """The trials CSV, the summary, learning curves, parallel coordinates and parameter importance."""
    metric = space.settings["METRIC"]
    client.log_text(run_id, frame.drop(columns=["checkpoint"]).to_csv(index=False), "trials.csv")
    client.log_dict(run_id, json.loads(json.dumps(summary, default=str)), "summary.json")
    client.log_text(run_id, format_summary(summary), "summary.txt")
    client.log_figure(run_id, plot_curves(frame, metric), "plots/learning_curves.png")
    plt.close("all")
    from optuna.visualization import matplotlib as ovm

    for name, plot in (
        ("parallel_coordinates", ovm.plot_parallel_coordinate),
        ("importance", ovm.plot_param_importances),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # too few finished trials for the plot
            client.set_tag(run_id, f"plot.{name}", f"skipped: {exc}"[:500])
            continue
        fig = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        fig.set_size_inches(10, 6)
        client.log_figure(run_id, fig, f"plots/{name}.png")
        plt.close("all")
