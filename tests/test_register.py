"""`--register NAME`: the winner as a new version of an MLflow registered model, behind the champion/challenger
gate (search/registry.py). The gate on a real sqlite store; whole searches on a sqlite store and a real `mlflow
server`, the champion loaded back in a fresh process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import MlflowServer
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import _validate_model_name

from search import registry, report, run
from search.fake_data import write_fake
from search.space import registered_name_problem
from search.train import TrainConfig, load_data

ROOT = Path(__file__).parents[1]
FASHION = ROOT / "spaces/vgg_fashion_mnist.py"
SPLIT = "fashion_mnist test set of 100 images, sha256 0123456789abcdef"


# --- the name, checked before anything starts ---


@pytest.mark.parametrize(
    "name", ["fashion", "vgg cifar100", "a.b", "team@lab", "-x", "..", ".", "..a", "a/b", "a:b", " ", "x" * 256]
)
def test_the_name_rule_is_mlflows(name):
    try:
        _validate_model_name(name)
        mlflow_accepts = True
    except MlflowException:
        mlflow_accepts = False
    assert (registered_name_problem(name) == "") == mlflow_accepts, name


def test_names_mlflow_accepts_but_the_alias_uri_or_the_store_cannot_hold_are_refused_too():
    assert "'?'" in registered_name_problem("a?b")  # models:/a?b@champion would load models:/a
    assert "256" in registered_name_problem("x" * 257)  # the registry's column holds 256


@pytest.mark.parametrize(
    "args, given",
    [
        (["--register", "team/fashion"], "team/fashion"),
        (["--set", "REGISTER=a:b"], "a:b"),
        (["--register", " "], " "),
        (["--set", "REGISTER=7"], None),
    ],
)
def test_a_bad_name_is_one_line_exit_2_before_anything_starts(args, given, cli_exit, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli_exit(run.main, [FASHION, "--storage", tmp_path / "runs", *args])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "REGISTER" in err and str(FASHION) in err
    assert (given is None and "must be str" in err) or f"REGISTER={given!r}" in err
    assert list(tmp_path.iterdir()) == []  # no runs/, no mlflow.db


def test_a_space_files_bad_register_setting_names_the_file(cli_exit, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "space.py"
    space.write_text(FASHION.read_text() + '\nREGISTER = "..fashion"\n')
    code, _, err = cli_exit(run.main, [space, "--storage", tmp_path / "runs"])
    assert code == 2 and f"{space}: REGISTER='..fashion': " in err and "'..'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.py"]


# --- the gate, on a real sqlite store ---


@pytest.fixture
def store(sqlite_uri):
    """A sqlite store, an experiment and a run; `new()` logs a model to that run (no files) and returns its id."""
    client = MlflowClient(sqlite_uri)
    experiment = client.create_experiment("gate")
    run_id = client.create_run(experiment).info.run_id

    def new() -> str:
        return client.create_logged_model(experiment, source_run_id=run_id).model_id

    return client, run_id, new


def tags(acc: float, split: str = SPLIT) -> dict:
    return {"test_acc": repr(acc), "test_split": split, "trial_id": "t1"}


def aliased(client, name: str) -> dict:
    return {alias: int(version) for alias, version in client.get_registered_model(name).aliases.items()}


def test_the_first_version_is_champion_and_only_a_better_one_takes_the_alias(store):
    client, run_id, new = store
    first = registry.register(client, "fashion", new(), run_id, tags(0.70))
    assert first == {"name": "fashion", "version": 1, "alias": "champion", "why": "", "uri": "models:/fashion@champion"}
    worse = registry.register(client, "fashion", new(), run_id, tags(0.60))
    assert (worse["version"], worse["alias"]) == (2, "challenger")
    assert worse["why"] == "test_acc 0.6000 does not beat champion version 1's 0.7000"
    assert aliased(client, "fashion") == {"champion": 1, "challenger": 2}
    tie = registry.register(client, "fashion", new(), run_id, tags(0.70))  # as good is not better
    assert tie["alias"] == "challenger" and aliased(client, "fashion") == {"champion": 1, "challenger": 3}
    better = registry.register(client, "fashion", model_id := new(), run_id, tags(0.75))
    assert (better["version"], better["alias"], better["why"]) == (4, "champion", "")
    assert aliased(client, "fashion") == {"champion": 4, "challenger": 3}

    version = client.get_model_version("fashion", "4")
    assert version.run_id == run_id and version.tags == tags(0.75)
    assert json.loads(client.get_logged_model(model_id).tags["mlflow.modelVersions"]) == [
        {"name": "fashion", "version": "4"}
    ]


def test_a_better_accuracy_on_another_test_split_is_not_comparable(store):
    client, run_id, new = store
    registry.register(client, "fashion", new(), run_id, tags(0.70))
    other = SPLIT.replace("100 images", "50 images")
    moved = registry.register(client, "fashion", new(), run_id, tags(0.99, other))
    assert moved["alias"] == "challenger" and aliased(client, "fashion")["champion"] == 1
    assert moved["why"] == f"not comparable: champion version 1 was tested on {SPLIT}, this one on {other}"


def test_a_champion_set_by_hand_without_the_record_is_not_replaced(store):
    client, run_id, new = store
    client.create_registered_model("fashion")
    client.create_model_version("fashion", "file:///elsewhere", run_id)
    client.set_registered_model_alias("fashion", "champion", "1")
    mine = registry.register(client, "fashion", new(), run_id, tags(0.99))
    assert (mine["version"], mine["alias"]) == (2, "challenger")
    assert "not comparable: champion version 1 was tested on a test split it does not record" in mine["why"]


def test_the_test_split_is_the_same_wherever_its_files_lie_and_changes_with_its_images(fake_data_dir, tmp_path):
    here = load_data(TrainConfig(dataset="mnist", data_dir=str(fake_data_dir)))
    write_fake("mnist", str(tmp_path), train=300, test=100)  # the same fake set, written elsewhere
    there = load_data(TrainConfig(dataset="mnist", data_dir=str(tmp_path)))
    assert registry.test_split_id(here) == registry.test_split_id(there)
    assert registry.test_split_id(here).startswith("mnist test set of 100 images, sha256 ")
    fewer = load_data(TrainConfig(dataset="mnist", data_dir=str(tmp_path), test_subset=50))
    other = load_data(TrainConfig(dataset="fashion_mnist", data_dir=str(fake_data_dir)))
    assert len({registry.test_split_id(s) for s in (here, fewer, other)}) == 3


def test_git_commit_of_the_space_file(tmp_path, monkeypatch):
    monkeypatch.delenv("SEARCH_GIT_COMMIT", raising=False)
    if (ROOT / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", registry.git_commit(FASHION))
    (tmp_path / "space.py").write_text("")
    assert registry.git_commit(tmp_path / "space.py") == ""  # not in a git work tree: no tag
    monkeypatch.setenv("SEARCH_GIT_COMMIT", "abc123")  # a Ray Job's working folder, sent without .git
    assert registry.git_commit(tmp_path / "space.py") == "abc123"


def test_the_summary_says_where_the_version_went():
    line = report._registered_line(
        {
            "name": "f",
            "version": 2,
            "alias": "challenger",
            "why": "test_acc 0.1 does not beat ...",
            "uri": "models:/f@challenger",
        }
    )
    assert line == "f version 2 as challenger (models:/f@challenger): test_acc 0.1 does not beat ..."


# --- whole searches: a sqlite store and a real mlflow server ---


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("register_data")
    write_fake("fashion_mnist", str(root), train=640, test=100)  # --smoke trains 512 of them
    return root


@pytest.fixture
def tracking_uri(request, tmp_path):
    """The store a test's searches log to: a sqlite file, or a real `mlflow server` on loopback (its own sqlite
    store and artifact folder), stopped after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/mlflow.db"
        return
    server = MlflowServer(tmp_path)
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()


LOAD = """
import json, sys, mlflow, torch
from mlflow.models import get_model_info
from search.train import TrainConfig, load_data, test_batches
uri, config_file, data_dir = sys.argv[1:]
model = mlflow.pytorch.load_model(uri)
config = TrainConfig.from_dict({**json.load(open(config_file)), "data_dir": data_dir})
right = seen = 0
with torch.no_grad():
    for x, y in test_batches(config, load_data(config)):
        right += int((model(x).argmax(1) == y).sum())
        seen += len(y)
inputs = get_model_info(uri).signature.inputs.to_dict()
print(json.dumps({"test_acc": right / seen, "inputs": inputs}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("tracking_uri", ["sqlite", "server"], indirect=True)
def test_a_worse_second_search_leaves_the_champion_and_becomes_challenger(
    tracking_uri, data_dir, tmp_path, monkeypatch, local_ray, capsys
):
    monkeypatch.chdir(tmp_path)
    common = {"smoke": True, "data_dir": str(data_dir), "storage": str(tmp_path / "runs"),
              "tracking_uri": tracking_uri, "quiet": True, "register": "fashion"}  # fmt: skip
    first = run.search(str(FASHION), sets={"NUM_SAMPLES": 2}, **common)
    # worse by construction: one trial of one epoch at a learning rate too small to move the weights
    second = run.search(str(FASHION), sets={"NUM_SAMPLES": 1, "MAX_EPOCHS": 1, "lr": 1e-6}, **common)
    printed = capsys.readouterr().out
    assert first.test["test_acc"] > second.test["test_acc"], "the second search should be the worse one"

    assert first.summary["registered"] == {"name": "fashion", "version": 1, "alias": "champion", "why": "",
                                           "uri": "models:/fashion@champion"}  # fmt: skip
    assert second.summary["registered"]["alias"] == "challenger"
    why = f"test_acc {second.test['test_acc']:.4f} does not beat champion version 1's {first.test['test_acc']:.4f}"
    assert second.summary["registered"]["why"] == why
    assert "registered  fashion version 1 as champion (models:/fashion@champion)\n" in printed
    assert f"registered  fashion version 2 as challenger (models:/fashion@challenger): {why}\n" in printed

    client = MlflowClient(tracking_uri)
    assert aliased(client, "fashion") == {"champion": 1, "challenger": 2}
    champion = client.get_model_version_by_alias("fashion", "champion")
    assert champion.run_id == first.parent_run_id
    expected = {"parent_run_id": first.parent_run_id, "trial_id": first.summary["best_trial"], "space": str(FASHION),
                "test_acc": repr(first.test["test_acc"])}  # fmt: skip
    assert {k: champion.tags[k] for k in expected} == expected
    assert champion.tags["test_split"].startswith("fashion_mnist test set of 100 images, sha256 ")
    assert client.get_model_version("fashion", "2").tags["test_split"] == champion.tags["test_split"]
    assert ("git_commit" in champion.tags) == (ROOT / ".git").exists()
    logged = Path(client.download_artifacts(first.parent_run_id, "summary.json", str(tmp_path)))
    assert json.loads(logged.read_text())["registered"] == first.summary["registered"]

    loaded = subprocess.run(
        [sys.executable, "-c", LOAD, "models:/fashion@champion", first.summary["best_config_file"], str(data_dir)],
        cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    answer = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert answer["test_acc"] == pytest.approx(first.test["test_acc"], abs=1e-9)
    assert answer["inputs"][0]["tensor-spec"]["shape"] == [-1, 1, 28, 28]  # the signature: any batch of images
