"""best_config.json: the winner's whole, exact config, written beside the search's record and logged to its parent
run; `python -m search.train --config` of it trains that trial again. Summary and plots made from a real search.

Before: the best config was the searched params only, rounded to 4 digits, with `momentum=nan  nesterov=None` for
the conditional params a trial did not use, and summary.json held a bare NaN.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from search import train
from search.report import format_summary
from search.train import TrainConfig, model_from_checkpoint

# a whole search (the session's smoke search of spaces/vgg_cifar100.py, made once per xdist worker: the tests that
# read one share a worker)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smoke_searches")]

# spaces/vgg_cifar100.py: define-by-run, with conditional params


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_best_config_json_trains_the_winning_trial_again(finished_smoke_search, tmp_path, monkeypatch, cli_exit):
    monkeypatch.chdir(tmp_path)
    done = finished_smoke_search("vgg_cifar100")  # shared: read only
    result, data, uri = done.result, done.data_dir, done.uri
    summary = result.summary
    path = done.storage / "smoke" / "best_config.json"
    assert summary["best_config_file"] == str(path)
    text = format_summary(summary)
    assert f"config file {path}" in text and "nan" not in text and "None" not in text

    best = strict_json(path.read_text())
    winner = next(r for r in result.results if r.metrics["trial_id"] == summary["best_trial"])
    assert best == {k: v for k, v in winner.config.items() if k != "data_dir"}  # whole and exact
    assert all(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in best.values())
    assert result.best_config == summary["best_config"] == {k: best[k] for k in summary["best_config"]}

    client = MlflowClient(uri)
    folder = Path(client.download_artifacts(result.parent_run_id, "", str(tmp_path / "artifacts")))
    assert strict_json((folder / "best_config.json").read_text()) == best
    assert strict_json((folder / "summary.json").read_text())["best_config"] == summary["best_config"]
    tags = client.get_run(result.parent_run_id).data.tags
    assert tags["plot.importance"].startswith("skipped: ")  # 4 smoke trials: too few for either study plot
    assert "plots       importance.png skipped" in text

    _, trained = model_from_checkpoint(Path(summary["best_checkpoint"]) / "checkpoint.pt")
    trained.data_dir = str(data)
    params_json = Path(winner.path) / "params.json"  # the README's other way: a trial's own params.json
    assert TrainConfig.from_dict(json.loads(params_json.read_text())) == trained

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial ran (CPUS_PER_TRIAL = 1): the same sums, the same curve
    try:
        code, out, err = cli_exit(train.main, ["--config", path, "--data-dir", data, "--out", tmp_path / "again"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert TrainConfig.from_dict(again["config"]) == trained
    assert [m["val_acc"] for m in again["history"]] == list(winner.metrics_dataframe.val_acc)
