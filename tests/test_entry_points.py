"""Every command line, run as a real `python -m` process: a mistake is one line on stderr and exit code 2.

The other tests call each `main` in-process through `cli.run_main`; only a real process shows what running a
module as `__main__` does (a module run that way is a second copy of itself: its error classes were once other
classes than the ones the command line caught, and a bad checkpoint printed a traceback).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a Python start per command that imports torch, Ray and MLflow: ~10 s each

ROOT = Path(__file__).parents[1]
SPACE = str(ROOT / "spaces/vgg_fashion_mnist.py")

COMMANDS = [
    (["search.run", SPACE, "--num-samples", "abc"], "--num-samples: must be an integer >= 1, got 'abc'"),
    (["search.run", "nowhere.py"], "nowhere.py: no such space file"),
    (["search.train", "--resume", "missing.pt"], "missing.pt: no such checkpoint"),
    (["search.train", "--epochs", "x"], "epochs: expected int"),
    (["search.data", "check", "--dataset", "svhn"], "invalid choice: 'svhn'"),
    (["search.fake_data", "--dataset", "mnist", "--out", "x", "--train", "0"], "--train: must be an integer >= 1"),
    (["search.tracking", "sync", "nowhere"], "nowhere: not a search folder"),
    (["search.submit", SPACE], "the following arguments are required: --address"),
]


def test_every_command_line_says_a_mistake_in_one_line_with_exit_code_2(tmp_path):
    procs = [
        (
            subprocess.Popen(
                [sys.executable, "-m", *argv], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ),
            argv,
            message,
        )  # fmt: skip
        for argv, message in COMMANDS
    ]
    for proc, argv, message in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (argv, err)
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written: no store, no runs, no data
