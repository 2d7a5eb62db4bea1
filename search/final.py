"""The final retrains: the best configs trained again from scratch with new seeds, tested on the test set.

A winner can be an accident of one seed; the spread over seeds says how much of its lead is real. They run as
their own Tune experiment beside the search (`NAME-final`, so --resume continues them too), each a child run of
the search's parent tagged stage=final.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from search import record
from search.cluster import concurrency
from search.record import unfinished_trials
from search.report import searched_config
from search.state import SearchJob
from search.tracking import LiveTracking, Ranking, sync
from search.train import evaluate_test, model_from_checkpoint
from search.trainable import CHECKPOINT_FILE, shared_data, trainable
from search.tuner import build_tuner, fit


def variants(top: pd.DataFrame, seeds: int, seed: int) -> list[dict]:
    """Each trial of `top` (rows of `report.trials_frame`) `seeds` times with a new seed: its searched params as it
    used them, none of the conditional ones it did not use (a NaN there would be a config no trainer accepts)."""
    return [
        {**searched_config(top, row.trial_id), "seed": seed + 1 + i, "source_trial": row.trial_id}
        for _, row in top.iterrows()
        for i in range(seeds)
    ]


def retrain(job: SearchJob, top: pd.DataFrame, seeds: int) -> dict:
    """Retrains each row of `top` (trials) with `seeds` new seeds for the full epoch budget.

    Returns:
        {"configs": [{trial_id, seeds, test_acc_mean, test_acc_std}], "experiment_path": ...}
    """
    s = job.space.settings
    path = record.final_folder(job.path)
    ranking = Ranking(s.METRIC, s.MODE)
    tracking = LiveTracking(job.client.tracking_uri, job.experiment_id, job.parent_run_id, s.MAX_EPOCHS, "final",
                            ranking)  # fmt: skip
    base = job.space.base_config(job.data_dir)
    tuner = build_tuner(
        job.space, trainable, path=path, search=False, max_concurrent=concurrency(s), callbacks=[tracking],
        param_space={**base, "variant": {"grid_search": variants(top, seeds, s.SEED)}}, parameters=shared_data(base),
    )  # fmt: skip
    retrained = fit(tuner)
    if unfinished_trials(path):
        raise KeyboardInterrupt  # Tune stopped on Ctrl-C or SIGTERM and saved its state: --resume continues them
    sync(path, job.client, job.experiment_id, job.parent_run_id, s.MAX_EPOCHS, "final", ranking)
    rows = []
    for r in retrained:
        if r.checkpoint is None or r.error is not None:
            continue
        with r.checkpoint.as_directory() as folder:  # a download when the storage is remote
            model, config = model_from_checkpoint(Path(folder) / CHECKPOINT_FILE)
        config.data_dir = job.data_dir
        rows.append({"source": r.config["variant"]["source_trial"], **evaluate_test(model, config)})
    by_source = pd.DataFrame(rows).groupby("source", sort=False).test_acc if rows else []
    configs = [
        {
            "trial_id": trial_id, "seeds": int(acc.count()), "test_acc_mean": round(float(acc.mean()), 4),
            "test_acc_std": round(float(acc.std(ddof=1)) if acc.count() > 1 else 0.0, 4),
        }
        for trial_id, acc in by_source
    ]  # fmt: skip
    for row in configs:
        job.client.log_metric(job.parent_run_id, f"final.{row['trial_id']}.test_acc_mean", row["test_acc_mean"])
        job.client.log_metric(job.parent_run_id, f"final.{row['trial_id']}.test_acc_std", row["test_acc_std"])
    return {"configs": configs, "experiment_path": path}
