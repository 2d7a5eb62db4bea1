"""Start-up: how long a command-line mistake, or `--help`, takes to answer, against importing the heavy stack.

Issue 19: a mistake took 9.6 s to appear, as long as `python -c "import torch, torchvision, mlflow, ray.tune"`;
`search.run` now checks the flags, --storage and the space file's settings before it imports any of those.
Each command runs as a fresh `python` process from the checkout, timed with `time.perf_counter` around
`subprocess.run`, in turns with the baseline (the same imports, timed in the same turn), so that a busy moment
of the shared machine slows both. Each figure is the median over the turns of (command / baseline), with its
min..max; the target is at most 0.3x for every `search.run` mistake and `--help`.

    python -m bench.startup [--quick] [--reps 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from bench.common import emit, line, out_dir, save, verdict

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ["-c", "import torch, torchvision, mlflow, ray.tune"]
TARGET = 0.3  # of the baseline, for search.run
SHIPPED = "spaces/vgg_cifar10.py"  # imports ray.tune itself, for its samplers
# A define-by-run space file with a setting that does not exist: it imports nothing.
UNKNOWN_SETTING = """
DATASET = "cifar10"
MODEL = "vgg7"
EPOCHS = 3  # not a setting: MAX_EPOCHS is
def space(trial):
    trial.suggest_float("lr", 1e-3, 0.1, log=True)
"""


TRIAL_WORKER = "import ray; from ray import tune; import search.trainable"

# An S3 endpoint that refuses connections (a mistyped port): pyarrow's from_uri retried it for about 6 s.
REFUSING_S3 = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b",
               "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


def commands(scratch: Path) -> dict[str, tuple[list[str], int, bool, dict | None]]:
    """name -> (python arguments, expected exit code, whether the 0.3x target applies, environment to add)."""
    unknown = scratch / "unknown_setting.py"
    unknown.write_text(textwrap.dedent(UNKNOWN_SETTING))
    run = ["-m", "search.run"]
    cmds = {
        "run --help": ([*run, "--help"], 0, True),
        "run: bad flag": ([*run, SHIPPED, "--bogus"], 2, True),
        "run: missing space file": ([*run, str(scratch / "nowhere.py")], 2, True),
        "run: bad --storage (issue 19's command)": ([*run, SHIPPED, "--storage", "s3://x"], 2, True),
        "run: unknown setting": ([*run, str(unknown)], 2, True),
        "run: bad setting in a shipped space (imports ray.tune)": ([*run, SHIPPED, "--set", "MAX_EPOCHS=0"], 2, True),
        "submit --help": (["-m", "search.submit", "--help"], 0, False),
        "submit: bad flag": (["-m", "search.submit", SHIPPED, "--bogus"], 2, False),
        "tracking --help": (["-m", "search.tracking", "--help"], 0, False),
        "train --help": (["-m", "search.train", "--help"], 0, False),
        "data --help": (["-m", "search.data", "--help"], 0, False),
        "fake_data --help": (["-m", "search.fake_data", "--help"], 0, False),
        # What each Ray worker process that runs trials imports, now that its data comes from the driver (`adopt`),
        # and with torchvision as well, as every trial worker imported it before
        "a trial worker's imports": (["-c", TRIAL_WORKER], 0, False),
        "a trial worker's imports with torchvision (before)": (["-c", "import torchvision; " + TRIAL_WORKER], 0, False),
    }
    cmds = {name: (*c, None) for name, c in cmds.items()}
    cmds["run: --storage at a refusing endpoint"] = ([*run, SHIPPED, "--storage", "s3://x/runs"], 2, True, REFUSING_S3)
    return cmds


def timed(args: list[str], code: int | None = None, env: dict | None = None) -> float:
    env = {**os.environ, **(env or {})}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    seconds = time.perf_counter() - start
    if code is not None and proc.returncode != code:
        raise RuntimeError(f"python {' '.join(args)}: exit {proc.returncode}, expected {code}:\n{proc.stderr[-2000:]}")
    if code == 2 and len(proc.stderr.strip().splitlines()) != 1:
        raise RuntimeError(f"python {' '.join(args)}: a mistake must be one line, got:\n{proc.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 turns instead of --reps")
    p.add_argument("--reps", type=int, default=7, help="turns: the baseline, then every command once")
    args = p.parse_args(argv)
    reps = 3 if args.quick else args.reps
    cmds = commands(out_dir("startup"))
    timed(BASELINE)  # once untimed: the first import of a package reads its files from disk
    base: list[float] = []
    took: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(reps):
        base.append(timed(BASELINE, 0))
        for name, (cmd, code, _, env) in cmds.items():
            took[name].append(timed(cmd, code, env))
    emit(line("startup.baseline: python -c 'import torch, torchvision, mlflow, ray.tune'", base, "s"))
    figures: dict = {"baseline_s": base, "reps": reps}
    missed = []
    for name, (cmd, _, targeted, _) in cmds.items():
        ratios = [t / b for t, b in zip(took[name], base, strict=True)]
        ok = statistics.median(ratios) <= TARGET
        note = f"(median {statistics.median(took[name]):.2f} s)"
        if targeted:
            note += f" {verdict(ok, f'<= {TARGET}x')}"
        emit(line(f"startup.{name} / baseline", ratios, "x", ".2f", note))
        figures[name] = {"argv": cmd, "seconds": took[name], "ratio": ratios}
        if targeted and not ok:
            missed.append(name)
    save("startup", figures)
    if missed:
        emit(f"startup: target missed by {', '.join(missed)}")
    return figures


if __name__ == "__main__":
    main()
    sys.exit(0)
