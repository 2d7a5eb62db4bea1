"""What a person sees in the MLflow UI after a search, checked in a real browser (Debian's chromium, driven by
Playwright) against `mlflow ui` on one store: a finished smoke search whose trials all run in full, and a search
logged straight into the store in which ASHA stopped one trial after its first epoch.

Screenshots of a failing check are kept under test-artifacts/ (the path is in the failure message).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from helpers import free_port
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from search import mlflow_ui
from search.fake_data import write_fake
from search.tracking import STATUS, ensure_experiment, start_parent

# a whole search and a browser: minutes; its tests share them, so they run on one xdist worker (a module
# fixture is made once per worker)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mlflow_ui")]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
# What chromium needs in a container (no sandbox, no GPU, small /dev/shm) and nothing it would fetch
# from the network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
SMOKE_TRIALS = 4  # search.space.SMOKE_DEFAULTS["NUM_SAMPLES"]
# Every trial of the smoke search runs its EPOCHS in full: with ASHA's grace period as long as a trial, which trials
# it stops (and so whether a curve is a line or a point) no longer depends on the order results arrive in.
EPOCHS = 2  # search.space.SMOKE_DEFAULTS["MAX_EPOCHS"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, _empty_store) -> tuple[Path, str]:
    """A sqlite store (its tables made before the UI or a search opens it): its folder and URI."""
    root = tmp_path_factory.mktemp("ui")
    shutil.copy(_empty_store, root / "mlflow.db")
    return root, f"sqlite:///{root}/mlflow.db"


@pytest.fixture(scope="module")
def finished_search(store) -> dict:
    """A smoke search of the Fashion-MNIST space on fake data, recorded in the store; no trial stopped early."""
    root, uri = store
    write_fake("fashion_mnist", str(root / "data"), train=600, test=200)
    out = subprocess.run(
        [sys.executable, "-m", "search.run", "spaces/vgg_fashion_mnist.py", "--smoke", "--quiet", "--name", "ui",
         "--data-dir", str(root / "data"), "--storage", str(root / "runs"), "--tracking-uri", uri,
         "--set", "MAX_CONCURRENT=2", "--set", f"MAX_EPOCHS={EPOCHS}", "--set", f"GRACE_PERIOD={EPOCHS}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (compare,) = [line for line in out.stdout.splitlines() if line.startswith("compare ")]
    path = re.search(r"(#/experiments/\S+)", compare).group(1)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("vgg_fashion_mnist")
    runs = client.search_runs([experiment.experiment_id])
    trials = {r.data.tags["trial_id"]: r for r in runs if "trial_id" in r.data.tags}
    assert len(trials) == SMOKE_TRIALS
    assert {(r.data.tags["outcome"], r.data.tags["epoch"]) for r in trials.values()} == {("completed", str(EPOCHS))}
    return {"uri": uri, "path": path, "experiment_id": experiment.experiment_id, "trials": trials, "root": root}


@pytest.fixture(scope="module")
def stopped_trial_search(store) -> dict:
    """A search as the store holds it when ASHA stopped one trial after its first epoch and two ran both epochs,
    logged straight into the store (no Ray, no ASHA timing), with the view `save_view` saves for it."""
    _, uri = store
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "stopped")
    parent = start_parent(client, experiment_id, "the-search", {"NUM_SAMPLES": 3}, {}, {})
    trials = {"5e3a1_00000": [0.42, 0.61], "5e3a1_00001": [0.18], "5e3a1_00002": [0.37, 0.55]}
    for i, (trial_id, curve) in enumerate(trials.items()):
        outcome = "completed" if len(curve) == EPOCHS else "stopped_early"
        tags = {MLFLOW_PARENT_RUN_ID: parent, "trial_id": trial_id, "stage": "search", "outcome": outcome,
                "epoch": str(len(curve))}  # fmt: skip
        run_id = client.create_run(experiment_id, run_name=trial_id, tags=tags).info.run_id
        metrics = [
            Metric(k, v, 0, epoch)
            for epoch, acc in enumerate(curve, 1)
            for k, v in (
                ("val_acc", acc),
                ("macs", 1e6 * (i + 1)),
                ("best_val_acc", max(curve[:epoch])),
                ("best_epoch", epoch),
            )
        ]  # fmt: skip (the curves rise: the last epoch is the best)
        client.log_batch(run_id, metrics=metrics, params=[Param("lr", str(0.01 * (i + 1))), Param("dropout", "0.1")])
        client.set_terminated(run_id, status=STATUS[outcome])
    client.log_batch(parent, metrics=[Metric("best_val_acc", 0.61, 0, 0), Metric("test_acc", 0.6, 0, 0)])
    client.set_terminated(parent)
    path = mlflow_ui.save_view(client, experiment_id, parent, "val_acc", ["lr", "dropout"])
    return {"path": path, "trials": list(trials), "stopped": "5e3a1_00001", "parent": "the-search"}


@pytest.fixture(scope="module")
def ui(store) -> Iterator[str]:
    """`mlflow ui` on the store, as a person starts it; its address."""
    root, uri = store
    port = free_port()
    log = root / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [Path(sys.executable).parent / "mlflow", "ui", "--backend-store-uri", uri,
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{address}/health", timeout=5).ok:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        yield address
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    """A fresh page (no UI state remembered from another test); screenshots it when its test fails."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"{request.node.name}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
    context.close()


def test_the_printed_link_opens_the_trials_as_model_training_with_val_acc_source_and_dataset(finished_search, ui, page):
    page.goto(f"{ui}/{finished_search['path'].replace('compareRunsMode=CHART', 'compareRunsMode=TABLE')}")
    page.get_by_role("columnheader", name="val_acc").first.wait_for()
    assert "workflowType=machine_learning" in page.url  # the training view, not the GenAI overview
    body = page.inner_text("body")
    for trial_id, run in finished_search["trials"].items():  # the parent's trials, expanded under it
        assert trial_id in body
        assert f"{run.data.metrics['val_acc']:.4g}"[:4] in body  # its val_acc, as the table rounds it
    assert "traces" not in page.url.lower() and "Token Usage" not in body


# Whether a person sees an element: it has a size and lies inside every box that clips it. A chart's legend is two
# rows that scroll: an entry below them is in the page, out of sight.
IN_SIGHT = """e => {
    const b = e.getBoundingClientRect();
    if (!b.width || !b.height) return false;
    for (let p = e.parentElement; p; p = p.parentElement) {
        const s = getComputedStyle(p);
        if (s.overflowX === 'visible' && s.overflowY === 'visible') continue;
        const c = p.getBoundingClientRect();
        if (b.top < c.top - 1 || b.bottom > c.bottom + 1 || b.left < c.left - 1 || b.right > c.right + 1) return false;
    }
    return true;
}"""
# A Plotly chart's traces by name: the points each holds and how many of its marks (lines, points) have a size.
# Plotly draws a one-point curve as a point beside a zero-length line that nobody sees.
DRAWN = """plot => {
    const drawn = {};
    for (const g of plot.querySelectorAll('g.trace.scatter')) {
        const name = g.__data__[0].trace.name, seen = drawn[name] || {points: 0, marks: 0};
        const marks = [...g.querySelectorAll('path.js-line, path.point')].filter(p => {
            const b = p.getBoundingClientRect();
            return b.width > 0 || b.height > 0;
        });
        drawn[name] = {points: Math.max(seen.points, g.__data__.length), marks: seen.marks + marks.length};
    }
    return drawn;
}"""


def learning_curves(page, trials: list[str], metric: str = "val_acc") -> dict:
    """What the view's first chart (the learning curves) draws of each trial, once it draws every one of them
    visibly; each trial's legend entry must be in sight."""
    plot = page.locator(".js-plotly-plot").first
    deadline = time.monotonic() + 30
    while True:
        drawn = plot.evaluate(DRAWN) if plot.count() else {}
        if all(drawn.get(t, {}).get("marks") for t in trials) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert all(drawn.get(t, {}).get("marks") for t in trials), drawn  # a line or a point per trial
    for trial_id in trials:  # and its name beside its colour
        assert page.get_by_text(f"{trial_id} ({metric})", exact=True).evaluate(IN_SIGHT), trial_id
    return drawn


def test_the_chart_view_draws_every_trials_learning_curve_and_the_parameters_in_parallel(finished_search, ui, page):
    page.goto(f"{ui}/{finished_search['path']}")
    drawn = learning_curves(page, list(finished_search["trials"]))
    assert {drawn[t]["points"] for t in finished_search["trials"]} == {EPOCHS}
    page.locator("svg text", has_text=re.compile(r"^weight_decay$")).first.wait_for()  # parallel coordinates
    axes = set(page.locator("svg text").all_text_contents())
    for param in ("lr", "dropout", "weight_decay", "stride1", "val_acc"):  # each an axis
        assert param in axes, param
    page.get_by_text(re.compile(r"^macs vs\. val_acc$")).first.wait_for()  # the accuracy-cost scatter
    scatter = page.locator(".js-plotly-plot").last.locator("path.point")  # the view's last chart
    scatter.nth(SMOKE_TRIALS - 1).wait_for()
    assert scatter.count() == SMOKE_TRIALS  # a point per trial
    assert page.get_by_text("ui (val_acc)").count() == 0  # the parent run is no curve's legend entry


def test_a_trial_stopped_after_one_epoch_is_a_named_point_among_trials_only(stopped_trial_search, ui, page):
    """ASHA's stopped trials: one epoch, so a point where the others are lines. A person must see it, find its name
    in the legend, and read in the table's outcome column that it stopped early. The search's parent run is no
    trial: it is not among the runs compared, nor in any chart's legend."""
    search, trials = stopped_trial_search, stopped_trial_search["trials"]
    page.goto(f"{ui}/{search['path']}")
    drawn = learning_curves(page, trials)
    assert drawn[search["stopped"]]["points"] == 1
    page.get_by_text(re.compile(r"^macs vs\. val_acc$")).first.wait_for()
    scatter = page.locator(".js-plotly-plot").last.locator("path.point")  # the view's last chart
    scatter.nth(len(trials) - 1).wait_for()
    assert scatter.count() == len(trials)
    assert page.get_by_text(search["parent"]).count() == 0  # no row, no legend entry (the scatter's names runs)

    page.goto(f"{ui}/{search['path'].replace('compareRunsMode=CHART', 'compareRunsMode=TABLE')}")
    page.get_by_role("columnheader", name="outcome").first.wait_for()
    body = page.inner_text("body")
    assert f"{len(trials)} matching runs" in body and search["parent"] not in body
    cells = page.locator("[role=row]", has_text=search["stopped"]).first
    row = cells.get_attribute("row-index")
    assert "stopped_early" in " ".join(page.locator(f"[role=row][row-index='{row}']").all_inner_texts())


def test_a_person_opening_the_experiment_sees_its_runs_with_source_and_dataset(finished_search, ui, page):
    """From the experiments list: MLflow 3.17 opens every experiment in the view its global GenAI / Model training
    switch names (GenAI until a person picks the other once; the browser remembers it), whatever the experiment's
    kind tag says. So: pick "Model training" once, open the experiment, and its runs table is there."""
    page.goto(f"{ui}/#/experiments")
    page.get_by_role("button", name="Model training").click()
    page.get_by_role("link", name="vgg_fashion_mnist").first.click()
    page.wait_for_url(re.compile(r".*/runs.*"))
    page.get_by_text("ui", exact=True).first.wait_for()
    body = page.inner_text("body")
    assert f"{SMOKE_TRIALS + 1} matching runs" in body
    assert "fashion_mnist (" in body and "run.py" in body  # the Dataset and Source columns are filled
