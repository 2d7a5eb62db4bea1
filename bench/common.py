"""What every benchmark shares: repeated measurements, their one-line summary, and the output folder."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

RESULT_MARK = "BENCH_RESULT "  # a child process prints its result as this mark and one line of JSON

# Scratch space for data, Ray and MLflow stores and the JSON of every figure; `make clean` removes it.
OUT = Path(os.environ.get("BENCH_OUT", Path(__file__).parent / "out"))


def out_dir(*parts: str) -> Path:
    path = OUT.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def spread(values: Sequence[float]) -> tuple[float, float, float, int]:
    """(median, min, max, n) of repeated measurements."""
    return statistics.median(values), min(values), max(values), len(values)


def line(name: str, values: Sequence[float], unit: str = "", fmt: str = ".3g", note: str = "") -> str:
    """One figure as `name: median (min..max over n) note`, the format every script prints."""
    med, lo, hi, n = spread(values)
    unit = f" {unit}" if unit else ""
    return f"{name}: {med:{fmt}}{unit} ({lo:{fmt}}..{hi:{fmt}} over {n}){' ' + note if note else ''}"


def verdict(ok: bool, target: str) -> str:
    return f"[target {target}: {'met' if ok else 'MISSED'}]"


def child_result(data: dict) -> None:
    """What a child process started by `run_child` prints as its result."""
    print(RESULT_MARK + json.dumps(data, default=str), flush=True)


def emit(text: str) -> None:
    print(text, flush=True)


def save(name: str, data: dict) -> Path:
    """Writes a benchmark's raw numbers to bench/out/<name>.json, for the README and for later checks."""
    path = out_dir() / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def run_child(module: str, args: Sequence[str], timeout: float) -> dict:
    """Runs `python -m module args` in a fresh process and returns the JSON it printed after RESULT_MARK.

    A fresh process per measurement: Ray starts and stops inside it, and no cache carries over.
    """
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).parent.parent,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise RuntimeError(f"python -m {module} {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1].removeprefix(RESULT_MARK))


def run_seeds(module: str, kinds: Sequence[str], seeds: Sequence[int], quick: bool) -> dict[str, list[dict]]:
    """Each kind of search once per seed, each in a fresh process: `python -m module --one KIND --seed SEED`."""
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for seed in seeds:
        for kind in kinds:
            args = ["--one", kind, "--seed", str(seed), *(["--quick"] if quick else [])]
            runs[kind].append(run_child(module, args, 3600))
    return runs
