"""Benchmarks: trial throughput, orchestration overhead, search efficiency, memory, and GPU figures.

`make bench` (`python -m bench.all`) runs them all; each script also runs alone (`python -m bench.throughput
--quick`). Every figure is a ratio against a baseline measured in the same run, because the machines are
shared and noisy. Results are in bench/README.md.
"""
