"""Importing the project leaves matplotlib's backend alone: `search.report` called `matplotlib.use("Agg")` at
import, which switched a notebook's inline plots off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from search.report import plot_curves, plot_front

ROOT = Path(__file__).parents[1]
INLINE = "module://matplotlib_inline.backend_inline"  # Jupyter's


@pytest.mark.slow  # a fresh Python that imports torch and Ray
def test_importing_the_project_keeps_a_notebooks_backend():
    code = "import matplotlib, search.report, search.run, search.final; print(matplotlib.get_backend())"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "MPLBACKEND": INLINE},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == INLINE


def test_the_reports_figures_stay_out_of_pyplots_state():
    """A figure left in pyplot's list is shown again by a notebook's inline backend at the end of its cell."""
    frame = pd.DataFrame({"trial_id": ["a", "b"], "outcome": ["completed", "stopped_early"], "val_acc": [0.5, 0.4],
                          "macs": [1e6, 2e6], "images_per_second": [100.0, 200.0]})  # fmt: skip
    frame.attrs["curves"] = {
        t: pd.DataFrame({"epoch": [1, 2], "val_acc": [0.3, v]}) for t, v in (("a", 0.5), ("b", 0.4))
    }
    before = plt.get_fignums()
    figures = [plot_curves(frame, "val_acc"), plot_front(frame, "val_acc", "max", frame)]
    assert plt.get_fignums() == before and all(f.axes for f in figures)
