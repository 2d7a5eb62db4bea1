"""search.report: the accuracy-against-cost front and how the summary prints it."""

from __future__ import annotations

import pandas as pd
import pytest

from search.report import MIN_AUDIT_TRIALS, audit, format_summary, pareto_front
from search.space import Settings
from search.tuner import is_control


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


def test_the_summary_lists_each_front_member_with_its_cost_and_config():
    row = {"trial_id": "b", "val_acc": 0.85, "params": 908074, "macs": 26319872, "latency_ms": 1.234,
           "images_per_second": 2012.0, "config": {"width1": 16, "lr": 0.0123}}  # fmt: skip
    summary = {
        "best_trial": "b", "best_config": {"width1": 16, "lr": 0.0123}, "best_val_acc": 0.85, "test_acc": 0.84,
        "test_top5": 0.99, "outcomes": {"completed": 1}, "epochs_trained": 4, "epochs_if_all_full": 4,
        "cpu_hours": 0.1, "gpu_hours": 0.0, "wall_seconds": 60, "audit": {"rungs": {}, "warning": ""},
        "front": {"macs": [row]}, "model": "runs:/x/model", "best_checkpoint": "/tmp/x",
    }  # fmt: skip
    text = format_summary(summary)
    assert "val_acc against MACs per image: 1 trials" in text
    assert "b  val_acc 0.8500  26.3M MACs  908k params  1.23 ms  2012 img/s  width1=16  lr=0.0123" in text


def audited_frame(final_of_early, n: int = 40) -> pd.DataFrame:
    """Trials that ran 3 epochs: epoch 1 scores k/n, the final score is final_of_early(k/n)."""
    ids = [f"trial{k:02d}" for k in range(n)]
    curves = {
        t: pd.DataFrame({"epoch": [1, 2, 3], "val_acc": [k / n, k / n, final_of_early(k / n)]})
        for k, t in enumerate(ids)
    }
    frame = pd.DataFrame({"trial_id": ids, "outcome": "completed"})
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
    result = audit(audited_frame(lambda x: x, n=3), settings(AUDIT_FRACTION=1.0))
    assert result["rungs"] == {} and "3 control trials ran in full" in result["warning"]
    few = audit(audited_frame(lambda x: x, n=3), settings(AUDIT_FRACTION=0.1, NUM_SAMPLES=12))
    assert few["warning"].endswith("raise AUDIT_FRACTION to about 0.34, or set it to 0 to turn the audit off")


def test_an_audit_turned_off_warns_of_nothing():
    """AUDIT_FRACTION = 0 printed "warning  0 control trials ran in full ... needs 4" under every search."""
    result = audit(audited_frame(lambda x: x), settings(AUDIT_FRACTION=0.0))
    assert result == {"rungs": {}, "trials": 0, "warning": ""}
