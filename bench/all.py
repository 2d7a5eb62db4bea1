"""`make bench`: every benchmark, one after another, each in its own process; one line per figure.

    python -m bench.all [--quick] [--only throughput,overhead]

The figures also land in bench/out/<name>.json and, all lines together, in bench/out/all.txt.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.common import emit, out_dir

BENCHMARKS = ("throughput", "overhead", "efficiency", "knobs", "narrow", "feedback", "memory", "gpu", "startup",
              "scale")  # fmt: skip


def machine() -> str:
    cpu = next(
        (x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in x),
        platform.processor(),
    )
    mem = next(x.split()[1] for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, {int(mem) / 2**20:.0f} GB RAM, load average {load}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.all", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="every benchmark's --quick: a fast check")
    p.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated benchmarks to run")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        p.error(f"unknown benchmark {', '.join(sorted(unknown))}; choose from {', '.join(BENCHMARKS)}")
    lines = [f"# {time.strftime('%Y-%m-%d %H:%M')} {machine()}"]
    emit(lines[0])
    start, failed = time.perf_counter(), []
    for name in names:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", f"bench.{name}", *(["--quick"] if args.quick else [])]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent
        )
        for row in proc.stdout:
            emit(row.rstrip())
            lines.append(row.rstrip())
        err = proc.stderr.read()
        if proc.wait() != 0:
            failed.append(name)
            tail = "\n".join(err.strip().splitlines()[-15:])
            emit(f"{name}: FAILED (exit {proc.returncode})\n{tail}")
            lines.append(f"{name}: FAILED (exit {proc.returncode})")
        lines.append(f"# {name} took {time.perf_counter() - t0:.0f} s")
        emit(lines[-1])
    lines.append(
        f"# total {time.perf_counter() - start:.0f} s; load average now "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    emit(lines[-1])
    (out_dir() / "all.txt").write_text("\n".join(lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
