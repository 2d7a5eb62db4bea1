"""Space files: plain Python, commented UPPER_CASE settings and a SPACE dict or a define-by-run `space(trial)`.

`load_space` runs the file with `runpy.run_path`, applies overrides, and checks everything a search needs before
Ray or MLflow start: every mistake is one `SpaceError` line naming the file and the setting.
"""

from __future__ import annotations

import hashlib
import re
import runpy
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.sample import Domain

from models import PoolingCollapse, list_models
from search.cli import UsageError
from search.data import DATASETS
from search.train import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)  # a study per check would log a line each

# name: (type, default, what it means). A default of None means the space file must set it.
SETTINGS: dict[str, tuple[type, object, str]] = {
    "DATASET": (str, None, "dataset name"),
    "MODEL": (str, None, "model name"),
    "METRIC": (str, "val_acc", "metric the search optimizes and ASHA compares"),
    "MODE": (str, "max", "max or min"),
    "MAX_EPOCHS": (int, 10, "epochs of a full trial"),
    "GRACE_PERIOD": (int, 1, "epochs before ASHA may stop a trial"),
    "REDUCTION_FACTOR": (int, 3, "ASHA keeps the top 1/REDUCTION_FACTOR at each rung"),
    "NUM_SAMPLES": (int, 20, "trials"),
    "MAX_CONCURRENT": (int, 0, "trials at once; 0 = as many as the cluster holds"),
    "CPUS_PER_TRIAL": (float, 1.0, "CPUs per trial"),
    "GPUS_PER_TRIAL": (float, 0.0, "GPUs per trial; fractions pack trials on one GPU"),
    "SEED": (int, 0, "seeds TPE, the data split and weight init"),
    "MAX_FAILURES": (int, 2, "retries of a crashed trial from its last checkpoint"),
    "TIME_BUDGET": (str, "", "wall-clock limit of the search, e.g. 2h; empty = none"),
    "VAL_FRACTION": (float, 0.1, "of the training set, held out for validation"),
    "TRAIN_SUBSET": (int, 0, "train on this many images; 0 = all"),
    "FIXED": (dict, {}, "train config keys or model options fixed for every trial"),
    "START_WITH": (list, [], "configs (dicts of searched parameters) to try first, e.g. a known baseline"),
    "SMOKE": (dict, {}, "settings and fixed params --smoke applies on top of SMOKE_DEFAULTS"),
}
# --smoke: the whole pipeline on a tiny budget, a few minutes on 2 CPU cores.
SMOKE_DEFAULTS = {
    "NUM_SAMPLES": 4, "MAX_EPOCHS": 2, "GRACE_PERIOD": 1, "REDUCTION_FACTOR": 2, "TRAIN_SUBSET": 512,
    "batch_size": 64,
}  # fmt: skip
METRICS_MODES = {"val_acc": "max", "val_top5": "max", "val_loss": "min", "train_loss": "min", "train_acc": "max"}
CHECK_SAMPLES = 32  # random configs drawn to check a space before the search starts


class SpaceError(UsageError):
    """A space file or override that cannot run; the message names the file and the setting."""


@dataclass
class Space:
    """A loaded, checked space file.

    Attributes:
        path: the file.
        settings: every UPPER_CASE setting, defaults filled in, overrides applied.
        params: the searched parameters: a dict of ray.tune samplers, or a define-by-run function.
        fixed: parameters fixed for every trial (FIXED, --set, and the settings that are trial keys).
        source: the file's text, logged with the search.
    """

    path: Path
    settings: dict
    params: dict | Callable
    fixed: dict = field(default_factory=dict)
    source: str = ""

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]

    def base_config(self, data_dir: str = "") -> dict:
        """What every trial gets before the sampler adds its parameters."""
        s = self.settings
        base = {
            "model": s["MODEL"], "dataset": s["DATASET"], "epochs": s["MAX_EPOCHS"], "seed": s["SEED"],
            "val_fraction": s["VAL_FRACTION"], "train_subset": s["TRAIN_SUBSET"], "data_dir": data_dir,
        }  # fmt: skip
        return {**base, **self.fixed}

    def penalty(self) -> float:
        """The score a diverged trial gets: chance level, so TPE learns that region is bad."""
        classes = DATASETS[self.settings["DATASET"]].num_classes
        chance = {"val_acc": 1 / classes, "train_acc": 1 / classes, "val_top5": min(1.0, 5 / classes)}
        return chance.get(self.settings["METRIC"], 1e6 if self.settings["MODE"] == "min" else -1e6)


def parse_duration(text: str) -> float:
    """'2h', '90m', '1h30m', '45s' or plain seconds -> seconds.

    Raises:
        ValueError: on anything else.
    """
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([dhms])", text)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text):
        raise ValueError(f"time budget {text!r}: expected a duration like 2h, 90m, 1h30m or 3600")
    return sum(float(n) * {"d": 86400, "h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def load_space(path: str | Path, overrides: dict | None = None, smoke: bool = False) -> Space:
    """Runs and checks a space file.

    Args:
        path: the space file.
        overrides: `--set` style: UPPER_CASE keys override settings, others fix a parameter.
        smoke: apply SMOKE_DEFAULTS, then the file's SMOKE, before `overrides`.

    Raises:
        SpaceError: one line naming the file and the setting.
    """
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: no such space file")
    if path.suffix != ".py":
        raise SpaceError(f"{path}: a space file is a Python file ending in .py")
    source = path.read_text()
    try:
        namespace = runpy.run_path(str(path), run_name="__space__")
    except SyntaxError as exc:
        raise SpaceError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:
        lines = [
            f.lineno for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == path.resolve()
        ]
        where = f"{path}:{lines[-1]}" if lines else str(path)
        raise SpaceError(f"{where}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None

    settings, params = {}, None
    for name, value in namespace.items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if name == "SPACE" or name == "space" and callable(value):
            params = value
        elif name in SETTINGS:
            settings[name] = value
        elif name.isupper():
            raise SpaceError(f"{path}: unknown setting {name}; known: {', '.join(SETTINGS)}, SPACE")
        elif not callable(value):
            raise SpaceError(f"{path}: unknown name {name!r}: a space file holds settings, SPACE or space(trial)")
    if "SPACE" in namespace and callable(namespace.get("space")):
        raise SpaceError(f"{path}: define either SPACE or space(trial), not both")
    if params is None:
        raise SpaceError(f"{path}: no search space: define SPACE = {{...}} or def space(trial): ...")
    if isinstance(params, dict) and not params:
        raise SpaceError(f"{path}: SPACE is empty")
    if not isinstance(params, dict) and not callable(params):
        raise SpaceError(f"{path}: SPACE must be a dict of ray.tune samplers, got {type(params).__name__}")

    fixed = {}
    for source_overrides in (SMOKE_DEFAULTS if smoke else {}, settings.get("SMOKE", {}) if smoke else {}, overrides):
        for key, value in (source_overrides or {}).items():
            if key.isupper():
                if key not in SETTINGS:
                    raise SpaceError(f"{path}: --set {key}: unknown setting; known: {', '.join(SETTINGS)}")
                settings[key] = value
            else:
                fixed[key] = value
    space = Space(path=path, settings=_check_settings(path, settings), params=params, source=source)
    constants = {}
    if isinstance(params, dict):  # constants in SPACE are fixed parameters; so is anything FIXED or --set
        constants = {k: v for k, v in params.items() if not isinstance(v, Domain)}
    space.fixed = {**constants, **space.settings["FIXED"], **fixed}
    if isinstance(space.params, dict):
        space.params = {k: v for k, v in space.params.items() if k not in space.fixed}
        if not space.params:
            raise SpaceError(f"{path}: nothing left to search: every SPACE key is a constant or fixed")
    _check_params(space)
    return space


def _check_settings(path: Path, given: dict) -> dict:
    settings = {}
    for name, (kind, default, meaning) in SETTINGS.items():
        value = given.get(name, default)
        if value is None:
            raise SpaceError(f"{path}: {name} is required ({meaning})")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise SpaceError(f"{path}: {name} must be {kind.__name__} ({meaning}), got {value!r}")
        settings[name] = value
    s = settings

    def bad(name: str, why: str) -> SpaceError:
        return SpaceError(f"{path}: {name}={s[name]!r}: {why}")

    if s["DATASET"] not in DATASETS:
        raise bad("DATASET", f"unknown dataset; choose from: {', '.join(DATASETS)}")
    if s["MODEL"] not in list_models():
        raise bad("MODEL", f"unknown model; choose from: {', '.join(list_models())}")
    if s["METRIC"] not in METRICS_MODES:
        raise bad("METRIC", f"unknown metric; choose from: {', '.join(METRICS_MODES)}")
    if s["MODE"] not in ("max", "min"):
        raise bad("MODE", "must be 'max' or 'min'")
    for name in ("MAX_EPOCHS", "NUM_SAMPLES", "GRACE_PERIOD"):
        if s[name] < 1:
            raise bad(name, "must be at least 1")
    if s["GRACE_PERIOD"] > s["MAX_EPOCHS"]:
        raise bad("GRACE_PERIOD", f"must not exceed MAX_EPOCHS ({s['MAX_EPOCHS']})")
    if s["REDUCTION_FACTOR"] < 2:
        raise bad("REDUCTION_FACTOR", "must be at least 2")
    if s["MAX_CONCURRENT"] < 0 or s["MAX_FAILURES"] < 0 or s["TRAIN_SUBSET"] < 0:
        name = next(n for n in ("MAX_CONCURRENT", "MAX_FAILURES", "TRAIN_SUBSET") if s[n] < 0)
        raise bad(name, "must not be negative")
    if s["CPUS_PER_TRIAL"] < 1:
        raise bad("CPUS_PER_TRIAL", "a trial trains with at least 1 CPU")
    if s["GPUS_PER_TRIAL"] < 0 or (s["GPUS_PER_TRIAL"] > 1 and not s["GPUS_PER_TRIAL"].is_integer()):
        raise bad("GPUS_PER_TRIAL", "must be a fraction up to 1 (0.25 packs four trials on a GPU) or whole GPUs")
    if not 0 < s["VAL_FRACTION"] < 1:
        raise bad("VAL_FRACTION", "must be between 0 and 1")
    if s["TIME_BUDGET"]:
        try:
            parse_duration(s["TIME_BUDGET"])
        except ValueError as exc:
            raise bad("TIME_BUDGET", str(exc)) from None
    return settings


def distributions(space: Space) -> dict[str, optuna.distributions.BaseDistribution]:
    """The searched parameters as Optuna distributions (what TPE sees)."""
    if isinstance(space.params, dict):
        for key, value in space.params.items():
            if not isinstance(value, (Domain, str, int, float, bool)):
                raise SpaceError(
                    f"{space.path}: SPACE[{key!r}]: expected a ray.tune sampler or a constant, got {value!r}"
                )
        found = {}
        for key, value in space.params.items():
            try:  # one key at a time, so the message can name it
                found.update(OptunaSearch.convert_search_space({key: value}))
            except Exception as exc:
                raise SpaceError(f"{space.path}: SPACE[{key!r}]: {exc}") from None
        return found
    # define-by-run: run it against throwaway trials and collect what it suggests
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    found: dict = {}
    for _ in range(CHECK_SAMPLES):
        trial = study.ask()
        try:
            returned = space.params(trial)
        except Exception as exc:
            raise SpaceError(f"{space.path}: space(trial): {type(exc).__name__}: {exc}") from None
        if returned is not None and not isinstance(returned, dict):
            raise SpaceError(f"{space.path}: space(trial) must return None or a dict, got {returned!r}")
        found.update(trial.distributions)
        study.tell(trial, 0.0)
    return found


def sample_configs(space: Space, dists: dict, n: int = CHECK_SAMPLES) -> list[tuple[str, dict]]:
    """Random configs, plus every categorical choice and both ends of every range: (what varied, config)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=space.settings["SEED"]))
    samples = []
    for _ in range(n):
        trial = study.ask(fixed_distributions=dists)
        samples.append(("SPACE", trial.params))
        study.tell(trial, 0.0)
    base = samples[0][1]
    for key, dist in dists.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            if not dist.choices:
                raise SpaceError(f"{space.path}: SPACE[{key!r}]: empty choice")
            ends = dist.choices
        else:
            ends = (dist.low, dist.high)
        samples += [(f"SPACE[{key!r}]={v!r}", {**base, key: v}) for v in ends]
    return samples


def _check_params(space: Space) -> None:
    dists = distributions(space)
    overlap = set(dists) & set(space.fixed)
    if callable(space.params) and overlap:
        dists = {k: v for k, v in dists.items() if k not in overlap}
    collapsed, first_collapse = 0, None
    checked = sample_configs(space, dists)
    for where, params in checked:
        config = {**space.base_config(), **params}
        try:
            TrainConfig.from_dict(config).validate()
        except PoolingCollapse as exc:
            collapsed += 1
            first_collapse = first_collapse or f"{where}: {exc}"
        except ValueError as exc:
            raise SpaceError(f"{space.path}: {where}: {exc}") from None
    for i, point in enumerate(space.settings["START_WITH"]):
        if not isinstance(point, dict):
            raise SpaceError(f"{space.path}: START_WITH[{i}] must be a dict of parameters, got {point!r}")
        if isinstance(space.params, dict) and set(point) != set(space.params):
            raise SpaceError(
                f"{space.path}: START_WITH[{i}] must give every searched parameter: {', '.join(space.params)}"
            )
        try:
            TrainConfig.from_dict({**space.base_config(), **point}).validate()
        except ValueError as exc:
            raise SpaceError(f"{space.path}: START_WITH[{i}]: {exc}") from None
    if collapsed == len(checked):
        raise SpaceError(f"{space.path}: every architecture this space samples collapses: {first_collapse}")
