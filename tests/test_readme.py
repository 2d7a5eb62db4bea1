"""The README's commands as written, run the way a person runs them (STYLE.md: tests take the user's path).

Each test copies the project into a fresh folder (a clone, with this checkout's `.venv`, which `make setup` finds
ready), runs one of the README's command blocks there with bash from a shell that has no virtualenv active and no
MLflow, data or Ray settings, and then opens what the output prints the way a person would: it loads the model
URI in a new process, parses the JSON, asks the `mlflow ui` the link names. A README block is marked for this tier
by an HTML comment `<!-- test: NAME -->` on the line before it; a marked block that stops working fails here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from helpers import free_port

pytestmark = pytest.mark.slow  # whole searches from a fresh folder: minutes

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# What a person's shell does not have: the test runner's virtualenv, and settings that would steer the search.
UNSET = ("VIRTUAL_ENV", "PYTHONPATH", "MLFLOW_TRACKING_URI", "SEARCH_DATA_DIR", "RAY_ADDRESS", "RAY_AUTH_MODE")


def readme_blocks() -> dict[str, str]:
    """NAME -> the code of each README block marked `<!-- test: NAME -->`."""
    found = re.findall(r"^<!-- test: (\S+) -->\n```\w*\n(.*?)^```", README.read_text(), re.M | re.S)
    return dict(found)


def test_the_readme_marks_the_blocks_this_tier_runs():
    assert set(readme_blocks()) == {"quick-start", "offline", "fashion-mnist", "notebook", "train"}


@pytest.fixture
def clone(tmp_path) -> Path:
    """The project as a fresh clone has it (tracked and new files, no runs, data or stores), `.venv` shared."""
    folder = tmp_path / "vgg-search"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()  # fmt: skip
    for name in listed:
        if (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)  # keeps mtimes: `make setup` sees its stamp as current
    (folder / ".venv").symlink_to(Path(sys.prefix))
    # `make setup` reinstalls when pyproject.toml is newer than the venv's stamp, and an editable install from the
    # clone would point the shared venv at a folder that is gone after the test: the stamp is current here.
    stamp = Path(sys.prefix, ".installed")
    stamp.touch()
    os.utime(folder / "pyproject.toml", (stamp.stat().st_mtime - 1,) * 2)
    return folder


def person_env() -> dict[str, str]:
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


def sh(script: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Runs README lines with bash in `cwd`, as a person pastes them into a terminal."""
    return subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=cwd, env=person_env(), capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def lines_of(block: str) -> list[str]:
    """A block's commands, one per line (joining `\\` continuations)."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def printed(stdout: str, label: str) -> str:
    """The value after `label` on a summary line (`model       models:/m-...`)."""
    (line,) = [line for line in stdout.splitlines() if line.startswith(f"{label} ")]
    return line.split(maxsplit=1)[1].split("  (")[0].strip()


def load_model_as_a_person_would(uri: str, cwd: Path, image: tuple = (3, 32, 32)) -> list[int]:
    """Loads a printed model URI in a new process from the folder the search ran in; the shape of its output for
    three blank images (the model was logged with an example batch of two: its batch size must not be fixed)."""
    code = (
        "import sys, mlflow, torch\n"
        "model = mlflow.pytorch.load_model(sys.argv[1])\n"
        f"print(list(model(torch.zeros(3, {', '.join(map(str, image))})).shape))\n"
    )
    out = subprocess.run([str(cwd / ".venv/bin/python"), "-c", code, uri], cwd=cwd, env=person_env(),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_quick_start_offline_follows_the_missing_data_message_to_a_model_that_loads(clone):
    """A new user's first hour without internet: `make search` says what to do; doing it gives a search whose
    printed model, config and link all open."""
    blocks = readme_blocks()
    assert "make search" in lines_of(blocks["quick-start"])[0]
    first = sh("make search", clone)
    assert first.returncode != 0
    errors = [line for line in first.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    offline = lines_of(blocks["offline"])
    fake_cmd = offline[0].split("#")[0].strip()
    assert fake_cmd in errors[0], f"the message and the README's offline recipe disagree:\n{errors[0]}"

    search = "\n".join(line for line in offline if "mlflow ui" not in line)
    done = sh(search, clone)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (clone / "data").exists() or not any((clone / "data").iterdir())  # fake data stayed apart
    # the terminal: the table, the status line, the summary last; no line a person does not need (Ray printed a
    # checkpoint line per epoch of every trial, one of them after the summary)
    assert "Checkpoint successfully created" not in done.stdout + done.stderr
    said = [line for line in done.stdout.splitlines() if line.strip() and not line.startswith("make")]  # make's own
    assert said[-1].startswith("compare "), done.stdout[-2000:]
    assert load_model_as_a_person_would(printed(done.stdout, "model"), clone) == [3, 100]
    assert Path(printed(done.stdout, "checkpoint")).exists()

    (ui_line,) = [line for line in offline if "mlflow ui" in line]
    link = printed(done.stdout, "compare")
    port = free_port()
    ui = subprocess.Popen(["bash", "-c", f"exec {ui_line.split('#')[0].strip()} --port {port}"], cwd=clone,
                          env=person_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)  # fmt: skip
    try:
        assert link.startswith("http://127.0.0.1:5000/#/experiments/")
        address = f"http://127.0.0.1:{port}"
        experiment = re.search(r"#/experiments/(\d+)/", link).group(1)
        deadline = time.monotonic() + 120
        while True:
            try:
                answer = requests.get(f"{address}/ajax-api/2.0/mlflow/experiments/get",
                                      params={"experiment_id": experiment}, timeout=30)  # fmt: skip
                break
            except requests.RequestException:  # not listening yet, or not yet answering (a loaded machine)
                assert ui.poll() is None and time.monotonic() < deadline
                time.sleep(1)
        assert answer.ok and answer.json()["experiment"]["name"] == "vgg_cifar100"
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(30)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_the_fashion_mnist_line_runs_on_debians_real_data(clone):
    """The README's real-data line, on a budget of a minute or two (the budget is the only thing added)."""
    (line,) = lines_of(readme_blocks()["fashion-mnist"])
    command = line.split("#")[0].strip()
    budget = "--set NUM_SAMPLES=2 --max-epochs 1 --set TRAIN_SUBSET=2000 --set val_subset=500 --set test_subset=1000"
    done = sh(f'{command} ARGS="{budget}"', clone)
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_model_as_a_person_would(printed(done.stdout, "model"), clone, (1, 28, 28)) == [3, 10]


def test_the_notebook_snippet_runs_after_the_offline_data(clone):
    """The Python API as the README shows it, after the README's own step that writes the data it uses."""
    fake_cmd = lines_of(readme_blocks()["offline"])[0].split("#")[0].strip()
    assert sh(fake_cmd, clone).returncode == 0
    snippet = readme_blocks()["notebook"]
    code = snippet + "\nimport json\nprint('RESULT', json.dumps({'test_acc': result.test['test_acc'], " \
        "'model': result.summary['model'], 'best': result.best_config}))\n"  # fmt: skip
    out = subprocess.run([str(clone / ".venv/bin/python"), "-c", code], cwd=clone, env=person_env(),
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert 0 <= result["test_acc"] <= 1 and result["best"]
    assert load_model_as_a_person_would(result["model"], clone) == [3, 100]


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_the_train_example_trains_and_saves_where_it_says(clone):
    block = readme_blocks()["train"]
    done = sh(block, clone)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"test_acc \d\.\d+", done.stdout), done.stdout[-2000:]
    out = re.search(r"--out (\S+)", block).group(1)
    assert any((clone / out).iterdir())
