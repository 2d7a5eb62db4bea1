"""Scale: the driver of a search of N trials on a simulated 64-CPU cluster, with trials that train nothing.

One Ray node on this machine declares 64 logical CPUs (`ray.init(num_cpus=64)`), so 64 trials run at once, as on
a big cluster; each trial reports 10 made-up epochs, each with a small checkpoint, as fast as it can. Around it,
the product's own stack as `search.driver` wires it: `search.tuner.build_tuner` (OptunaASHA behind a
ConcurrencyLimiter, AuditedASHA with AUDIT_FRACTION = 0.1, actor reuse), `search.progress.SearchReporter`,
`search.tracking.LiveTracking` logging to a real `mlflow server` (SQLite, in a temporary folder, started and
stopped here), the `sync` that ends `driver.fit`, and the summary of `driver.finish` with its plots
(`report.trials_frame`, `searcher.load_study`, `report.summarize`, `mlflow_ui.save_view`, `report.log_to_parent`).
Then `sync` of the whole folder into an empty experiment of the same server, and again (which must change nothing).

Each N (and each of `single`: METRIC alone, `multi`: OBJECTIVES val_acc and macs) runs in a fresh process. The
figures, each given as the ratio of the largest N to the smallest: driver wall and CPU time per reported result,
the searcher's time per suggestion (median, p95), Tune's snapshot (time per save, size), how long live tracking
lags at the end, `sync` into an empty store and into a full one, the summary and plots, the driver's peak memory
(ru_maxrss), and MLflow requests per trial (counted in the driver, where every request is sent from).

    python -m bench.scale [--quick] [--sizes 100,500,2000] [--objectives single,multi] [--cpus 64]
    python -m bench.scale --variant no_forced_snapshot ...   # the same without Tune's forced snapshots (see `one`)
    python -m bench.scale --variant every_epoch ...   # a checkpoint every epoch, as before CHECKPOINT_SECONDS
    python -m bench.scale --report   # the figures again, from bench/out/scale-*.json
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # as search.run sets it

from bench.common import OUT, child_result, emit, out_dir, run_child, save, verdict  # noqa: E402

SPACE_FILE = str(Path(__file__).parent / "spaces" / "overhead.py")  # 10 epochs, ASHA rungs 1, 3, 9; 4 params
OBJECTIVES = {"single": {}, "multi": {"OBJECTIVES": {"val_acc": "max", "macs": "min"}}}
SIZES, QUICK_SIZES = (100, 500, 2000), (20, 100)
CPUS = 64  # logical CPUs the one Ray node declares: trials at once
AUDIT_FRACTION = 0.1  # the product's default: ASHA with its audit controls
CHECKPOINT_BYTES = 4096  # a stand-in for the model file: the machinery, not the disk, is measured
TARGET_PER_RESULT = 1.5  # driver wall time per result at the largest N at most 1.5x that at the smallest
TARGET_SYNC_NOOP_S, TARGET_SYNC_FULL_S = 10.0, 120.0  # for 2,000 trials
TARGET_SUMMARY_S = 30.0
TARGET_TRIALS = 2000  # the N the absolute targets are for
TARGET_PEAK_MB = 2048.0


# --- the trials ---


def fake_result(trial_id: str, config: dict, epoch: int) -> dict:
    """What `search.trainable` reports each epoch, on a made-up curve of the trial id; cost from width1."""
    quality = random.Random(trial_id).uniform(0.3, 0.9)
    val_acc = quality * (1 - math.exp(-epoch / 3))
    width = config.get("width1", 32)
    return {
        "epoch": epoch, "train_loss": 2.3 * (1 - val_acc), "train_acc": val_acc + 0.02,
        "val_loss": 2.3 * (1 - val_acc) + 0.05, "val_acc": val_acc, "val_top5": min(1.0, val_acc + 0.1),
        "lr": config.get("lr", 0.1), "epoch_seconds": 0.01, "images_per_second": 5e5 / width,
        "params": 3e3 * width**2, "macs": 4e5 * width**2, "latency_ms": width / 32,
        "outcome": "running", "node_id": "scale", "gpu_ids": "", "cuda_visible_devices": "",
    }  # fmt: skip


def trivial(config: dict, checkpoint_seconds: float = 0.0) -> None:
    """A trial that trains nothing: 10 epochs reported at once, with a checkpoint when the real one would make one
    (`search.schedule.checkpoint_due`; `--variant every_epoch`: each epoch, as before CHECKPOINT_SECONDS)."""
    from ray import tune

    from search.schedule import checkpoint_due

    trial_id, saved = tune.get_context().get_trial_id(), time.monotonic()
    for epoch in range(1, config["epochs"] + 1):
        result = fake_result(trial_id, config, epoch)
        if not checkpoint_due(epoch, config["epochs"], time.monotonic() - saved, checkpoint_seconds):
            tune.report(result)
            continue
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "checkpoint.pt").write_bytes(bytes(CHECKPOINT_BYTES))  # search.trainable's file name
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
        saved = time.monotonic()


# --- what the driver is timed by ---


def timed(cls: type, name: str, into: list) -> None:
    """Wraps the method `cls.name` (the class, not an instance, so pickled state is left alone) to append the
    seconds of every call to `into`."""
    original = getattr(cls, name)

    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            into.append(time.perf_counter() - start)

    setattr(cls, name, wrapper)


class Requests:
    """Counts the HTTP requests this process sends to `uri`, by phase (requests' adapter: every attempt)."""

    def __init__(self) -> None:
        self.uri, self.phase, self.counts, self.seconds, self._lock = "", "prepare", {}, {}, threading.Lock()
        import requests.adapters

        original = requests.adapters.HTTPAdapter.send
        counter = self

        def send(adapter, request, *args, **kwargs):
            if not (counter.uri and request.url.startswith(counter.uri)):
                return original(adapter, request, *args, **kwargs)
            phase, start = counter.phase, time.perf_counter()
            try:
                return original(adapter, request, *args, **kwargs)
            finally:
                with counter._lock:
                    counter.counts[phase] = counter.counts.get(phase, 0) + 1
                    counter.seconds[phase] = counter.seconds.get(phase, 0.0) + time.perf_counter() - start

        requests.adapters.HTTPAdapter.send = send


@contextmanager
def mlflow_server(root: Path):
    """A real `mlflow server` on loopback (SQLite store, artifacts in `root`); stopped by its process group id."""
    from mlflow.tracking import MlflowClient

    from search.cli import cap_mlflow_retries

    cap_mlflow_retries()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root}/server.db", "--artifacts-destination", str(root / "art"),
        "--workers", "1",
    ]  # fmt: skip
    log = open(root / "server.log", "wb")  # noqa: SIM115 - open while the server runs
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                MlflowClient(uri).search_experiments(max_results=1)
                break
            except Exception:
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = (root / "server.log").read_text()[-2000:]
                    raise RuntimeError(f"mlflow server did not start: {tail}") from None
                time.sleep(1)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started, nothing else
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def new_parent(client, experiment_name: str, space) -> tuple[str, str]:
    """An experiment and a parent run as `driver.prepare` makes them, with a dataset input for trials to inherit."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from search.tracking import ensure_experiment, start_parent

    experiment_id = ensure_experiment(client, experiment_name)
    params = {f"setting.{k}": v for k, v in vars(space.settings).items() if k not in ("FIXED", "SMOKE")}
    parent = start_parent(client, experiment_id, experiment_name, params, {"space": str(space.path)},
                          {f"space/{space.path.name}": space.source})  # fmt: skip
    data = Dataset("fashion_mnist", "0" * 8, "local", json.dumps({"uri": "/nowhere"}))
    client.log_inputs(parent, [DatasetInput(data, [InputTag("mlflow.data.context", "train")])])
    return experiment_id, parent


def stats_ms(seconds: list[float]) -> dict:
    if not seconds:
        return {"n": 0}
    ms = sorted(s * 1000 for s in seconds)
    return {"n": len(ms), "median": statistics.median(ms), "p95": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
            "max": ms[-1], "total_s": sum(ms) / 1000}  # fmt: skip


def clock() -> tuple[float, float]:
    """(wall, this process's CPU) seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime


def one(kind: str, trials: int, cpus: int, variant: str = "") -> dict:
    """One search of `trials` trials in this process, timed piece by piece; see the module docstring.

    `variant` "no_forced_snapshot": the same with Tune's forced snapshots turned off, to measure what they cost.
    Tune saves the whole experiment state, and waits for it, whenever a trial has made `num_to_keep` checkpoints
    since the last save (build_tuner keeps 2): with many trials that is every few results, each save O(trials).
    "every_epoch": CHECKPOINT_SECONDS = 0, a checkpoint every epoch (what every search did before that setting).
    """
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")  # as search.cluster sets it for the Ray it starts
    counter = Requests()
    import ray
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.schedulers import FIFOScheduler

    from search import mlflow_ui, report
    from search.progress import SearchReporter
    from search.searcher import OptunaASHA, load_study
    from search.space import load_space
    from search.tracking import LiveTracking, Ranking, open_store, sync
    from search.tuner import AuditedASHA, build_tuner
    from search.tuner import fit as tuner_fit

    suggest, told, snapshots, lag, asha, choose = [], [], [], [], [], []
    timed(AuditedASHA, "on_trial_result", asha)
    timed(FIFOScheduler, "choose_trial_to_run", choose)  # ASHA's: a scan of every trial, at every step
    timed(OptunaASHA, "suggest", suggest)
    timed(OptunaASHA, "on_trial_complete", told)
    timed(TuneController, "save_to_dir", snapshots)
    timed(LiveTracking, "on_experiment_end", lag)
    queued = []
    original_end = LiveTracking.on_experiment_end

    def on_end(self, *args, **kwargs):
        queued.append(self._queue.qsize())  # what live tracking still had to send when the last trial ended
        return original_end(self, *args, **kwargs)

    LiveTracking.on_experiment_end = on_end
    arrivals = []  # when each result reached the driver's callbacks
    original_result = LiveTracking.on_trial_result

    def on_result(self, *args, **kwargs):
        arrivals.append(time.perf_counter())
        return original_result(self, *args, **kwargs)

    LiveTracking.on_trial_result = on_result
    if variant == "no_forced_snapshot":  # the periodic snapshot (at least 10 s apart) stays
        from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

        _ExperimentCheckpointManager.on_trial_checkpoint = lambda self, trial: None

    out: dict = {"kind": kind, "variant": variant, "trials_asked": trials, "cpus": cpus}
    overrides = {"NUM_SAMPLES": trials, "MAX_CONCURRENT": cpus, "AUDIT_FRACTION": AUDIT_FRACTION, **OBJECTIVES[kind]}
    if variant == "every_epoch":
        overrides["CHECKPOINT_SECONDS"] = 0
    space = load_space(SPACE_FILE, overrides)
    s, ranking = space.settings, Ranking(space.settings.METRIC, space.settings.MODE)
    began = time.time()  # the search's start, for the summary's wall_seconds
    out["peak_mb_after_space"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # torch, checks
    with tempfile.TemporaryDirectory(prefix=f"scale-{kind}-{trials}-") as tmp, mlflow_server(Path(tmp)) as uri:
        counter.uri = uri
        client = open_store(uri)
        experiment_id, parent = new_parent(client, f"scale-{kind}-{trials}", space)
        path = os.path.join(tmp, "runs", f"scale-{kind}-{trials}")

        start = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)
        out["init_s"] = time.perf_counter() - start
        tracking = LiveTracking(uri, experiment_id, parent, s.MAX_EPOCHS, ranking=ranking)
        searched = list(space.params) if isinstance(space.params, dict) else []
        tuner = build_tuner(
            space, trivial, path=path, param_space=space.base_config(), max_concurrent=cpus, callbacks=[tracking],
            reporter=SearchReporter(s, searched, cpus),
        )  # fmt: skip
        counter.phase = "live"
        (wall, cpu), rss_before = clock(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        results = tuner_fit(tuner)
        (wall2, cpu2) = clock()
        out.update(fit_s=wall2 - wall, fit_cpu_s=cpu2 - cpu, peak_mb_before_fit=rss_before / 1024)
        out["peak_mb_after_fit"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ray.shutdown()

        out["trials"] = len(results)
        out["errors"] = sum(r.error is not None for r in results)
        out["results"] = sum((r.metrics or {}).get("epoch", 0) for r in results)
        out["wall_ms_per_result"] = out["fit_s"] / max(1, out["results"]) * 1000
        # the middle half of the results: all trials' workers started, the search not yet winding down
        q1, q3 = len(arrivals) // 4, 3 * len(arrivals) // 4
        out["steady_ms_per_result"] = (arrivals[q3] - arrivals[q1]) / max(1, q3 - q1) * 1000
        out["cpu_ms_per_result"] = out["fit_cpu_s"] / max(1, out["results"]) * 1000
        out["suggest_ms"], out["tell_ms"] = stats_ms(suggest), stats_ms(told)
        out["snapshot_ms"] = stats_ms(snapshots)
        out["asha_ms"], out["choose_ms"] = stats_ms(asha), stats_ms(choose)
        files = list(Path(path).glob("experiment_state-*.json"))
        out["snapshot_bytes"] = sum(f.stat().st_size for f in files)
        out["searcher_state_bytes"] = sum(f.stat().st_size for f in Path(path).glob("searcher-state-*.pkl"))
        out["live_lag_s"], out["live_queued_at_end"] = (lag or [0.0])[0], (queued or [0])[0]

        def phase(name: str, fn, *args):
            counter.phase = name
            start = time.perf_counter()
            value = fn(*args)
            out[f"{name}_s"] = time.perf_counter() - start
            return value

        out["sync_end_changed"] = phase("sync_end", sync, path, client, experiment_id, parent, s.MAX_EPOCHS, "search",
                                        ranking)  # fmt: skip
        # the summary and plots, as driver.finish makes them (the winner's test and model aside)
        frame = phase("frame", report.trials_frame, results, space)
        done = frame[frame.outcome == "completed"]
        pool = done if len(done) else frame[frame.outcome == "stopped_early"]
        best_row = pool.sort_values(s.METRIC, ascending=s.MODE == "min").iloc[0]
        study = phase("study", load_study, path, space)
        test = {"test_acc": float(best_row[s.METRIC]), "test_top5": 1.0}
        summary = phase("summarize", report.summarize, space, frame, pool, best_row, test, began, "", None, study)
        phase("format", report.format_summary, summary)
        phase("view", mlflow_ui.save_view, client, experiment_id, parent, s.METRIC, frame.attrs["params"], s.MODE)
        phase("plots", report.log_to_parent, client, parent, space, frame, pool, study, summary)
        out["summary_s"] = sum(out[f"{k}_s"] for k in ("frame", "study", "summarize", "format", "view", "plots"))
        out["outcomes"] = summary["outcomes"]

        # the whole folder into an empty experiment, then again: the second must change nothing
        counter.phase = "prepare"
        empty_id, empty_parent = new_parent(client, f"scale-{kind}-{trials}-copy", space)
        args = (path, client, empty_id, empty_parent, s.MAX_EPOCHS, "search", ranking)
        out["sync_empty_changed"] = phase("sync_empty", sync, *args)
        out["sync_full_changed"] = phase("sync_full", sync, *args)
        out["sync_full_noop"] = not any(out["sync_full_changed"].values())
        out["requests"] = dict(counter.counts)
        out["request_ms"] = {k: counter.seconds[k] / counter.counts[k] * 1000 for k in counter.counts}
        n = max(1, out["trials"])
        out["requests_per_trial"] = {k: v / n for k, v in counter.counts.items()}
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# --- the figures ---


def label(run: dict) -> str:
    """single, multi, or either with its variant: single+no_forced_snapshot."""
    return run["kind"] + (f"+{run['variant']}" if run.get("variant") else "")


def run_file(run: dict) -> Path:
    return OUT / f"scale-{label(run)}-{run['trials_asked']}.json"


def show(run: dict) -> None:
    """One run's figures, one line each."""
    name = f"scale.{label(run)}.{run['trials']}"
    sug, snap = run["suggest_ms"], run["snapshot_ms"]
    req = run["requests_per_trial"]
    emit(f"{name}: {run['results']} results of {run['trials']} trials ({run['errors']} errored; "
         f"{' '.join(f'{k} {v}' for k, v in sorted(run['outcomes'].items()))}); fit {run['fit_s']:.1f} s, "
         f"ray.init {run['init_s']:.1f} s")  # fmt: skip
    steady = f"{run['steady_ms_per_result']:.1f}" if "steady_ms_per_result" in run else "-"
    emit(f"{name}.per_result: {run['wall_ms_per_result']:.1f} ms wall ({steady} ms over the middle half of the "
         f"results), {run['cpu_ms_per_result']:.1f} ms driver CPU")  # fmt: skip
    emit(f"{name}.suggest: median {sug['median']:.1f} ms, p95 {sug['p95']:.1f} ms, max {sug['max']:.0f} ms over "
         f"{sug['n']} ({sug['total_s']:.1f} s in all); tell: median {run['tell_ms']['median']:.1f} ms")  # fmt: skip
    emit(f"{name}.snapshot: {snap['n']} saves, median {snap['median']:.0f} ms, max {snap['max']:.0f} ms "
         f"({snap['total_s']:.1f} s in all); experiment_state {run['snapshot_bytes'] / 1e6:.2f} MB, searcher state "
         f"{run['searcher_state_bytes'] / 1e6:.2f} MB")  # fmt: skip
    if "asha_ms" in run:
        emit(f"{name}.scheduler: ASHA on_trial_result {run['asha_ms']['total_s']:.1f} s in all, choose_trial_to_run "
             f"{run['choose_ms']['total_s']:.1f} s in all over {run['choose_ms']['n']} calls")  # fmt: skip
    emit(f"{name}.live_lag: {run['live_lag_s']:.2f} s at the end ({run['live_queued_at_end']} items queued)")
    emit(
        f"{name}.sync: end of fit {run['sync_end_s']:.1f} s {run['sync_end_changed']}; into an empty store "
        f"{run['sync_empty_s']:.1f} s; again (no-op: {run['sync_full_noop']}) {run['sync_full_s']:.1f} s"
    )
    emit(
        f"{name}.summary: {run['summary_s']:.1f} s (frame {run['frame_s']:.1f}, study {run['study_s']:.1f}, "
        f"summarize {run['summarize_s']:.1f}, view {run['view_s']:.1f}, plots {run['plots_s']:.1f})"
    )
    emit(
        f"{name}.peak_memory: {run['peak_mb']:.0f} MB (after fit {run['peak_mb_after_fit']:.0f} MB, before "
        f"{run['peak_mb_before_fit']:.0f} MB, after loading the space {run['peak_mb_after_space']:.0f} MB)"
    )
    emit(f"{name}.mlflow_requests_per_trial: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(req.items())))
    if "request_ms" in run:
        latency = ", ".join(f"{k} {v:.0f}" for k, v in sorted(run["request_ms"].items()))
        emit(f"{name}.mlflow_ms_per_request: {latency}")


FIGURES = {  # name -> a figure of one run; `ratios` divides the largest N's by the smallest's
    "wall_ms_per_result": lambda r: r["wall_ms_per_result"],
    "steady_ms_per_result": lambda r: r.get("steady_ms_per_result", math.nan),
    "cpu_ms_per_result": lambda r: r["cpu_ms_per_result"],
    "suggest_median_ms": lambda r: r["suggest_ms"]["median"],
    "suggest_p95_ms": lambda r: r["suggest_ms"]["p95"],
    "snapshot_median_ms": lambda r: r["snapshot_ms"]["median"],
    "snapshot_bytes": lambda r: r["snapshot_bytes"],
    "live_lag_s": lambda r: r["live_lag_s"],
    "sync_empty_ms_per_trial": lambda r: r["sync_empty_s"] / r["trials"] * 1000,
    "sync_full_ms_per_trial": lambda r: r["sync_full_s"] / r["trials"] * 1000,
    "summary_ms_per_trial": lambda r: r["summary_s"] / r["trials"] * 1000,
    "peak_mb": lambda r: r["peak_mb"],
    "live_requests_per_trial": lambda r: r["requests_per_trial"].get("live", 0),
    "all_requests_per_trial": lambda r: sum(r["requests_per_trial"].values()),
}


def ratios(runs: list[dict]) -> dict:
    """Per kind: each figure at the largest N over the smallest, and the targets."""
    out = {}
    for kind in sorted({label(r) for r in runs}):
        mine = sorted((r for r in runs if label(r) == kind), key=lambda r: r["trials"])
        small, large = mine[0], mine[-1]
        if len(mine) < 2:
            continue
        figures = {name: (fn(large) / fn(small) if fn(small) else math.inf) for name, fn in FIGURES.items()}
        n = large["trials"] / small["trials"]
        emit(f"scale.{kind}.ratio (N={large['trials']} / N={small['trials']}, {n:.0f}x the trials): "
             + ", ".join(f"{k} {v:.2f}x" for k, v in figures.items()))  # fmt: skip
        # the middle half's rate when both runs have it: the whole fit's includes starting the workers, a fixed
        # cost that a larger N spreads thinner
        steady = not math.isnan(figures["steady_ms_per_result"])
        per_result = figures["steady_ms_per_result" if steady else "wall_ms_per_result"]
        pair = f"N={large['trials']} / N={small['trials']}"
        target = f"<= {TARGET_PER_RESULT}x at N={TARGET_TRIALS} / N=100"
        emit(f"scale.{kind}.per_result_ratio ({'middle half' if steady else 'whole fit'}, {pair}): {per_result:.2f}x "
             f"{verdict(per_result <= TARGET_PER_RESULT, target)}")  # fmt: skip
        met = {"per_result": per_result <= TARGET_PER_RESULT}
        # the targets are for 2,000 trials: below that, a straight line through the two runs says where it would be
        top = TARGET_TRIALS
        for key, field, target, scale in (
            ("sync_noop", "sync_full_s", TARGET_SYNC_NOOP_S, 1),
            ("sync_full", "sync_empty_s", TARGET_SYNC_FULL_S, 1),
            ("summary", "summary_s", TARGET_SUMMARY_S, 1),
            ("peak_memory", "peak_mb", TARGET_PEAK_MB / 1024, 1024),
        ):
            value = large[field] / scale
            slope = (large[field] - small[field]) / scale / (large["trials"] - small["trials"])
            at_top = value + slope * (top - large["trials"])
            unit = "GB" if key == "peak_memory" else "s"
            if large["trials"] >= top:
                met[key] = value < target
                where = f"{value:.1f} {unit} at N={large['trials']}"
            else:
                met[key] = at_top < target
                where = f"{value:.1f} {unit} at N={large['trials']}, about {at_top:.1f} {unit} at N={top} (linear)"
            emit(f"scale.{kind}.{key}: {where} {verdict(met[key], f'< {target:g} {unit} at N={top}')}")
        out[kind] = {"small": small["trials"], "large": large["trials"], "ratios": figures, "met": met}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"N = {', '.join(map(str, QUICK_SIZES))}, single only")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated numbers of trials")
    p.add_argument("--objectives", default="single,multi", help="single (METRIC), multi (OBJECTIVES), or both")
    p.add_argument("--cpus", type=int, default=CPUS, help="logical CPUs of the simulated node: trials at once")
    variants = ("", "no_forced_snapshot", "every_epoch")
    p.add_argument("--variant", choices=variants, default="", help="see `one`")
    p.add_argument("--report", action="store_true", help="print the figures of the runs saved in bench/out")
    p.add_argument("--one", choices=tuple(OBJECTIVES), help=argparse.SUPPRESS)  # one search, in this process
    p.add_argument("--trials", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        child_result(one(args.one, args.trials, args.cpus, args.variant))
        sys.exit(0)
    sizes = QUICK_SIZES if args.quick else tuple(int(x) for x in args.sizes.split(","))
    kinds = ("single",) if args.quick else tuple(k for k in args.objectives.split(",") if k)
    runs = []
    if args.report:
        runs = [json.loads(f.read_text()) for f in sorted(OUT.glob("scale-*.json"))]
        runs = [r for r in runs if r["kind"] in kinds and r["trials_asked"] in sizes]
    else:
        emit(f"# scale: {args.cpus} logical CPUs, N = {', '.join(map(str, sizes))} trials x up to 10 epochs, "
             f"{', '.join(kinds)}; TPE + AuditedASHA + LiveTracking to an mlflow server ({SPACE_FILE})")  # fmt: skip
        for kind in kinds:
            for n in sizes:
                one_args = ["--one", kind, "--trials", str(n), "--cpus", str(args.cpus), "--variant", args.variant]
                run = run_child("bench.scale", one_args, 7200)
                out_dir()
                run_file(run).write_text(json.dumps(run, indent=2))
                runs.append(run)
                show(run)
    if args.report:
        for run in sorted(runs, key=lambda r: (label(r), r["trials"])):
            show(run)
    figures = ratios(runs)
    save("scale", {"runs": runs, "ratios": figures})
    return figures


if __name__ == "__main__":
    main()
