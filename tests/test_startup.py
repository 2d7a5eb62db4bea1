"""Issue 19: a command-line mistake answers in about a second, so it is found before torch, Ray and MLflow load.

Each check runs `search.run`'s command line in a fresh interpreter and then looks at what that interpreter
imported: torch, torchvision, Ray and MLflow take seconds each (bench/startup.py times the whole command).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
HEAVY = ("torch", "torchvision", "ray", "mlflow")

# Runs each command line in turn through `cli.run_main`, as `python -m search.run` does, then prints what each
# said (exit code, last line of its output) and which heavy packages the interpreter holds.
CHILD = """
import contextlib, io, json, sys
from search import cli
from search.run import main
said = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            cli.run_main(main, argv)
        except SystemExit as exc:
            code = exc.code
    said.append([code, out.getvalue().strip().splitlines()[-1:]])
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(",")))
print(json.dumps({"said": said, "loaded": loaded}))
"""


def _run(argvs: list[list[str]], heavy: tuple[str, ...]) -> dict:
    proc = subprocess.run(  # from the checkout, so that this checkout's `search` is the one imported
        [sys.executable, "-c", CHILD, json.dumps(argvs), ",".join(heavy)], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_command_line_mistake_is_found_before_torch_ray_and_mlflow_load(tmp_path):
    body = """
        DATASET = "cifar10"
        MODEL = "vgg7"
        {extra}
        def space(trial):
            trial.suggest_float("lr", 1e-3, 0.1, log=True)
    """
    files = {}
    for name, extra in [("unknown", "EPOCHS = 3"), ("badtype", 'MAX_EPOCHS = "ten"'), ("good", "")]:
        files[name] = tmp_path / f"{name}.py"
        files[name].write_text(textwrap.dedent(body.format(extra=extra)))
    good = str(files["good"])
    cases = [
        ([good, "--bogus"], 2, "unrecognized arguments: --bogus"),
        ([good, "--num-samples", "abc"], 2, "--num-samples: must be an integer >= 1, got 'abc'"),
        ([str(tmp_path / "nowhere.py")], 2, "nowhere.py: no such space file"),
        ([str(files["unknown"])], 2, "unknown setting EPOCHS"),
        ([str(files["badtype"])], 2, "MAX_EPOCHS must be int"),
        ([good, "--set", "MAX_EPOCHS=0"], 2, "MAX_EPOCHS=0: must be at least 1"),
        ([good, "--set", "EPOCHS=3"], 2, "--set EPOCHS: unknown setting"),
        ([good, "--storage", "foo://bucket/runs"], 2, "foo://bucket/runs: storage pyarrow cannot open"),
        ([good, "--storage", str(files["good"])], 2, "cannot write there"),
        ([good, "--final-top-k", "2", "--final-front"], 2, "retrain one or the other"),
        (["--help"], 0, ""),
    ]
    found = _run([argv for argv, _, _ in cases], HEAVY)
    for (argv, code, message), (got_code, last) in zip(cases, found["said"], strict=True):
        assert got_code == code, (argv, got_code, last)
        assert message in (last[0] if last else ""), (argv, last)
    assert found["loaded"] == [], f"a mistake on the command line imported {found['loaded']}"


@pytest.mark.slow  # ray.tune takes about 2 s to import
def test_a_mistake_in_a_shipped_space_file_is_found_before_torch_and_mlflow_load(tmp_path):
    """The shipped files import ray.tune themselves (their samplers); torch and MLflow still wait."""
    space = str(ROOT / "spaces/vgg_cifar10.py")
    found = _run([[space, "--set", "MAX_EPOCHS=0"], [space, "--set", "GRACE_PERIOD=30"]], HEAVY)
    assert [code for code, _ in found["said"]] == [2, 2], found
    assert "MAX_EPOCHS=0: must be at least 1" in found["said"][0][1][0]
    assert "GRACE_PERIOD=30: must not exceed MAX_EPOCHS" in found["said"][1][1][0]
    assert found["loaded"] == ["ray"], found["loaded"]


def test_sync_imports_neither_torch_torchvision_nor_optuna():
    """`python -m search.tracking sync` reads a search's record and writes MLflow runs: it needs none of them (it
    imported torch for the versions a new search records, and torchvision for the dataset's default folder)."""
    code = "import sys, search.tracking; print([m for m in ('torch', 'torchvision', 'optuna') if m in sys.modules])"
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert got.stdout.strip() == "[]", got.stdout + got.stderr
