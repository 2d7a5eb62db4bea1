"""search.report: the accuracy-against-cost front and how the summary prints it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
import pandas as pd
import pytest
from IPython.core.formatters import DisplayFormatter
from mlflow.tracking import MlflowClient
from ray.tune import Checkpoint, Result

from search.driver import SearchResult
from search.record import write_best_config
from search.report import (
    MIN_AUDIT_TRIALS,
    as_of_checkpoint,
    audit,
    format_summary,
    log_to_parent,
    pareto_front,
    plot_curves,
    plot_front,
    summarize,
    thin_plots,
    trial_config,
    trials_frame,
)
from search.schedule import is_control
from search.space import METRICS_MODES, Settings, load_space, read_space
from search.tracking import Ranking
from search.train import TrainConfig


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        [
            ("a", 0.90, 100, 900),
            ("b", 0.85, 50, 2000),
            ("c", 0.80, 60, 1500),  # b is cheaper and better
            ("d", 0.90, 120, 800),  # a is as good and cheaper
            ("e", 0.95, 300, 300),
            ("f", 0.90, 100, 900),  # a's twin: neither beats the other
            ("g", None, 10, 5000),  # no metric yet
        ],
        columns=["trial_id", "val_acc", "macs", "images_per_second"],
    )


def test_the_front_holds_the_trials_no_other_beats_on_both_cheapest_first():
    assert list(pareto_front(frame(), "val_acc", "max", "macs").trial_id) == ["b", "a", "f", "e"]


def test_a_front_against_speed_prefers_more_images_per_second():
    assert list(pareto_front(frame(), "val_acc", "max", "images_per_second", "max").trial_id) == ["b", "a", "f", "e"]


@pytest.mark.parametrize(("mode", "front"), [("min", ["b", "c"]), ("max", ["b", "a", "f", "e"])])
def test_the_metrics_direction_decides_what_beats(mode, front):
    assert list(pareto_front(frame(), "val_acc", mode, "macs").trial_id) == front


SUMMARY = {
    "best_trial": "b", "best_config": {"width1": 16, "lr": 0.0123}, "best_val_acc": 0.85, "test_acc": 0.84,
    "test_top5": 0.99, "outcomes": {"completed": 1}, "epochs_trained": 4, "epochs_if_all_full": 4,
    "cpu_hours": 0.1, "gpu_hours": 0.0, "wall_seconds": 60, "audit": {"rungs": {}, "warning": ""},
    "model": "runs:/x/model", "best_checkpoint": "/tmp/x",
}  # fmt: skip


def test_the_summary_lists_each_front_member_with_its_cost_and_config():
    row = {"trial_id": "b", "val_acc": 0.85, "params": 908074, "macs": 26319872, "latency_ms": 1.234,
           "images_per_second": 2012.0, "config": {"width1": 16, "lr": 0.0123}}  # fmt: skip
    text = format_summary({**SUMMARY, "front": {"macs": [row]}})
    assert "val_acc against MACs per image: 1 trial no other beats on both" in text
    assert "b  val_acc 0.8500  26.3M MACs  908k params  1.23 ms  2012 img/s  width1=16  lr=0.0123" in text


def audited_frame(final_of_early, n: int = 40, stopped: int = 0) -> pd.DataFrame:
    """Trials that ran 3 epochs: epoch 1 scores k/n, the final score is final_of_early(k/n); and `stopped` more
    that ASHA stopped after epoch 1."""
    ids = [f"trial{k:02d}" for k in range(n)]
    curves = {
        t: pd.DataFrame({"epoch": [1, 2, 3], "val_acc": [k / n, k / n, final_of_early(k / n)]})
        for k, t in enumerate(ids)
    }
    curves.update({f"stopped{k:02d}": pd.DataFrame({"epoch": [1], "val_acc": [0.0]}) for k in range(stopped)})
    frame = pd.DataFrame({"trial_id": list(curves), "outcome": ["completed"] * n + ["stopped_early"] * stopped})
    frame.attrs["curves"] = curves
    return frame


def settings(**values) -> Settings:
    given = {"DATASET": "cifar10", "MODEL": "vgg7", "MAX_EPOCHS": 3, "REDUCTION_FACTOR": 3, **values}
    return Settings.check("space.py", given)


def test_the_audit_ranks_on_the_control_trials_only_and_says_how_many():
    s = settings(AUDIT_FRACTION=0.5, SEED=1)
    controls = [t for t in audited_frame(lambda x: x).trial_id if is_control(1, t, 0.5)]
    result = audit(audited_frame(lambda x: x), s)
    assert result["trials"] == len(controls) >= MIN_AUDIT_TRIALS
    assert result["rungs"] == {1: 1.0} and result["warning"] == ""  # the first rung ranked exactly as the end


def test_an_early_rung_that_ranks_backwards_is_warned_of_with_a_longer_grace_period():
    result = audit(audited_frame(lambda x: 1 - x), settings(AUDIT_FRACTION=1.0))
    assert result["rungs"] == {1: -1.0}
    assert "rankings at epoch 1 predicted the final ranking poorly; consider GRACE_PERIOD = 2" in result["warning"]


def test_too_few_controls_say_so_instead_of_a_correlation():
    result = audit(audited_frame(lambda x: x, n=3, stopped=9), settings(AUDIT_FRACTION=0.1, NUM_SAMPLES=12))
    controls = sum(is_control(0, f"trial{k:02d}", 0.1) for k in range(3))
    assert result["rungs"] == {} and f"{controls} control trials ran in full" in result["warning"]
    assert result["warning"].endswith("raise AUDIT_FRACTION to about 0.34, or set it to 0 to turn the audit off")


def test_a_search_whose_every_trial_ran_in_full_has_nothing_to_audit():
    """Under `trials completed 4 ... 8 of 8 epochs (100%)` it warned `0 control trials ran in full ... raise
    AUDIT_FRACTION to about 1`."""
    for fraction in (0.25, 0.75):  # seed 0: no control, three
        result = audit(audited_frame(lambda x: x, n=4), settings(AUDIT_FRACTION=fraction, NUM_SAMPLES=4))
        assert result["warning"] == "" and result["note"] == "" and result["rungs"] == {}


def test_a_search_too_small_for_an_audit_says_so_and_never_advises_running_every_trial_in_full():
    """Four trials need AUDIT_FRACTION 1 for four controls: early stopping off, which is no advice."""
    result = audit(audited_frame(lambda x: x, n=1, stopped=3), settings(AUDIT_FRACTION=0.75, NUM_SAMPLES=4))
    assert result["warning"] == "" and result["rungs"] == {}
    assert result["note"] == (
        f"too few trials for an audit (4 trials, 1 control run in full whatever ASHA said; it needs {MIN_AUDIT_TRIALS})"
    )
    summary = {**SUMMARY, "audit": result}
    assert f"early stop  {result['note']}" in format_summary(summary) and "warning" not in format_summary(summary)


def test_an_audit_turned_off_warns_of_nothing():
    """AUDIT_FRACTION = 0 printed "warning  0 control trials ran in full ... needs 4" under every search."""
    result = audit(audited_frame(lambda x: x), settings(AUDIT_FRACTION=0.0))
    assert result == {"rungs": {}, "trials": 0, "warning": "", "note": ""}


# A search's record as Tune hands it over: real `ray.tune.Result`s of a define-by-run space with conditional
# parameters (momentum only for sgd, warmup_epochs only for cosine), on the course space's smoke settings.

SPACE = Path(__file__).parents[1] / "spaces" / "vgg_cifar100.py"


@pytest.fixture(scope="module")
def space():
    return load_space(SPACE, smoke=True)


def tune_result(trial_id: str, config: dict | None, val_accs: list[float]) -> Result:
    """A trial that reported one epoch per value of `val_accs` (none: it got no epoch before the search ended)."""
    if not val_accs:  # what Tune's ResultGrid holds for a trial that reported nothing: its id alone
        return Result(metrics={"trial_id": trial_id}, checkpoint=None, error=None, path=f"/runs/s/{trial_id}")
    epochs = [
        {"epoch": e, "val_acc": v, "val_loss": 1 - v, "val_top5": v, "train_loss": 1 - v, "train_acc": v,
         "macs": 1_000_000 + len(trial_id), "params": 1000, "images_per_second": 500.0, "time_total_s": 10.0 * e,
         "timestamp": 1000 + e, "trial_id": trial_id, "outcome": "running"}
        for e, v in enumerate(val_accs, 1)
    ]  # fmt: skip
    last = {**epochs[-1], "config": {**config, "data_dir": "/data/here"}}
    return Result(metrics=last, checkpoint=None, error=None, path=f"/runs/s/{trial_id}",
                  metrics_dataframe=pd.DataFrame(epochs))  # fmt: skip


def conditional_results(space, *, no_epoch: bool = False) -> list[Result]:
    base = {k: v for k, v in space.base_config().items() if k != "data_dir"}
    shared = {"stride1": 2, "stride2": 1, "dropout": 0.123456789, "weight_decay": 0.000123456789}
    sgd = {**base, **shared, "lr": 0.0987654321, "optimizer": "sgd", "momentum": 0.912345678, "nesterov": True,
           "scheduler": "step", "step_size": 7, "gamma": 0.2345678}  # fmt: skip
    adamw = {**base, **shared, "lr": 0.0123456789, "optimizer": "adamw", "scheduler": "cosine", "warmup_epochs": 2}
    results = [tune_result("t_sgd", sgd, [0.3, 0.4]), tune_result("t_adamw", adamw, [0.5, 0.6])]
    return results + ([tune_result("t_none", None, [])] if no_epoch else [])


def summary_of(space, results, **settings) -> tuple[pd.DataFrame, dict]:
    if settings:
        space = load_space(SPACE, settings, smoke=True)
    frame = trials_frame(results, space)
    pool = frame[frame.outcome == "completed"]
    best = pool.sort_values("val_acc", ascending=False).iloc[0]
    test = {"test_acc": 0.55, "test_top5": 0.8, "test_loss": 1.2}
    return frame, summarize(space, frame, pool, best, test, time.time(), "runs:/x/model", None)


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_the_best_config_is_the_winners_own_exact_config_without_placeholders(space):
    """An adamw winner showed `momentum=nan  nesterov=None  step_size=nan`, its values rounded to 4 digits, and
    summary.json held a bare NaN."""
    frame, summary = summary_of(space, conditional_results(space))
    assert summary["best_trial"] == "t_adamw"
    assert summary["best_config"] == {"stride1": 2, "stride2": 1, "dropout": 0.123456789,
                                      "weight_decay": 0.000123456789, "lr": 0.0123456789, "optimizer": "adamw",
                                      "scheduler": "cosine", "warmup_epochs": 2}  # fmt: skip
    config = trial_config(frame, "t_adamw")  # what best_config.json holds: searched and fixed, less data_dir
    assert config == {**summary["best_config"], **{k: v for k, v in space.base_config().items() if k != "data_dir"}}
    assert "momentum" not in config and "data_dir" not in config
    for row in summary["front"]["macs"]:
        assert set(row["config"]) <= set(frame.attrs["params"]) and None not in row["config"].values()
    assert strict_json(json.dumps(summary)) == json.loads(json.dumps(summary))
    text = format_summary(summary)
    assert "nan" not in text and "None" not in text
    assert "best config stride1=2  stride2=1  dropout=0.1235  weight_decay=0.0001235  lr=0.01235" in text


def test_the_summary_names_the_best_config_file(space):
    frame, summary = summary_of(space, conditional_results(space))
    summary["best_config_file"] = "/runs/s/best_config.json"
    assert "config file /runs/s/best_config.json" in format_summary(summary)


def test_a_time_budget_counts_trials_that_never_started_and_those_that_got_no_epoch(space):
    """Under TIME_BUDGET a trial Tune never created was missing from the counts, and one that got no epoch was a
    `stopped_early` row with no values."""
    frame, summary = summary_of(space, conditional_results(space, no_epoch=True), NUM_SAMPLES=5, TIME_BUDGET="1m")
    assert dict(zip(frame.trial_id, frame.outcome, strict=True))["t_none"] == "no_epoch"
    assert summary["outcomes"] == {"completed": 2, "no_epoch": 1, "not_started": 2}
    assert summary["trials"] == 5
    assert summary["epochs_trained"] == 4 and summary["epochs_if_all_full"] == 6  # the 3 trials that ran
    assert "trials      completed 2  no_epoch 1  not_started 2" in format_summary(summary)


def test_when_a_time_budget_stopped_every_trial_the_winner_is_judged_by_its_checkpoints_epoch(tmp_path):
    """A trial checkpoints at its last epoch and otherwise every CHECKPOINT_SECONDS, so one the time budget stopped
    may have trained past its last checkpoint: ranked by its last epoch, the winner's val_acc would be one its model
    never had, and a trial with no checkpoint would have no model to test."""
    space = load_space(SPACE, {"MAX_EPOCHS": 5}, smoke=True)
    config = {k: v for k, v in space.base_config().items() if k != "data_dir"}

    def stopped(trial_id: str, val_accs: list[float], checkpoint_epoch: int) -> Result:
        result = tune_result(trial_id, config, val_accs)
        if checkpoint_epoch:
            (tmp_path / trial_id).mkdir()
            checkpoint = Checkpoint.from_directory(tmp_path / trial_id)
            metrics = result.metrics_dataframe.iloc[checkpoint_epoch - 1].to_dict()
            result.checkpoint, result.best_checkpoints = checkpoint, [(checkpoint, metrics)]
        return result

    results = [stopped("a", [0.3, 0.5, 0.9], 1), stopped("b", [0.4, 0.6], 2), stopped("c", [0.95], 0)]
    frame = trials_frame(results, space)
    assert set(frame.outcome) == {"stopped_early"}
    pool = as_of_checkpoint(frame)
    assert sorted(zip(pool.trial_id, pool.epoch, pool.val_acc, strict=True)) == [("a", 1, 0.3), ("b", 2, 0.6)]
    assert pool.sort_values("val_acc").iloc[-1].trial_id == "b"  # not a (0.9 at epoch 3) nor c (no model)


def test_counts_of_one_are_singular(space):
    """ "1 trials" no other beats on both."""
    frame, summary = summary_of(space, conditional_results(space)[1:])
    text = format_summary(summary)
    assert "1 trial no other beats on both" in text and "1 trials" not in text


def study_of(completed: int, pruned: int = 0, extra: int = 0) -> optuna.Study:
    """A real two-objective study (as the course space's) of 3 + `extra` parameters."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(completed + pruned):
        trial = study.ask()
        lr, dropout = trial.suggest_float("lr", 1e-3, 0.3, log=True), trial.suggest_float("dropout", 0.0, 0.5)
        width = trial.suggest_categorical("width1", [32, 64])
        lr += sum(trial.suggest_float(f"x{k}", 0, 1) for k in range(extra))
        if i < completed:
            study.tell(trial, [lr - dropout, width * 1e6])
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return study


def logged(space, study, sqlite_uri, tmp_path) -> tuple[MlflowClient, str, dict]:
    """log_to_parent of a search of `study` into a parent run of a real sqlite store."""
    client = MlflowClient(sqlite_uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    results = conditional_results(space)
    frame = trials_frame(results, space)
    pool = frame[frame.outcome == "completed"]
    best = pool.sort_values("val_acc", ascending=False).iloc[0]
    summary = summarize(space, frame, pool, best, {"test_acc": 0.5, "test_top5": 0.8}, time.time(), "m", None, study)
    summary["best_config_file"] = str(write_best_config(tmp_path, trial_config(frame, best.trial_id)))
    log_to_parent(client, run_id, space, frame, pool, study, summary)
    return client, run_id, summary


def test_plots_of_too_few_trials_are_skipped_and_the_summary_says_so(space, sqlite_uri, tmp_path):
    """One completed trial drew an importance plot with every parameter at exactly 1/8, and parallel coordinates
    of a single line."""
    client, run_id, summary = logged(space, study_of(completed=1, pruned=3), sqlite_uri, tmp_path)
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {"plots/learning_curves.png", "plots/pareto_front.png"}
    tags = client.get_run(run_id).data.tags
    assert tags["plot.parallel_coordinates"] == "skipped: 1 completed trial; it needs 5 (one line per trial)"
    assert tags["plot.importance"] == "skipped: 1 completed trial; it needs 5 (more than the 3 searched parameters)"
    text = format_summary(summary)
    assert "plots       importance.png skipped: 1 completed trial; it needs 5" in text
    assert "plots       parallel_coordinates.png skipped: 1 completed trial" in text


@pytest.mark.slow  # fANOVA's forest of the importance plot: seconds on a loaded machine
def test_enough_trials_draw_every_plot(space, sqlite_uri, tmp_path):
    client, run_id, summary = logged(space, study_of(completed=5), sqlite_uri, tmp_path)
    assert "plots_skipped" not in summary
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"plots/importance.png", "plots/parallel_coordinates.png"} <= plots


def test_the_parents_summary_and_best_config_are_strict_json(space, sqlite_uri, tmp_path):
    # 5 completed trials of 5 parameters: parallel coordinates drawn, importance skipped (it needs 6)
    mine = plt.figure()  # a notebook's own figure: it stays open, and nothing of the search's is left open
    try:
        client, run_id, summary = logged(space, study_of(completed=5, extra=2), sqlite_uri, tmp_path)
        assert plt.get_fignums() == [mine.number]
    finally:
        plt.close(mine)
    assert list(summary["plots_skipped"]) == ["importance"]
    assert "plots/parallel_coordinates.png" in {a.path for a in client.list_artifacts(run_id, "plots")}
    folder = Path(client.download_artifacts(run_id, "", str(tmp_path / "down")))
    assert strict_json((folder / "summary.json").read_text())["best_config"] == summary["best_config"]
    best = strict_json((folder / "best_config.json").read_text())
    assert best["optimizer"] == "adamw" and best["lr"] == 0.0123456789 and "momentum" not in best


def search_result(space, study) -> SearchResult:
    """What `finish` returns of `conditional_results` and `study`, without a search."""
    frame = trials_frame(conditional_results(space), space)
    pool = frame[frame.outcome == "completed"]
    best = pool.sort_values("val_acc", ascending=False).iloc[0]
    test = {"test_acc": 0.5, "test_top5": 0.8}
    summary = summarize(space, frame, pool, best, test, time.time(), "m", None, study)
    return SearchResult(summary["best_config"], best.val_acc, test, "/runs/s", "r", "sqlite://", trials=frame,
                        pool=pool, ranking=Ranking("val_acc", "max"), summary=summary)  # fmt: skip


def test_the_results_plots_show_in_a_notebook_without_reading_files(space):
    """A notebook user asks the result for its plots; each shows as a PNG as a cell's value (IPython's own
    formatter, as the kernel runs it), and none is left in pyplot's list for the inline backend to show again."""
    result = search_result(space, study_of(completed=5))
    before = plt.get_fignums()
    curves, front, importance = result.plot_curves(), result.plot_front(), result.plot_importance()
    assert plt.get_fignums() == before
    assert len(curves.axes[0].lines) == 2 and front.axes[0].get_ylabel() == "val_acc"
    assert [t.get_text() for t in importance.axes[0].get_yticklabels()][::-1] == list(
        result.summary["importance"]["params"]
    )  # the most important on top
    for figure in (curves, front, importance):
        shown, _ = DisplayFormatter().format(figure)
        assert shown["image/png"].startswith(b"\x89PNG"), list(shown)


def test_an_importance_plot_of_too_few_trials_says_why(space):
    result = search_result(space, study_of(completed=1, pruned=3))
    with pytest.raises(ValueError, match=r"^1 completed trial; it needs 5 \(more than the 3 searched parameters\)$"):
        result.plot_importance()
    assert result.plot_curves().axes  # the other plots need no more trials


def test_importance_needs_more_completed_trials_than_searched_parameters():
    study = optuna.create_study()
    for i in range(6):
        trial = study.ask()
        study.tell(trial, sum(trial.suggest_float(f"p{k}", 0, 1) for k in range(7)) + i)
    assert thin_plots(study) == {"importance": "6 completed trials; it needs 8 (more than the 7 searched parameters)"}


def test_final_retrains_take_each_trials_own_config_without_placeholders(space):
    """`--final-top-k` built each retrain from the frame's columns: an sgd trial got `warmup_epochs=nan`, which
    the trainer refuses, so the retrain of a trial that did not use a conditional parameter errored."""
    from search.final import variants

    frame = trials_frame(conditional_results(space), space)
    both = variants(frame.sort_values("val_acc", ascending=False), seeds=2, seed=0)
    assert [(v["source_trial"], v["seed"]) for v in both] == [("t_adamw", 1), ("t_adamw", 2), ("t_sgd", 1),
                                                               ("t_sgd", 2)]  # fmt: skip
    sgd = both[2]
    assert "warmup_epochs" not in sgd and sgd["momentum"] == 0.912345678 and sgd["step_size"] == 7
    for v in both:
        TrainConfig.from_dict({**space.base_config(), **{k: x for k, x in v.items() if k != "source_trial"}})


@pytest.mark.parametrize("metric", sorted(METRICS_MODES))
def test_every_metric_a_space_may_name_is_reported(metric):
    """METRIC = "val_top5" trained every trial and then failed in the early-stopping audit with a KeyError: the
    per-epoch curves held val_acc and val_loss only. Each metric a space may name, through what follows the trials
    (the audit of 5 control trials, the fronts, PATIENCE, the summary and its plots), on its own MODE;
    test_search.py's test_a_metric_to_minimize_runs_end_to_end runs one whole search."""
    mode = METRICS_MODES[metric]
    sets = {"METRIC": metric, "MODE": mode, "NUM_SAMPLES": 5, "AUDIT_FRACTION": 1.0, "PATIENCE": 2}
    space = read_space(SPACE.with_name("vgg_fashion_mnist.py"), sets, smoke=True)  # its settings checked
    base = {k: v for k, v in space.base_config().items() if k != "data_dir"}
    curves = [[0.30, 0.50], [0.45, 0.40], [0.20, 0.60], [0.35, 0.55], [0.10, 0.20]]  # epoch 1 ranks them poorly
    results = [tune_result(f"t{i}", {**base, "lr": 0.01 * (i + 1)}, accs) for i, accs in enumerate(curves)]
    frame = trials_frame(results, space)
    pool = frame[frame.outcome == "completed"]
    best = pool.sort_values(metric, ascending=mode == "min").iloc[0]
    assert best.trial_id == "t2"  # the best final accuracy is the lowest final loss too
    test = {"test_acc": 0.5, "test_top5": 0.8, "test_loss": 1.2}
    summary = summarize(space, frame, pool, best, test, time.time(), "runs:/x/model", None)
    assert summary[f"best_{metric}"] == pytest.approx(0.6 if mode == "max" else 0.4)
    assert summary["audit"]["trials"] == 5 and list(summary["audit"]["rungs"]) == [1]
    assert summary["audit"]["rungs"][1] is not None and "consider GRACE_PERIOD" in summary["audit"]["warning"]
    assert f"{metric} {summary[f'best_{metric}']:.4f}" in format_summary(summary)
    assert len(plot_curves(frame, metric).axes[0].lines) == 5  # one curve per trial
    assert plot_front(frame, metric, mode, pool).axes[0].get_ylabel() == metric
