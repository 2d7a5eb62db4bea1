"""Shared fixtures: small fake datasets in the real on-disk formats and finished smoke searches, each made once per
test session; helpers.py holds the plain functions."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# One OpenMP thread per process, set before torch loads and inherited by every process a test starts. The two
# xdist workers share 2 cores with each other's searches: torch's default of a thread per core oversubscribed them,
# and its threads, each waiting at a barrier for one that was descheduled, made test_train.py's 1-second training
# take 26 s. Trials set their own from their CPUs (search.trainable), as they do outside the tests.
os.environ["OMP_NUM_THREADS"] = "1"

import mlflow  # noqa: E402
import pytest  # noqa: E402
import ray  # noqa: E402
from helpers import SMOKE_DATASETS, SMOKE_TEST, SMOKE_TRAIN, moto_server  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from search import cli  # noqa: E402
from search.data import DATASETS  # noqa: E402
from search.fake_data import write_fake  # noqa: E402

# Images per fake training set (3 per class for cifar100, 30 for the others) and test set; test_data.py
# checks these sizes.
FAKE_TRAIN, FAKE_TEST = 300, 100


@pytest.fixture(autouse=True)
def _signal_handlers_as_they_were() -> Iterator[None]:
    """Puts back SIGINT's and SIGTERM's handlers after each test: Tune leaves its own SIGINT handler installed after a
    run (`search.tuner.fit` is the product's guard), and a test that ran Tune directly left it to the next test on
    its worker: a SIGTERM there reached Tune's handler, not the one the test meant (seen in a full run)."""
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, handlers[0])
    signal.signal(signal.SIGTERM, handlers[1])


@pytest.fixture(scope="session")
def fake_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with every dataset in DATASETS as fake files (FAKE_TRAIN train, FAKE_TEST test images)."""
    root = tmp_path_factory.mktemp("fake_data")
    for name in DATASETS:
        write_fake(name, str(root), train=FAKE_TRAIN, test=FAKE_TEST)
    return root


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with fake Fashion-MNIST big enough to learn from: 1,000 train (100 per class), 200 test."""
    root = tmp_path_factory.mktemp("fashion")
    write_fake("fashion_mnist", str(root), train=1000, test=200)
    return root


@pytest.fixture(scope="session")
def smoke_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with each dataset the space files search, big enough for --smoke (SMOKE_TRAIN, SMOKE_TEST)."""
    root = tmp_path_factory.mktemp("smoke_data")
    for name in SMOKE_DATASETS:
        write_fake(name, str(root), train=SMOKE_TRAIN, test=SMOKE_TEST)
    return root


@dataclass
class FinishedSearch:
    """A finished `--smoke` search of one space file, shared by the tests that only read it: never change its
    folder or store (copy the store first; its runs' artifacts stay where they are)."""

    result: object  # search.run.SearchResult
    uri: str  # its sqlite MLflow store, in `store`
    store: Path
    storage: Path  # --storage: the search's folder is storage / "smoke"
    work: Path  # the working folder it ran in, empty before and after
    data_dir: Path
    kept_ctrl_c: bool  # the Ctrl-C handler was the same after the search as before it
    kept_tracking_uri: bool  # MLflow's fluent API logged where it did before the search (a notebook's own store)


@pytest.fixture(scope="session")
def finished_smoke_search(tmp_path_factory, smoke_data_dir, local_ray, _empty_store):
    """`finished_smoke_search(stem)`: the `--smoke` search of spaces/STEM.py, on the session's Ray and smoke data,
    run the first time a test asks for it (in-process, as a notebook runs it) and shared after that."""
    from search.run import search

    done: dict[str, FinishedSearch] = {}
    failed: dict[str, Exception] = {}

    def get(stem: str) -> FinishedSearch:
        if stem in failed:  # once is enough: its first test has the traceback
            pytest.fail(f"the shared smoke search of {stem} failed: {failed[stem]!r}")
        if stem not in done:
            root = tmp_path_factory.mktemp(f"smoke_{stem}")
            work, store = root / "work", root / "store"
            work.mkdir()
            store.mkdir()
            shutil.copy(_empty_store, store / "mlflow.db")
            uri, here, ctrl_c = f"sqlite:///{store}/mlflow.db", os.getcwd(), signal.getsignal(signal.SIGINT)
            env_uri = os.environ.get("MLFLOW_TRACKING_URI")
            notebooks = f"sqlite:///{root}/notebook.db"  # a notebook's own store, set before the search
            mlflow.set_tracking_uri(notebooks)
            os.chdir(work)  # a sqlite store keeps the artifacts beside it: nothing may land here
            try:
                result = search(str(Path(__file__).parents[1] / "spaces" / f"{stem}.py"), smoke=True, name="smoke",
                                data_dir=str(smoke_data_dir), storage=str(root / "runs"), tracking_uri=uri,
                                quiet=True)  # fmt: skip
            except Exception as exc:
                failed[stem] = exc
                raise
            finally:
                os.chdir(here)
                after = mlflow.get_tracking_uri()
                mlflow.set_tracking_uri(env_uri)  # as the session had it
            kept = signal.getsignal(signal.SIGINT) is ctrl_c
            done[stem] = FinishedSearch(
                result, uri, store, root / "runs", work, smoke_data_dir, kept, after == notebooks
            )
        return done[stem]

    return get


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory) -> Path:
    """A new sqlite MLflow store, made once: creating one runs MLflow's migrations, ~2.5 s each time."""
    path = tmp_path_factory.mktemp("mlflow") / "empty.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def sqlite_uri(_empty_store, tmp_path) -> str:
    """The URI of a real sqlite MLflow store of this test's own (tmp_path/mlflow.db), empty."""
    shutil.copy(_empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture
def cli_exit(capsys):
    """Runs a command line's `main` in this process as `python -m` would (through `cli.run_main`): returns its
    exit code, stdout and stderr. tests/test_entry_points.py runs each command once as a real process."""

    def run(main, argv: list) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            cli.run_main(main, [str(a) for a in argv])
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err

    return run


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[dict]:
    """moto's S3 server with the bucket helpers.BUCKET: the environment that reaches it, with a key it accepts
    (a module's own server, so that one module's searches never meet another's)."""
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as env:
        yield env


@pytest.fixture(scope="session")
def local_ray():
    """One private local Ray for every in-process Tune run of the session (starting one costs ~6 s); its workers
    import the trainables of tests/tune_fakes.py from here."""
    here = {"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}}
    # Tune's output engine as search.run sets it, for every run of the session: a run under the newer engine
    # leaves Tune's global verbosity at 0, and the next run's table then had no rows
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, address="local", runtime_env=here)
    yield
    ray.shutdown()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules that run whole searches first, the quick modules after them, each module's tests in their order: the
    two xdist workers of `make test` then end on quick tests, together, not one idle while the other runs a last
    search of minutes."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable
    for item in items:  # the quick tests on the session's Ray: on one worker, so that one worker starts a Ray
        if "local_ray" in item.fixturenames and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group("local_ray"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on its test item (`item.rep_call`), so a fixture can tell that its test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
