"""What a person sees in the MLflow UI after a search, checked in a real browser (Debian's chromium, driven by
Playwright) against `mlflow ui` on the store of a finished smoke search.

Screenshots of a failing check are kept under test-artifacts/ (the path is in the failure message).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from search.fake_data import write_fake

pytestmark = pytest.mark.slow  # a whole search and a browser: minutes

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
# What chromium needs in a container (no sandbox, no GPU, small /dev/shm) and nothing it would fetch
# from the network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
SMOKE_TRIALS = 4  # search.space.SMOKE_DEFAULTS["NUM_SAMPLES"]


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory) -> dict:
    """A smoke search of the Fashion-MNIST space on fake data, recorded in a sqlite store."""
    root = tmp_path_factory.mktemp("ui")
    write_fake("fashion_mnist", str(root / "data"), train=600, test=200)
    uri = f"sqlite:///{root}/mlflow.db"
    out = subprocess.run(
        [sys.executable, "-m", "search.run", "spaces/vgg_fashion_mnist.py", "--smoke", "--quiet", "--name", "ui",
         "--data-dir", str(root / "data"), "--storage", str(root / "runs"), "--tracking-uri", uri,
         "--set", "MAX_CONCURRENT=2"],
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
    return {"uri": uri, "path": path, "experiment_id": experiment.experiment_id, "trials": trials, "root": root}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(finished_search) -> Iterator[str]:
    """`mlflow ui` on the search's store, as a person starts it; its address."""
    port = free_port()
    log = finished_search["root"] / "ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [Path(sys.executable).parent / "mlflow", "ui", "--backend-store-uri", finished_search["uri"],
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


def test_the_chart_view_draws_every_trials_learning_curve_and_the_parameters_in_parallel(finished_search, ui, page):
    page.goto(f"{ui}/{finished_search['path']}")
    for trial_id in finished_search["trials"]:  # a line of the val_acc chart, by its legend entry
        page.get_by_text(f"{trial_id} (val_acc)").first.wait_for()
    page.locator("svg text", has_text=re.compile(r"^weight_decay$")).first.wait_for()  # parallel coordinates
    axes = set(page.locator("svg text").all_text_contents())
    for param in ("lr", "dropout", "weight_decay", "stride1", "val_acc"):  # each an axis
        assert param in axes, param
    curves = page.locator(".js-plotly-plot").first.locator("path.js-line")
    curves.nth(SMOKE_TRIALS - 1).wait_for()  # one drawn line per trial, not an empty chart
    page.get_by_text(re.compile(r"^macs vs\. val_acc$")).first.wait_for()  # the accuracy-cost scatter
    page.locator(".js-plotly-plot path.point").nth(SMOKE_TRIALS - 1).wait_for()  # a point per trial


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
