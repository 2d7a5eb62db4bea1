"""`make test` runs two pytest-xdist workers with `--dist loadgroup`: the tests marked xdist_group("cluster") share
one worker, so the cluster's module fixtures (two Ray nodes, an MLflow server, a two-node Slurm) are made once and
one Slurm never queues two jobs, and each heavy module fixture or session search is made once. pytest 9.2 broke
that silently (pytest-xdist#1386: xdist tags grouped tests through a node id that pytest 9.2 no longer reads): every
grouped test went its own way and both workers built the clusters.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

GROUPED = """
import pytest

pytestmark = pytest.mark.xdist_group("one")


@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    pass
"""


@pytest.mark.slow  # two xdist workers, each a Python that starts pytest: seconds
def test_tests_of_one_xdist_group_run_on_one_worker(tmp_path: Path):
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider",
         "test_grouped.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    workers = re.findall(r"^\[(gw\d)\].*PASSED test_grouped\.py::test_grouped", result.stdout, re.MULTILINE)
    assert len(workers) == 6 and len(set(workers)) == 1, result.stdout[-3000:]
