"""The Python API in a real Jupyter kernel (nbclient + ipykernel), as the course's students use it: train one
config, run a search twice from one re-run cell and show its plots, interrupt a search (the kernel's interrupt,
Jupyter's stop button) and resume it, and a mistake in a space file, which must raise the project's own exception
with one line and leave the kernel alive (never SystemExit)."""

from __future__ import annotations

import asyncio
import textwrap
import threading
import time
from pathlib import Path

import nbformat
import pytest
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from search.fake_data import write_fake

pytestmark = pytest.mark.slow  # three searches in a kernel: minutes

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "spaces" / "vgg_fashion_mnist.py"
SMOKE_TRIALS = 4  # search.space.SMOKE_DEFAULTS["NUM_SAMPLES"]
INLINE = "module://matplotlib_inline.backend_inline"  # the backend a Jupyter kernel starts with


class Kernel:
    """One live kernel; `run(source)` executes a cell and returns its printed output."""

    def __init__(self, client: NotebookClient):
        self.client = client

    def run(self, source: str) -> str:
        self.cell = nbformat.v4.new_code_cell(textwrap.dedent(source))
        self.client.nb.cells.append(self.cell)
        self.client.execute_cell(self.cell, len(self.client.nb.cells) - 1)
        return self.printed()

    def printed(self) -> str:
        """What the last cell printed so far, its stderr included (Tune's and the product's messages)."""
        return "".join(o.get("text", "") for o in self.cell.outputs if o.output_type == "stream")


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebook")
    write_fake("fashion_mnist", str(root / "data"), train=640, test=100)
    client = NotebookClient(
        nbformat.v4.new_notebook(), timeout=600, kernel_name="python3", resources={"metadata": {"path": str(root)}}
    )
    with client.setup_kernel():
        kernel = Kernel(client)
        kernel.root = root
        kernel.run(f"""
            from search.run import search
            from search.train import TrainConfig, train
            from search.errors import SpaceError
            OPTIONS = dict(smoke=True, quiet=True, data_dir="data", storage="runs",
                           tracking_uri="sqlite:///{root}/mlflow.db", sets={{"MAX_CONCURRENT": 2}})
        """)
        yield kernel
        kernel.run("import ray; ray.shutdown()")


def test_train_runs_in_a_kernel(kernel):
    out = kernel.run("""
        result = train(TrainConfig(model="vgg7", dataset="fashion_mnist", data_dir="data", epochs=1,
                                   train_subset=256, batch_size=64))
        print("outcome", result.outcome, "epochs", result.epoch)
    """)
    assert "outcome completed epochs 1" in out
    assert "epoch   1  train_loss " in out, out  # it says how each epoch went, as it goes (it said nothing)


def test_a_search_cell_runs_twice_in_one_kernel(kernel):
    cell = f"""
        result = search("{SPACE}", **{{**OPTIONS, "quiet": False}})
        print("parent", result.parent_run_id, "trials", len(result.results))
    """
    parents = []
    for _ in range(2):  # the same cell, run again
        out = kernel.run(cell)
        assert f"trials {SMOKE_TRIALS}" in out, out
        # one live table that each report replaces, ending as the search ended, not a new table every 30 s
        tables = [o for o in kernel.cell.outputs if "trials: " in o.get("data", {}).get("text/plain", "")]
        assert len(tables) == 1 and f"trials: {SMOKE_TRIALS} done" in tables[0]["data"]["text/plain"], tables
        assert "trials: " not in out  # no table among the printed lines
        parents.append(out.split("parent ")[1].split()[0])
        time.sleep(1)  # a new default name (space + start time, to the second)
    client = MlflowClient(f"sqlite:///{kernel.root}/mlflow.db")
    assert len(set(parents)) == 2
    assert all(client.get_run(p).info.status == "FINISHED" for p in parents)

    for plot in ("plot_curves", "plot_front"):  # a figure as the cell's value, as a notebook user shows one
        kernel.run(f"result.{plot}()")
        kinds = [o.output_type for o in kernel.cell.outputs]
        assert any("image/png" in o.get("data", {}) for o in kernel.cell.outputs) and "error" not in kinds, kinds
    out = kernel.run("""
        import matplotlib
        print("backend", matplotlib.get_backend())
        try:
            result.plot_importance()
        except ValueError as e:
            print("no importance:", e)
    """)
    assert f"backend {INLINE}" in out  # the searches left the kernel's inline plots on
    assert "no importance: " in out and "it needs" in out, out  # a smoke search has too few trials for one


def test_an_interrupted_search_resumes_in_the_same_kernel(kernel):
    runs = kernel.root / "runs"
    interrupted = threading.Event()

    def interrupt_once_trials_report():  # the stop button, while trials are training
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if any(p.stat().st_size for p in runs.glob("interrupted/*/result.json")):
                asyncio.run(kernel.client.km.interrupt_kernel())  # as Jupyter does: SIGINT to the kernel
                interrupted.set()
                return
            time.sleep(0.5)

    interrupter = threading.Thread(target=interrupt_once_trials_report, daemon=True)
    interrupter.start()
    with pytest.raises(CellExecutionError) as stopped:
        kernel.run(f'search("{SPACE}", name="interrupted", **OPTIONS)')
        pytest.fail(f"the search ran to its end; interrupted: {interrupted.is_set()}; it printed:\n{kernel.printed()}")
    interrupter.join()
    # a KeyboardInterrupt (search.errors.Interrupted) that says how to resume
    assert stopped.value.ename == "Interrupted" and "resume=True" not in stopped.value.evalue, stopped.value.evalue
    assert "--resume --name interrupted" in stopped.value.evalue, stopped.value.evalue

    out = kernel.run(f"""
        result = search("{SPACE}", name="interrupted", resume=True, **OPTIONS)
        print("trials", len(result.results), "status", result.results.num_terminated)
    """)
    assert f"trials {SMOKE_TRIALS} status {SMOKE_TRIALS}" in out, out
    client = MlflowClient(f"sqlite:///{kernel.root}/mlflow.db")
    parent = client.search_runs(
        [client.get_experiment_by_name("vgg_fashion_mnist").experiment_id], "attributes.run_name = 'interrupted'"
    )
    assert [p.info.status for p in parent] == ["FINISHED"]  # one parent: the resumed search kept it


def test_a_bad_space_file_raises_the_projects_error_and_the_kernel_lives_on(kernel):
    bad = kernel.root / "bad_space.py"
    bad.write_text(SPACE.read_text().replace('METRIC = "val_acc"', 'METRIC = "val_accuracy"'))
    with pytest.raises(CellExecutionError) as error:
        kernel.run(f'search("{bad}", **OPTIONS)')
    assert error.value.ename == "SpaceError", error.value.ename
    assert "\n" not in error.value.evalue and "bad_space.py" in error.value.evalue, error.value.evalue
    out = kernel.run("""
        try:
            search("missing_space.py", **OPTIONS)
        except SpaceError as e:
            print("caught:", e)
    """)
    assert "caught:" in out and "missing_space.py" in out
