"""Cluster searches against real components the tests start on this machine: a two-node Ray cluster (`ray start
--head` and a second `ray start` node, token authentication on), an `mlflow server` with basic authentication,
and a two-node Slurm (munge, slurmctld and two slurmd from Debian's slurm-wlm) when the machine can run one.

Every daemon runs in its own process group on ports chosen free on 127.0.0.1, and its fixture's finalizer stops
it by that group's id; what outlives the group (a Ray worker, a job's driver) is found by the fixture's own
temporary folder in its command line, never by a process name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml
from helpers import BUCKET, children, free_port, s3_text, wait_for
from mlflow.tracking import MlflowClient

from search import submit
from search.errors import UsageError
from search.fake_data import write_fake

# whole searches and clusters: minutes; `make test-fast` leaves them out. One xdist worker runs them one after
# another: this machine's single-node Slurm would queue two of its jobs, and each cluster's nodes are sized to it.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's python, ray and mlflow
SPACE = "spaces/vgg_fashion_mnist.py"
EXPERIMENT = "vgg_fashion_mnist"  # a search's MLflow experiment is named after its space file
SMOKE_TRIALS = 4  # search.space.SMOKE_DEFAULTS["NUM_SAMPLES"]
# Trials long enough for the second node: Tune reuses a finished trial's worker for the next trial and drops a
# worker still starting, and a job's new worker on the other node (a process importing torch on 2 busy cores)
# takes 10-20s. About 6s an epoch here; 8,000 fake images, 7,000 of them trained on, in batches of 32.
TRAIN_IMAGES = 8000
RUN_OPTIONS = ["--set", "TRAIN_SUBSET=7000", "--set", "batch_size=32", "--quiet", "--debug"]
START_TIMEOUT_S = 120


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Ray, MLflow or Slurm settings that could point a child elsewhere, plus `extra`."""
    drop = ("RAY_", "MLFLOW_", "SLURM_", "SEARCH_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # a job's `python` is the venv's
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **extra}


class Daemon:
    """A process the tests started in its own process group, with its output in a log file."""

    def __init__(self, args: list, env: dict, log: Path, cwd: Path = ROOT):
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(a) for a in args], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self, grace: float = 40) -> None:
        """SIGTERM to the group (`ray start --block` drains its node first), SIGKILL to what is left."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def node_local_folder(temp: Path) -> tuple[Path | None, list[str]]:
    """A folder under `temp` and the command prefix that gives a process its own empty copy of it (a private
    mount namespace with a tmpfs on it), as a second machine's local disk; (None, []) where that is not allowed."""
    folder = temp / "node-local"
    folder.mkdir()
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"',
              str(folder)]  # fmt: skip
    if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
        return folder, prefix
    return None, []


def kill_marked(marker: str) -> None:
    """SIGKILLs leftover processes whose command line holds `marker`, a temporary path only ours contain."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid != os.getpid() and marker in " ".join(proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def python(*args: str, env: dict, timeout: float = 600, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The stderr of a CLI that failed the way users should see it: exit 2, one line, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("note: ")]
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# --- real components ------------------------------------------------------------------------------------------


@dataclass
class RayCluster:
    dashboard: str  # http://127.0.0.1:PORT, what `search.submit --address` takes
    gcs: str  # 127.0.0.1:PORT, what `ray start --address` and `search.run --address` take
    token: str
    temp: Path  # each node's --temp-dir is a folder in it
    node_env: dict[str, str]  # what `ray start` runs with
    node_options: list[str]  # `ray start` options every node has
    node_local: Path | None = None  # a folder the head sees and the second node does not (None: cannot hide one)
    hide: list[str] = field(default_factory=list)  # the command prefix that hides node_local from a node
    daemons: list[Daemon] = field(default_factory=list)  # the second node first, the head last

    def env(self, **extra: str) -> dict[str, str]:
        """A user's shell holding the cluster's token in RAY_AUTH_TOKEN."""
        return clean_env(RAY_AUTH_TOKEN=self.token, **extra)

    def nodes(self) -> list[dict]:
        r = requests.get(
            f"{self.dashboard}/api/v0/nodes", headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )
        r.raise_for_status()
        return [n for n in r.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def job_ids(self) -> set[str]:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(self.dashboard, headers={"Authorization": f"Bearer {self.token}"})
        return {job.submission_id for job in client.list_jobs()}

    def start_second_node(self) -> None:
        """`ray start` of a second node (again, after a test lost it) in a temporary folder of its own, blind to
        node_local; waits until the cluster has two nodes alive."""
        temp = self.temp / f"node{len(self.daemons)}"
        node = Daemon([*self.hide, BIN / "ray", "start", "--address", self.gcs, "--temp-dir", temp,
                       *self.node_options], self.node_env, temp.with_suffix(".log"))  # fmt: skip
        self.daemons.insert(0, node)
        wait_for(lambda: len(self.nodes()) == 2, START_TIMEOUT_S, "the second Ray node", node.log)

    def lose_second_node(self) -> None:
        """SIGKILLs the second node's raylet and the processes it started (its workers, its agents), as when the
        machine under them dies; waits until the cluster counts the node dead."""
        import psutil

        temp = str(self.temp / f"node{len(self.daemons) - 1}")
        commands = ((p, p.info["cmdline"] or [""]) for p in psutil.process_iter(["cmdline"]))
        (raylet,) = [p for p, cmd in commands if cmd[0].endswith("/raylet") and temp in " ".join(cmd)]
        for proc in [raylet, *raylet.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        wait_for(lambda: len(self.nodes()) == 1, START_TIMEOUT_S, "Ray to count the second node dead")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """`ray start --head` (dashboard on 127.0.0.1) and a second node, 1 CPU each, token authentication on."""
    temp = Path(tempfile.mkdtemp(prefix="rayt", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    token = secrets.token_hex(32)
    port, dashboard, client_port = free_port(), free_port(), free_port()
    env = clean_env(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_JOB_STOP_WAIT_TIME_S="60",  # a stopped job's driver gets this long to save the search (default 3s)
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="5",  # no work left to drain when the fixture ends
    )
    # Each node its own temporary folder, as on separate machines: a node deletes a job's working directory
    # from its folder when its own last worker of the job ends, while the job's driver on the head may still run.
    common = ["--block", "--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats",
              "--dashboard-agent-listen-port", "0", "--object-store-memory", str(100 * 2**20)]  # fmt: skip
    cluster = RayCluster(f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{port}", token, temp, env, common)
    try:
        head = Daemon([BIN / "ray", "start", "--head", "--port", port, "--dashboard-host", "127.0.0.1",
                       "--dashboard-port", dashboard, "--ray-client-server-port", client_port,
                       "--temp-dir", temp / "head", *common], env, temp / "head.log")  # fmt: skip
        cluster.daemons.append(head)
        wait_for(lambda: len(cluster.nodes()) == 1, START_TIMEOUT_S, "the Ray head", head.log)
        cluster.node_local, cluster.hide = node_local_folder(temp)
        cluster.start_second_node()
        yield cluster
    finally:
        for daemon in cluster.daemons:  # the second node first, then the head
            daemon.stop()
        kill_marked(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


@dataclass
class MLflowServer:
    uri: str
    username: str
    password: str

    def env(self, **extra: str) -> dict[str, str]:
        """What a user sets: the server and their own account."""
        return {
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_TRACKING_USERNAME": self.username,
            "MLFLOW_TRACKING_PASSWORD": self.password,
            **extra,
        }

    @contextlib.contextmanager
    def client(self) -> Iterator[MlflowClient]:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in self.env().items():
                mp.setenv(key, value)
            yield MlflowClient(self.uri)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflowServer]:
    """`mlflow server --app-name basic-auth` on 127.0.0.1, sqlite backends, and a user account for the searches."""
    if importlib.util.find_spec("flask_wtf") is None:
        pytest.fail("MLflow's basic-auth app needs Flask-WTF: install the dev dependencies (mlflow[auth])")
    root = tmp_path_factory.mktemp("mlflow")
    admin_password, port = secrets.token_urlsafe(16), free_port()
    (root / "basic_auth.ini").write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{root}/auth.db\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"
    )
    env = clean_env(
        MLFLOW_AUTH_CONFIG_PATH=str(root / "basic_auth.ini"),
        MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # no job-runner processes: 2 cores are busy enough
    )
    server = Daemon(
        [BIN / "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", port, "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", root / "artifacts"],
        env, root / "server.log", cwd=root,
    )  # fmt: skip
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_for(lambda: requests.get(f"{uri}/health", timeout=5).ok, START_TIMEOUT_S, "mlflow server", server.log)
        user = MLflowServer(uri, "student", secrets.token_urlsafe(16))
        created = requests.post(
            f"{uri}/api/2.0/mlflow/users/create",
            json={"username": user.username, "password": user.password},
            auth=("admin", admin_password),
            timeout=60,
        )
        assert created.ok, created.text
        yield user
    finally:
        server.stop(grace=10)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fake Fashion-MNIST, TRAIN_IMAGES of it: enough for trials on both nodes (see TRAIN_IMAGES)."""
    root = tmp_path_factory.mktemp("cluster_data")
    write_fake("fashion_mnist", str(root), train=TRAIN_IMAGES, test=200)
    return root


def search_runs(server: MLflowServer, name: str) -> tuple[object, list]:
    """The parent run of the search `name` and its child runs."""
    with server.client() as client:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        parents = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`mlflow.runName` = '{name}'"
        ) if experiment else []  # fmt: skip
        if not parents:
            return None, []
        children = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'"
        )
        return parents[0], children


# --- search.submit's checks and package, no cluster needed ------------------------------------------------------


@pytest.fixture
def user_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., None]:
    """Sets this process's environment to a user's shell with exactly the given variables (and a HOME with no
    ~/.ray/auth_token), for search.submit run in-process."""

    def set_env(**env: str) -> None:
        for key in os.environ:
            if key.startswith(("RAY_", "MLFLOW_", "SEARCH_")):
                monkeypatch.delenv(key)
        monkeypatch.setenv("HOME", str(tmp_path))
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    return set_env


def submit_error(argv: list[str]) -> str:
    """The UsageError search.submit stops with: run_main prints it as one line and exits 2."""
    with pytest.raises(UsageError) as caught:
        submit.main(argv)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ([], "--storage is required for a cluster search: search.run's default, ./runs, would land in"),
        (["--storage", "runs"], "--storage runs: give storage every node shares"),
        (["--storage", "/shared/runs", "--data-dir", "data"], "--data-dir data: give an absolute path"),
        (["--storage", "/shared/runs", "--no-such-option"], "unrecognized arguments: --no-such-option"),
        (["--storage", "/shared/runs", "--tracking-uri", "sqlite:///mlflow.db"], "temporary working directory"),
        (["--storage", "/shared/runs", "--tracking-uri", "http://u:pw@host:5000"], "keep the password out"),
        (["--storage", "/shared/runs", "--tracking-uri", ""], "set MLFLOW_TRACKING_URI"),
    ],
)
def test_submit_checks_the_search_before_sending_it(options, message, user_env):
    user_env()  # nothing is listening at the address: every check happens before it is needed
    assert message in submit_error([SPACE, "--address", "http://127.0.0.1:1", *options])


def test_job_package_holds_the_project_and_nothing_local(tmp_path, monkeypatch):
    from ray._private.runtime_env.packaging import create_package

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret-password")
    monkeypatch.setenv("SEARCH_DATA_DIR", "/shared/data")
    env = submit.runtime_env("http://mlflow.lab:5000")
    assert env["working_dir"] == str(ROOT)
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow.lab:5000"
    assert env["env_vars"]["MLFLOW_TRACKING_PASSWORD"] == "secret-password"
    assert env["env_vars"]["SEARCH_DATA_DIR"] == "/shared/data"
    assert "pip" not in env  # the cluster's own torch and Ray, unless --pip

    # The zip Ray's own packaging makes of it: the code and space files, no data, results or environments.
    create_package(env["working_dir"], tmp_path / "pkg.zip", include_gitignore=True, excludes=env["excludes"])
    names = zipfile.ZipFile(tmp_path / "pkg.zip").namelist()
    assert "search/submit.py" in names and SPACE in names and "models/vgg.py" in names
    local = (".venv/", "data/", "runs/", "mlruns/", ".git/", "__pycache__/", "bench/out/")
    assert not [n for n in names if n.startswith(local) or "/__pycache__/" in n or n.endswith(".pyc")]

    pip = submit.runtime_env("http://mlflow.lab:5000", pip=True)["pip"]["packages"]
    assert any(p.startswith("torch") for p in pip) and any(p.startswith("mlflow") for p in pip)
    assert not any(p.startswith("ray") for p in pip)  # never replace the Ray the cluster runs


# --- the KubeRay manifest -------------------------------------------------------------------------------------


def test_rayjob_manifest_runs_the_real_entry_point_with_real_options():
    from search import run

    docs = list(yaml.safe_load_all((ROOT / "cluster" / "rayjob.yaml").read_text()))
    rayjob = next(d for d in docs if d["kind"] == "RayJob")
    assert rayjob["apiVersion"] == "ray.io/v1"
    spec = rayjob["spec"]
    entrypoint = spec["entrypoint"].split()
    assert entrypoint[:3] == ["python", "-m", "search.run"]
    assert (ROOT / entrypoint[3]).is_file() and entrypoint[3].startswith("spaces/")
    args = run._parser().parse_args(entrypoint[3:])  # every option exists, with a valid value
    assert Path(args.storage).is_absolute() and Path(args.data_dir).is_absolute()

    cluster = spec["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    mounts = [{m["mountPath"] for c in p["spec"]["containers"] for m in c.get("volumeMounts", [])} for p in pods]
    for path in (args.storage, args.data_dir):  # on shared volumes every pod mounts
        assert all(any(path.startswith(m) for m in pod) for pod in mounts), path
    claims = {v["persistentVolumeClaim"]["claimName"] for p in pods for v in p["spec"].get("volumes", [])
              if "persistentVolumeClaim" in v}  # fmt: skip
    pvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert claims <= set(pvcs) and all("ReadWriteMany" in pvcs[c]["spec"]["accessModes"] for c in claims)

    env = {e["name"]: e for c in pods[0]["spec"]["containers"] for e in c.get("env", [])}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert "secretKeyRef" in env[name]["valueFrom"], name  # from a Secret, never in the manifest
    assert "value" not in env["MLFLOW_TRACKING_PASSWORD"]
    workers = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(workers["nvidia.com/gpu"]) >= 1 and 0 < args.gpus_per_trial <= 1
    assert cluster["authOptions"]["mode"] == "token"
    assert "pip" not in yaml.safe_load(spec["runtimeEnvYAML"])  # the image holds torch: nothing per job


# --- the Slurm batch script -----------------------------------------------------------------------------------

SBATCH = ROOT / "cluster" / "slurm.sbatch"
SLURM_DAEMONS = ("munged", "slurmctld", "slurmd")

STUB_SRUN = """#!/bin/bash
# srun stand-in for machines without Slurm: runs the step here, as node -w, with Slurm's step variables.
node=""
while [[ $# -gt 0 && $1 == -* ]]; do
    case $1 in
        -w | --nodelist) node=$2; shift 2 ;;
        --nodelist=*) node=${1#*=}; shift ;;
        *) shift ;;
    esac
done
export SLURMD_NODENAME=${node:-node1} SLURM_STEP_ID=$RANDOM
# Like srun: SIGUSR1 is passed on to the step, SIGTERM kills it.
"$@" &
pid=$!
trap 'kill -USR1 $pid' USR1
trap 'kill -KILL $pid; exit 143' TERM
status=0
while kill -0 $pid 2>/dev/null; do wait $pid; status=$?; done
exit $status
"""
STUB_SCONTROL = """#!/bin/bash
# scontrol stand-in: only `scontrol show hostnames a,b,c`.
[[ $1 == show && $2 == hostnames ]] && tr ',' '\\n' <<< "$3"
"""


class Slurm:
    """Runs cluster/slurm.sbatch on a two-node allocation: under a real Slurm, or (without one) with bash and the
    environment Slurm gives a batch script, `srun` and `scontrol` stood in for by scripts that run locally."""

    def __init__(self, root: Path, real: bool, env: dict):
        self.root, self.real, self.env = root, real, env
        self.jobs = 0

    def start(self, args: list[str], env: dict) -> tuple[object, Path]:
        self.jobs += 1
        out = self.root / f"job-{self.jobs}.out"
        env = {**self.env, **env, "RAY_TEMP_DIR": str(self.root / f"ray{self.jobs}")}
        if self.real:
            cmd = ["sbatch", "--parsable", "--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1",
                   f"--output={out}", SBATCH, *args]  # fmt: skip
            job = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
            return job.split(";")[0], out
        env.update(SLURM_JOB_ID=str(1000 + self.jobs), SLURM_JOB_NODELIST="node1,node2", SLURM_NNODES="2",
                   SLURM_JOB_NUM_NODES="2", SLURM_CPUS_ON_NODE="1", SLURM_SUBMIT_DIR=str(ROOT))  # fmt: skip
        with open(out, "wb") as log:
            proc = subprocess.Popen(["bash", SBATCH, *args], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        return proc, out

    def state(self, job) -> str:
        if not self.real:
            return "RUNNING" if job.poll() is None else ("COMPLETED" if job.returncode == 0 else "FAILED")
        return next((w.split("=")[1] for w in self.show(job).split() if w.startswith("JobState=")), "UNKNOWN")

    def wait(self, job, timeout: float = 600) -> str:
        return wait_for(
            lambda: (s := self.state(job)) not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED") and s,
            timeout, f"Slurm job {job}",
        )  # fmt: skip

    def requeue(self, job) -> None:
        """`scontrol requeue`: a running job gets SIGTERM (as under preemption), then the job starts again."""
        restarts = f"Restarts={self._restarts(job) + 1}"
        subprocess.run(["scontrol", "requeue", job], env=self.env, check=True)
        assert restarts in self.show(job), self.show(job)

    def show(self, job) -> str:
        return subprocess.run(["scontrol", "show", "job", job], env=self.env, capture_output=True, text=True).stdout

    def _restarts(self, job) -> int:
        return int(next(w.split("=")[1] for w in self.show(job).split() if w.startswith("Restarts=")))

    def usr1(self, job) -> None:
        """What --signal=B:USR1@300 does five minutes before the time limit: SIGUSR1 to the batch script."""
        if self.real:
            subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=self.env, check=True)
        else:
            job.send_signal(signal.SIGUSR1)


def _start_slurm(root: Path) -> tuple[list[Daemon], dict]:
    """munged, slurmctld and two slurmd (node1, node2) on this machine, all under `root`, 1 CPU per node."""
    (root / "munge").mkdir(mode=0o700)
    (root / "munge" / "munge.key").write_bytes(secrets.token_bytes(128))
    (root / "munge" / "munge.key").chmod(0o600)
    ctld_port, node_ports = free_port(), (free_port(), free_port())
    conf = root / "slurm.conf"
    conf.write_text(
        f"ClusterName=test\nSlurmctldHost={socket.gethostname()}(127.0.0.1)\nSlurmctldPort={ctld_port}\n"
        f"SlurmUser=root\nSlurmdUser=root\nAuthType=auth/munge\nCredType=cred/munge\n"
        # cred_expire: how long a requeued job waits before it starts again (default 120 s, at least 5)
        f"AuthInfo=socket={root}/munge/socket,cred_expire=10\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
        "JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\nMpiDefault=none\n"
        "SchedulerType=sched/backfill\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n"
        "ReturnToService=2\nKillWait=30\n"
        f"StateSaveLocation={root}/ctld\nSlurmctldPidFile={root}/slurmctld.pid\n"
        f"SlurmctldLogFile={root}/slurmctld.log\nSlurmdSpoolDir={root}/d-%n\nSlurmdPidFile={root}/slurmd-%n.pid\n"
        f"SlurmdLogFile={root}/slurmd-%n.log\n"
        + "".join(
            f"NodeName=node{i} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 Port={p} CPUs=1 "
            "RealMemory=4000 State=UNKNOWN\n"
            for i, p in enumerate(node_ports, 1)
        )
        + "PartitionName=test Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP\n"
    )
    (root / "ctld").mkdir()
    env = clean_env(SLURM_CONF=str(conf))
    daemons = [
        Daemon(["munged", "--foreground", "--force", f"--key-file={root}/munge/munge.key",
                f"--socket={root}/munge/socket", f"--pid-file={root}/munge/pid", f"--seed-file={root}/munge/seed",
                f"--log-file={root}/munged.log"], env, root / "munged.out"),
        Daemon(["slurmctld", "-D", "-i"], env, root / "slurmctld.out"),
    ]  # fmt: skip
    wait_for(lambda: (root / "munge" / "socket").exists(), 30, "munged", root / "munged.log")
    daemons += [Daemon(["slurmd", "-D", "-N", f"node{i}"], env, root / f"slurmd{i}.out") for i in (1, 2)]

    def idle() -> bool:
        out = subprocess.run(["sinfo", "-h", "-o", "%T %D"], env=env, capture_output=True, text=True).stdout
        return out.split() == ["idle", "2"]

    wait_for(idle, START_TIMEOUT_S, "two idle Slurm nodes", root / "slurmctld.log")
    return daemons, env


@pytest.fixture(scope="module")
def slurm() -> Iterator[Slurm]:
    """A real two-node Slurm when this machine has slurm-wlm and runs tests as root (its daemons need both);
    else stand-ins for srun and scontrol, so the script's own logic still runs for real."""
    root = Path(tempfile.mkdtemp(prefix="slurmt", dir="/tmp"))
    daemons: list[Daemon] = []
    try:
        if all(shutil.which(d) for d in SLURM_DAEMONS) and os.geteuid() == 0:
            daemons, env = _start_slurm(root)
            yield Slurm(root, real=True, env=env)
        else:
            stubs = root / "bin"
            stubs.mkdir()
            for name, text in (("srun", STUB_SRUN), ("scontrol", STUB_SCONTROL)):
                (stubs / name).write_text(text)
                (stubs / name).chmod(0o755)
            env = clean_env()
            env["PATH"] = f"{stubs}{os.pathsep}{env['PATH']}"
            yield Slurm(root, real=False, env=env)
    finally:
        for daemon in reversed(daemons):
            daemon.stop(grace=10)
        kill_marked(str(root))
        shutil.rmtree(root, ignore_errors=True)


def ray_processes(temp_dir: str) -> list[str]:
    """Command lines of processes of the Ray cluster whose temporary folder is `temp_dir`."""
    import psutil

    lines = (" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
    return [line for line in lines if temp_dir in line]


def test_a_slurm_search_stops_at_the_time_limit_and_resumes_when_requeued_or_resubmitted(
    slurm, mlflow_server, data_dir, tmp_path
):
    """On two nodes: USR1 before the time limit stops the search (parent KILLED, the resume command in its tags).
    Under a real Slurm the job is then requeued, as a user or preemption does: it starts again and the script
    resumes the search by itself; requeued again while it runs (SIGTERM to the script and every step, as
    preemption sends), it stops and resumes once more, to the end: one parent, each trial one run, every epoch
    once, on both nodes. Without Slurm (no requeue) the same command with --resume finishes it."""
    name = "slurm-search"
    args = [SPACE, "--smoke", "--name", name, "--storage", str(tmp_path / "runs"),
            "--data-dir", str(data_dir), *RUN_OPTIONS]  # fmt: skip
    job, out = slurm.start(args, mlflow_server.env())
    wait_for(lambda: search_runs(mlflow_server, name)[1], 300, "the first trial under Slurm", out)
    slurm.usr1(job)  # what --signal=B:USR1@300 sends five minutes before the time limit
    slurm.wait(job)
    log = out.read_text()
    assert "2 Ray node(s) up" in log and "USR1: stopping the search" in log, log[-6000:]
    assert "Ray stopped" in log and not ray_processes(str(slurm.root / f"ray{slurm.jobs}")), log[-3000:]
    parent, runs = search_runs(mlflow_server, name)
    assert parent.info.status == "KILLED", log[-6000:]
    assert f"--resume --name {name}" in parent.data.tags["state"]

    if slurm.real:
        epochs = sum(int(r.data.tags.get("epoch", 0)) for r in runs)
        slurm.requeue(job)  # a finished job: it starts again, with SLURM_RESTART_COUNT=1

        def resumed_and_training() -> bool:  # the resumed search under way: a new epoch in MLflow
            parent, runs = search_runs(mlflow_server, name)
            return parent.info.status == "RUNNING" and sum(int(r.data.tags.get("epoch", 0)) for r in runs) > epochs

        wait_for(resumed_and_training, 300, "the requeued job to resume the search", out, interval=0.2)
        slurm.requeue(job)  # while it runs: SIGTERM to the script and its steps, then a new start
    else:
        job, out = slurm.start([*args, "--resume"], mlflow_server.env())
    assert slurm.wait(job, 900) == "COMPLETED", out.read_text()[-6000:]
    log = out.read_text()  # under Slurm, every run's output: --open-mode=append
    if slurm.real:
        for said in ("requeued (restart 1): resuming the search", "TERM: stopping the search",
                     "requeued (restart 2): resuming the search"):  # fmt: skip
            assert said in log, (said, log[-6000:])
    assert "Ray stopped; exit 0" in log and not ray_processes(str(slurm.root / f"ray{slurm.jobs}")), log[-3000:]
    assert "RAY_AUTH_TOKEN" not in log and mlflow_server.password not in log

    with mlflow_server.client() as client:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        parents = client.search_runs([experiment.experiment_id], f"tags.`mlflow.runName` = '{name}'")
        assert [p.info.status for p in parents] == ["FINISHED"], log[-6000:]  # one parent: resumed, not redone
        runs = children(client, parents[0].info.run_id)
        assert len(runs) == SMOKE_TRIALS and len({r.data.tags["trial_id"] for r in runs}) == SMOKE_TRIALS
        for run in runs:
            assert run.info.status == "FINISHED", (run.info.status, run.data.tags)
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
            assert steps == list(range(1, int(run.data.tags["epoch"]) + 1)), steps  # every epoch once
    assert len({r.data.tags.get("node_id") for r in runs}) == 2, "trials did not run on both nodes"


# --- search.submit's one-line errors against the cluster -----------------------------------------------------


def test_missing_ray_token_is_one_line(ray_cluster, mlflow_server, data_dir, tmp_path):
    before = ray_cluster.job_ids()
    env = clean_env(HOME=str(tmp_path), **mlflow_server.env())  # no RAY_AUTH_TOKEN, no ~/.ray/auth_token
    result = python(
        "-m", "search.submit", SPACE, "--address", ray_cluster.dashboard, "--smoke",
        "--storage", str(tmp_path / "runs"), "--data-dir", str(data_dir), env=env,
    )  # fmt: skip
    line = one_line_error(result)
    assert "needs an auth token" in line and "RAY_AUTH_TOKEN" in line
    assert ray_cluster.job_ids() == before


def test_rejected_mlflow_credentials_fail_at_submit(ray_cluster, mlflow_server, data_dir, tmp_path):
    before = ray_cluster.job_ids()
    env = ray_cluster.env(**mlflow_server.env(MLFLOW_TRACKING_PASSWORD="not-the-password"))
    result = python(
        "-m", "search.submit", SPACE, "--address", ray_cluster.dashboard, "--smoke",
        "--storage", str(tmp_path / "runs"), "--data-dir", str(data_dir), env=env,
    )  # fmt: skip
    line = one_line_error(result)
    assert mlflow_server.uri in line and "credentials rejected" in line
    assert "not-the-password" not in result.stdout + result.stderr
    assert ray_cluster.job_ids() == before


def test_wrong_ray_token_is_rejected(ray_cluster, user_env):
    user_env(RAY_AUTH_TOKEN=secrets.token_hex(32))
    message = submit_error(["status", "raysubmit_x", "--address", ray_cluster.dashboard])
    assert "rejected the auth token from RAY_AUTH_TOKEN" in message
    assert os.environ["RAY_AUTH_TOKEN"] not in message


def test_token_is_read_where_ray_reads_it(ray_cluster, user_env, tmp_path):
    user_env()
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(ray_cluster.token + "\n")
    message = submit_error(["status", "raysubmit_nope", "--address", ray_cluster.dashboard])
    assert message == f"no job raysubmit_nope on the Ray cluster {ray_cluster.dashboard}"  # authenticated

    (tmp_path / "token").write_text("")
    user_env(RAY_AUTH_TOKEN_PATH=str(tmp_path / "token"))  # takes precedence over the file, as in Ray
    assert "RAY_AUTH_TOKEN_PATH" in submit_error(["status", "raysubmit_x", "--address", ray_cluster.dashboard])


def test_unreachable_cluster_is_one_line(user_env):
    user_env(RAY_AUTH_TOKEN="x")
    address = f"http://127.0.0.1:{free_port()}"
    assert "cannot reach the Ray dashboard" in submit_error(["status", "raysubmit_x", "--address", address])


def test_unreachable_mlflow_fails_at_submit_in_seconds(ray_cluster, mlflow_server, data_dir, user_env, tmp_path):
    before, start = ray_cluster.job_ids(), time.monotonic()
    user_env(
        RAY_AUTH_TOKEN=ray_cluster.token, **mlflow_server.env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    )
    message = submit_error([SPACE, "--address", ray_cluster.dashboard, "--smoke", "--storage", str(tmp_path),
                            "--data-dir", str(data_dir)])  # fmt: skip
    assert message.startswith("MLflow tracking store http://127.0.0.1:")
    assert time.monotonic() - start < 60  # MLflow's own retries take minutes to give up
    assert ray_cluster.job_ids() == before


# --- search.run --address HOST:PORT: joining the token cluster from a shell without RAY_AUTH_MODE ---------------

JOIN = "import sys, ray; from search import cluster; cluster.connect(sys.argv[1], quiet=True); print(len(ray.nodes()))"


@pytest.mark.parametrize("where", ["RAY_AUTH_TOKEN", "~/.ray/auth_token"])
def test_search_run_joins_a_token_cluster_with_the_token_at_hand(ray_cluster, where, tmp_path):
    """The shell has the token (its variable, or the file `ray get-auth-token` users keep) but not
    RAY_AUTH_MODE=token: Ray alone would retry for ~40 s and fail with a ConnectionError."""
    env = clean_env(HOME=str(tmp_path))
    if where == "RAY_AUTH_TOKEN":
        env["RAY_AUTH_TOKEN"] = ray_cluster.token
    else:
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text(ray_cluster.token + "\n")
    start = time.monotonic()
    joined = python("-c", JOIN, ray_cluster.gcs, env=env, timeout=120)
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert joined.stdout.split()[-1] == "2" and time.monotonic() - start < 30


@pytest.mark.parametrize(
    ("token", "message"),
    [(None, "needs an auth token and none was found: set RAY_AUTH_TOKEN"),
     ("0" * 64, "rejected the auth token from RAY_AUTH_TOKEN: it is not this cluster's token")],
)  # fmt: skip
def test_search_run_without_the_clusters_token_is_one_line(ray_cluster, data_dir, token, message, tmp_path):
    env = clean_env(HOME=str(tmp_path), **({"RAY_AUTH_TOKEN": token} if token else {}))
    start = time.monotonic()
    result = python(
        "-m", "search.run", SPACE, "--address", ray_cluster.gcs, "--smoke", "--name", "no-token",
        "--storage", str(tmp_path / "runs"), "--data-dir", str(data_dir),
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", env=env, timeout=120,
    )  # fmt: skip
    line = one_line_error(result)
    assert f"Ray cluster {ray_cluster.gcs} {message}" in line, line
    assert time.monotonic() - start < 30  # not Ray's ~40 s of retries
    assert not (tmp_path / "runs" / "no-token").exists()


# --- searches submitted to the cluster ------------------------------------------------------------------------


def test_a_ray_job_stopped_saves_the_search_and_a_resumed_job_finishes_it_on_both_nodes(
    ray_cluster, mlflow_server, data_dir, tmp_path
):
    name = "jobs-search"
    env = ray_cluster.env(**mlflow_server.env())
    args = [SPACE, "--address", ray_cluster.dashboard, "--smoke", "--name", name, "--storage", str(tmp_path / "runs"),
            "--data-dir", str(data_dir), *RUN_OPTIONS]  # fmt: skip
    result = python("-m", "search.submit", *args, env=env)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.split()[1]
    assert f"python -m search.submit logs {job_id} --address {ray_cluster.dashboard} --follow" in result.stdout

    wait_for(lambda: search_runs(mlflow_server, name)[1], 240, "the first trial of the submitted search")
    stop = python("-m", "search.submit", "stop", job_id, "--address", ray_cluster.dashboard, env=env)
    assert stop.returncode == 0 and "stop requested" in stop.stdout, stop.stdout + stop.stderr
    follow = python("-m", "search.submit", "logs", job_id, "--follow", "--address", ray_cluster.dashboard, env=env)
    assert follow.returncode == 1 and f"job {job_id}: STOPPED" in follow.stderr, follow.stderr
    parent, _ = search_runs(mlflow_server, name)
    assert parent.info.status == "KILLED", follow.stdout[-3000:]  # the search saved its state and said so
    assert f"--resume --name {name}" in parent.data.tags["state"]
    assert (tmp_path / "runs" / name / "search.json").exists()

    result = python("-m", "search.submit", *args, "--resume", "--follow", env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    job_id = next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("submitted "))
    assert f"job {job_id}: SUCCEEDED" in result.stderr
    assert "best trial" in result.stdout  # the logs were streamed
    assert mlflow_server.password not in output and ray_cluster.token not in output

    parent, children = search_runs(mlflow_server, name)
    assert parent is not None and parent.info.status == "FINISHED"
    assert len(children) == SMOKE_TRIALS
    assert {c.data.tags["trial_id"] for c in children} == {c.info.run_name for c in children}
    assert all(c.info.status != "RUNNING" for c in children), [c.info.status for c in children]
    node_ids = {n["node_id"] for n in ray_cluster.nodes()}
    assert {c.data.tags.get("node_id") for c in children} == node_ids, "trials did not run on both nodes"
    commit = parent.data.tags["mlflow.source.git.commit"]
    assert commit == submit.git_commit()  # sent along: the job's folder has no .git
    logged = [*parent.data.params.values(), *(v for c in children for v in c.data.params.values())]
    assert not any(mlflow_server.password in str(v) for v in logged)

    status = python("-m", "search.submit", "status", job_id, "--address", ray_cluster.dashboard, env=env)
    assert status.returncode == 0 and f"{job_id}: SUCCEEDED" in status.stdout, status.stderr
    logs = python("-m", "search.submit", "logs", job_id, "--address", ray_cluster.dashboard, env=env)
    assert logs.returncode == 0 and "best trial" in logs.stdout, logs.stderr
    assert mlflow_server.password not in logs.stdout


def test_local_storage_on_a_multi_node_cluster_fails_before_the_search(ray_cluster, mlflow_server, data_dir):
    """Storage on the head's own disk: the second node (its own mount namespace) cannot see it."""
    if ray_cluster.node_local is None:
        pytest.skip("this machine does not let `unshare --mount` hide a folder from the second Ray node")
    name = "jobs-local-storage"
    storage = ray_cluster.node_local / "runs"
    before = ray_cluster.job_ids()
    result = python(
        "-m", "search.submit", SPACE, "--address", ray_cluster.dashboard, "--follow", "--smoke", "--name", name,
        "--storage", str(storage), "--data-dir", str(data_dir), "--quiet",
        env=ray_cluster.env(**mlflow_server.env()),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr  # the job failed: --follow says so
    assert "FAILED" in result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "1 of 2 Ray nodes do not see this path" in errors[0], result.stdout[-3000:]
    assert "Traceback" not in result.stdout
    assert len(ray_cluster.job_ids() - before) == 1
    assert search_runs(mlflow_server, name) == (None, [])  # nothing started: no parent run
    assert not (storage / name).exists() and not list(storage.glob(".shared-*"))  # nor a folder, nor the marker


# --- a search across nodes that share no disk, one of which is lost ------------------------------------------

LOST_EPOCHS = 6  # epochs of every trial (none stopped early): the second node is lost after its trial's second


def test_a_search_on_s3_uses_both_nodes_and_survives_losing_one(ray_cluster, s3, data_dir):
    """`search.run --address --storage s3://`: the head and the second node share no disk (the driver's folder
    and its MLflow store are on the head's own, node_local), so trials keep their record and checkpoints on S3
    alone; neither node's `ray start` has the S3 keys, which the store checks (Tune hands the driver's to its trial
    workers). The second node dies mid-trial: that trial goes on, on the head, from its last checkpoint, in the
    same MLflow run."""
    if ray_cluster.node_local is None:
        pytest.skip("this machine does not let `unshare --mount` hide a folder from the second Ray node")
    name, storage = "node-loss", f"s3://{BUCKET}/cluster"
    head = next(n["node_id"] for n in ray_cluster.nodes() if n["is_head_node"])
    second = next(n["node_id"] for n in ray_cluster.nodes() if not n["is_head_node"])
    work = ray_cluster.node_local / name
    work.mkdir()
    uri = f"sqlite:///{work}/mlflow.db"
    env = ray_cluster.env(**{k: v for k, v in s3.items() if k.startswith("AWS_")})  # the user's shell: S3's keys
    cmd = [sys.executable, "-m", "search.run", ROOT / SPACE, "--smoke", "--name", name, "--address", ray_cluster.gcs,
           "--storage", storage, "--tracking-uri", uri, "--data-dir", str(data_dir), *RUN_OPTIONS, "--set",
           "NUM_SAMPLES=3", "--set", f"MAX_EPOCHS={LOST_EPOCHS}", "--set", f"GRACE_PERIOD={LOST_EPOCHS}",
           "--set", "CHECKPOINT_SECONDS=0"]  # fmt: skip
    log = work / "driver.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(cmd, env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT)
    client = MlflowClient(uri)

    def on_second_node() -> object:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs([experiment.experiment_id], f"tags.node_id = '{second}'") if experiment else []
        return next((r for r in runs if 2 <= int(r.data.tags["epoch"]) < LOST_EPOCHS), None)

    try:
        lost = wait_for(on_second_node, 400, "a trial's second epoch on the second node", log, proc=driver)
        ray_cluster.lose_second_node()
        driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
        if len(ray_cluster.nodes()) < 2:  # the module's other tests want both nodes
            ray_cluster.start_second_node()
    output = log.read_text()
    assert driver.returncode == 0, output[-6000:]

    (parent,) = client.search_runs([lost.info.experiment_id], f"tags.`mlflow.runName` = '{name}'")
    runs = children(client, parent.info.run_id)
    assert parent.info.status == "FINISHED" and len(runs) == 3, output[-3000:]
    assert len({r.data.tags["trial_id"] for r in runs}) == 3  # one run per trial: the lost one kept its own
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "completed", run.data.tags
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(1, LOST_EPOCHS + 1)), steps  # every epoch once, step = epoch
    # every trial ended on the head; the lost one ran on the second node first
    assert {r.data.tags["node_id"] for r in runs} == {head}
    assert lost.info.run_id in {r.info.run_id for r in runs}
    # Tune's record of the lost trial: its first epochs on the second node, the rest on the head, from its
    # checkpoint (an epoch under way when the node died may be reported again, no more)
    lines = s3_text(s3, f"{storage}/{name}/{lost.data.tags['trial_id']}/result.json").splitlines()
    epochs = [(r["epoch"], r["node_id"]) for r in map(json.loads, lines)]
    assert epochs[0] == (1, second) and epochs[-1] == (LOST_EPOCHS, head), epochs
    assert len(epochs) - len({e for e, _ in epochs}) <= 1, epochs
    assert "trials      completed 3" in output.splitlines(), output[-3000:]  # the summary counts each trial once
