"""Space files: plain Python, commented UPPER_CASE settings and a SPACE dict or a define-by-run `space(trial)`.

`load_space` runs the file with `runpy.run_path`, applies overrides, and checks everything a search needs before
Ray or MLflow start: every mistake is one `SpaceError` line naming the file and the setting. It does so in two
steps: `read_space` (the file, its names, every setting's type and range) imports nothing heavy, so a command
line answers its mistakes in a second; then the registries and the parameters, which need torch and ray.tune.
"""

from __future__ import annotations

import hashlib
import math
import re
import runpy
import traceback
import types
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import optuna

from search.errors import ConfigError, SpaceError

optuna.logging.set_verbosity(optuna.logging.WARNING)  # a study per check would log a line each


def _setting(default: object, meaning: str, **kwargs):
    """A setting: its default (MISSING = the space file must set it) and what it means, for messages."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"meaning": meaning})
    return field(default=default, metadata={"meaning": meaning}, **kwargs)


@dataclass(frozen=True)
class Settings:
    """A space file's UPPER_CASE settings, typed and checked: each knob is checked here and nowhere else.

    Keys a trial shares with TrainConfig (VAL_FRACTION, TRAIN_SUBSET) are passed on and checked there.

    Raises:
        SpaceError (from `check`): one line naming the file, the setting and the bad value.
    """

    DATASET: str = _setting(MISSING, "dataset name")
    MODEL: str = _setting(MISSING, "model name")
    METRIC: str = _setting("val_acc", "metric the search optimizes and ASHA compares")
    MODE: str = _setting("max", "max or min (default: the direction METRIC improves in)")
    MAX_EPOCHS: int = _setting(10, "epochs of a full trial")
    GRACE_PERIOD: int = _setting(1, "epochs before ASHA may stop a trial")
    REDUCTION_FACTOR: int = _setting(3, "ASHA keeps the top 1/REDUCTION_FACTOR at each rung")
    NUM_SAMPLES: int = _setting(20, "trials")
    MAX_CONCURRENT: int = _setting(0, "trials at once; 0 = as many as the cluster holds")
    CPUS_PER_TRIAL: float = _setting(1.0, "CPUs per trial")
    GPUS_PER_TRIAL: float = _setting(0.0, "GPUs per trial; fractions pack trials on one GPU")
    SEED: int = _setting(0, "seeds TPE, the data split and weight init")
    MAX_FAILURES: int = _setting(2, "retries of a crashed trial from its last checkpoint")
    CHECKPOINT_SECONDS: float = _setting(60.0, "a trial checkpoints at its last epoch, and before it once this many "
                                         "seconds have passed since its last checkpoint; 0 = every epoch")  # fmt: skip
    TIME_BUDGET: str = _setting("", "wall-clock limit of the search, e.g. 2h; empty = none")
    VAL_FRACTION: float = _setting(0.1, "of the training set, held out for validation")
    TRAIN_SUBSET: int = _setting(0, "train on this many images; 0 = all")
    PATIENCE: int = _setting(0, "end the search once this many trials in a row did not beat the best; 0 = never")
    MIN_DELTA: float = _setting(0.0, "what beating the best means for PATIENCE: by more than this")
    AUDIT_FRACTION: float = _setting(0.1, "of the trials, run in full whatever ASHA says, to audit early stopping")
    OBJECTIVES: dict = _setting({}, "a multi-objective search, e.g. {'val_acc': 'max', 'macs': 'min'}: TPE proposes "
                                "along their front; the first is METRIC, the one ASHA stops trials on")  # fmt: skip
    MAX_MACS: float = _setting(0.0, "multiply-accumulates per image a config may cost; TPE's proposals over it are "
                               "refused before they train; 0 = no limit")  # fmt: skip
    FIXED: dict = _setting({}, "train config keys or model options fixed for every trial")
    START_WITH: list = _setting([], "configs (dicts of searched parameters) to try first, e.g. a known baseline")
    SMOKE: dict = _setting({}, "settings and fixed params --smoke applies on top of SMOKE_DEFAULTS")
    REGISTER: str = _setting("", "register the winner as a new version of this MLflow registered model; "
                             "empty = do not")  # fmt: skip

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def check(cls, path: Path, given: dict) -> Settings:
        """Types, defaults and ranges of every setting; the first mistake is a SpaceError naming it."""
        objectives = given.get("OBJECTIVES")
        if objectives and isinstance(objectives, dict) and "METRIC" not in given:  # the first objective is METRIC
            given = {"METRIC": next(iter(objectives)), "MODE": next(iter(objectives.values())), **given}
        # MODE follows the metric unless the file says otherwise: val_loss is minimized
        given = {"MODE": METRICS_MODES.get(given.get("METRIC", "val_acc"), "max"), **given}
        values = {}
        for f in fields(cls):
            kind, meaning = {"str": str, "int": int, "float": float, "dict": dict, "list": list}[f.type], f.metadata
            value = given.get(f.name, MISSING)
            if value is MISSING:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise SpaceError(f"{path}: {f.name} is required ({meaning['meaning']})")
                value = f.default if f.default is not MISSING else f.default_factory()
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if f.name == "TIME_BUDGET" and isinstance(value, (int, float)) and not isinstance(value, bool):
                raise SpaceError(f"{path}: TIME_BUDGET={value!r}: a duration is a string: TIME_BUDGET = "
                                 f"{_duration_text(value)!r} ({meaning['meaning']})")  # fmt: skip
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise SpaceError(f"{path}: {f.name} must be {kind.__name__} ({meaning['meaning']}), got {value!r}")
            if kind is float and not math.isfinite(value):  # nan passes every range check (nan < 0 is false)
                raise SpaceError(f"{path}: {f.name}={value!r}: must be a finite number ({meaning['meaning']})")
            values[f.name] = value
        settings = cls(**values)
        problem = settings._problem()
        if problem:
            name, why = problem
            raise SpaceError(f"{path}: {name}={getattr(settings, name)!r}: {why}")
        return settings

    def _problem(self) -> tuple[str, str] | None:
        if self.OBJECTIVES:  # before METRIC, which the first objective sets
            problem = self._objectives_problem()
            if problem:
                return "OBJECTIVES", problem
        if self.METRIC not in METRICS_MODES:
            return "METRIC", f"unknown metric; choose from: {', '.join(METRICS_MODES)}"
        if self.MODE not in ("max", "min"):
            return "MODE", "must be 'max' or 'min'"
        if METRICS_MODES[self.METRIC] != self.MODE:
            better = "higher" if METRICS_MODES[self.METRIC] == "max" else "lower"
            return "MODE", f"{self.METRIC} is better {better}, so this would keep the worst trial; leave MODE out"
        for name in ("MAX_EPOCHS", "NUM_SAMPLES", "GRACE_PERIOD"):
            if getattr(self, name) < 1:
                return name, "must be at least 1"
        if self.GRACE_PERIOD > self.MAX_EPOCHS:
            return "GRACE_PERIOD", f"must not exceed MAX_EPOCHS ({self.MAX_EPOCHS})"
        if self.REDUCTION_FACTOR < 2:
            return "REDUCTION_FACTOR", "must be at least 2"
        for name in ("MAX_CONCURRENT", "MAX_FAILURES", "CHECKPOINT_SECONDS", "TRAIN_SUBSET", "PATIENCE", "MIN_DELTA"):
            if getattr(self, name) < 0:
                return name, "must not be negative"
        if self.CPUS_PER_TRIAL < 1:
            return "CPUS_PER_TRIAL", "a trial trains with at least 1 CPU"
        if self.GPUS_PER_TRIAL < 0 or (self.GPUS_PER_TRIAL > 1 and not self.GPUS_PER_TRIAL.is_integer()):
            return "GPUS_PER_TRIAL", "must be a fraction up to 1 (0.25 packs four trials on a GPU) or whole GPUs"
        if self.MAX_MACS < 0:
            return "MAX_MACS", "must not be negative (0 = no limit)"
        if not 0 <= self.AUDIT_FRACTION <= 1:
            return "AUDIT_FRACTION", "must be between 0 and 1"
        if self.TIME_BUDGET:
            try:
                parse_duration(self.TIME_BUDGET)
            except ValueError as exc:
                return "TIME_BUDGET", str(exc)
        if self.REGISTER and (why := registered_name_problem(self.REGISTER)):
            return "REGISTER", why
        return None

    def _objectives_problem(self) -> str:
        known = {**METRICS_MODES, **COST_MODES}
        if len(self.OBJECTIVES) < 2:
            return "a multi-objective search needs at least two objectives (one is METRIC alone)"
        for name, mode in self.OBJECTIVES.items():
            if name not in known:
                return f"unknown objective {name!r}; choose from: {', '.join(known)}"
            if mode not in ("max", "min"):
                return f"{name}: direction {mode!r} must be 'max' or 'min'"
        first, mode = next(iter(self.OBJECTIVES.items()))
        if first not in METRICS_MODES:
            return f"the first objective is the metric ASHA stops trials on: one of {', '.join(METRICS_MODES)}"
        if (first, mode) != (self.METRIC, self.MODE):
            return f"the first objective ({first}: {mode}) must be METRIC and MODE ({self.METRIC}: {self.MODE})"
        return ""

    def check_names(self, path: Path) -> None:
        """DATASET and MODEL, against the registries of datasets and models. Those import torch, so `load_space`
        checks them after every other setting, and `read_space` not at all.

        Raises:
            SpaceError: naming the setting and what to choose from.
        """
        from models import list_models
        from search.data import DATASETS

        for name, what, known in (("DATASET", "dataset", list(DATASETS)), ("MODEL", "model", list_models())):
            if getattr(self, name) not in known:
                raise SpaceError(
                    f"{path}: {name}={getattr(self, name)!r}: unknown {what}; choose from: {', '.join(known)}"
                )

    @property
    def objectives(self) -> dict[str, str]:
        """What TPE optimizes, and which way: OBJECTIVES, or METRIC alone."""
        return dict(self.OBJECTIVES) or {self.METRIC: self.MODE}

    @property
    def time_budget_s(self) -> float | None:
        return parse_duration(self.TIME_BUDGET) if self.TIME_BUDGET else None


# --smoke: the whole pipeline on a tiny budget, a few minutes on 2 CPU cores.
SMOKE_DEFAULTS = {
    "NUM_SAMPLES": 4, "MAX_EPOCHS": 2, "GRACE_PERIOD": 1, "REDUCTION_FACTOR": 2, "TRAIN_SUBSET": 512,
    "batch_size": 64,
}  # fmt: skip
# Every metric a trial reports each epoch, and which way is better: each can be a space's METRIC.
METRICS_MODES = {"val_acc": "max", "val_top5": "max", "val_loss": "min", "train_loss": "min", "train_acc": "max"}
# What a trial costs, reported with its epochs (counted or measured once per architecture): each can be an objective.
COST_MODES = {"params": "min", "macs": "min", "latency_ms": "min", "images_per_second": "max"}
CHECK_SAMPLES = 32  # random configs drawn to check a space before the search starts


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
    settings: Settings
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
            "model": s.MODEL, "dataset": s.DATASET, "epochs": s.MAX_EPOCHS, "seed": s.SEED,
            "val_fraction": s.VAL_FRACTION, "train_subset": s.TRAIN_SUBSET, "data_dir": data_dir,
        }  # fmt: skip
        return {**base, **self.fixed}

    def start_with(self) -> list[dict]:
        """START_WITH, less the values something fixes (FIXED, --set, --smoke): a fixed value wins."""
        return [{k: v for k, v in point.items() if k not in self.fixed} for point in self.settings.START_WITH]

    def penalty(self) -> float:
        """The score a diverged trial gets: chance level, so TPE learns that region is bad."""
        from search.data import DATASETS

        classes = DATASETS[self.settings.DATASET].num_classes
        chance = {"val_acc": 1 / classes, "train_acc": 1 / classes, "val_top5": min(1.0, 5 / classes)}
        return chance.get(self.settings.METRIC, 1e6 if self.settings.MODE == "min" else -1e6)


def _duration_text(seconds: float) -> str:
    """3600 -> '1h', 5400 -> '90m', 45 -> '45s': what a number of seconds reads as in TIME_BUDGET."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:g}{unit}"
    return f"{seconds:g}s"


def registered_name_problem(name: str) -> str:
    """What makes `name` no name for an MLflow registered model ('' if nothing): MLflow's own rules
    (`mlflow.utils.validation._validate_model_name` and its 256-character column), checked without importing
    MLflow, and no '?', which MLflow accepts but which cuts the URI `models:/NAME@champion` short."""
    if not name.strip():
        return "an MLflow registered model name must not be blank"
    if any(c in name for c in "/:?"):
        return "an MLflow registered model name must not contain '/', ':' or '?'"
    if name in (".", "..") or name.startswith(".."):  # MLflow treats names as paths that must not resolve elsewhere
        return "an MLflow registered model name must not be '.' or start with '..'"
    if len(name) > 256:
        return f"an MLflow registered model name has at most 256 characters, not {len(name)}"
    return ""


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
    """Runs and checks a space file: `read_space`, then DATASET and MODEL, then the searched parameters.

    Args:
        path: the space file.
        overrides: `--set` style: UPPER_CASE keys override settings, others fix a parameter.
        smoke: apply SMOKE_DEFAULTS, then the file's SMOKE, before `overrides`.

    Raises:
        SpaceError: one line naming the file and the setting.
    """
    space = read_space(path, overrides, smoke)
    space.settings.check_names(space.path)
    _check_params(space)
    return space


def read_space(path: str | Path, overrides: dict | None = None, smoke: bool = False) -> Space:
    """Runs a space file and checks all that needs neither torch nor Ray: its names, every setting's type and
    range, and what SPACE holds (a dict SPACE's samplers come from ray.tune, which the file has imported).

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
    try:
        source = path.read_bytes().decode()
    except UnicodeDecodeError as exc:
        raise SpaceError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#x} at offset {exc.start}); save "
                         "it as UTF-8") from None  # fmt: skip
    try:
        namespace = runpy.run_path(str(path), run_name="__space__")
    except SyntaxError as exc:
        raise SpaceError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except SystemExit as exc:  # a search that searched nothing must not exit 0
        raise SpaceError(f"{path}: the file calls sys.exit({exc.code!r}); a space file only sets values") from None
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
        elif name in Settings.names():
            settings[name] = value
        elif name.isupper():
            raise SpaceError(f"{path}: unknown setting {name}; known: {', '.join(Settings.names())}, SPACE")
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

    if smoke:  # a smoke run is how a space file gets tried: its own settings must hold for the real run too
        Settings.check(path, {**settings, **{k: v for k, v in (overrides or {}).items() if k.isupper()}})
    fixed = {}
    for source_overrides in (SMOKE_DEFAULTS if smoke else {}, settings.get("SMOKE", {}) if smoke else {}, overrides):
        for key, value in (source_overrides or {}).items():
            if key.isupper():
                if key not in Settings.names():
                    raise SpaceError(f"{path}: --set {key}: unknown setting; known: {', '.join(Settings.names())}")
                settings[key] = value
            else:
                fixed[key] = value
    space = Space(path=path, settings=Settings.check(path, settings), params=params, source=source)
    constants = {}
    if isinstance(params, dict):  # constants in SPACE are fixed parameters; so is anything FIXED or --set
        from ray.tune.search.sample import Domain

        constants = {k: v for k, v in params.items() if not isinstance(v, Domain)}
        for key, value in constants.items():
            if isinstance(value, dict) and "grid_search" in value:
                raise SpaceError(
                    f"{path}: SPACE[{key!r}]: tune.grid_search is not supported: TPE samples a space, it does not "
                    f"walk a grid; use tune.choice({value['grid_search']!r:.80})"
                )
            if not isinstance(value, (str, int, float, bool)):
                raise SpaceError(f"{path}: SPACE[{key!r}]: expected a ray.tune sampler or a constant (a string or a "
                                 f"number), got {type(value).__name__} {_short(value)}")  # fmt: skip
    space.fixed = {**constants, **space.settings.FIXED, **fixed}
    if isinstance(space.params, dict):
        space.params = {k: v for k, v in space.params.items() if k not in space.fixed}
        if not space.params:
            raise SpaceError(f"{path}: nothing left to search: every SPACE key is a constant or fixed")
    return space


def _short(value: object) -> str:
    """A value's repr on one line, cut to 80 characters (a numpy array's spans many)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + "..."


def distributions(space: Space) -> dict[str, optuna.distributions.BaseDistribution]:
    """The searched parameters as Optuna distributions (what TPE sees)."""
    if isinstance(space.params, dict):
        from ray.tune.search.optuna import OptunaSearch
        from ray.tune.search.sample import Domain

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
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=space.settings.SEED))
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
    from models import PoolingCollapse  # torch: these checks build each sampled model's shapes
    from search.train import TrainConfig

    try:  # what every trial shares (settings passed on to the trainer, FIXED, --set) is the trainer's to check
        TrainConfig.from_dict(space.base_config()).validate()
    except ConfigError as exc:
        if not isinstance(exc.__cause__, PoolingCollapse):
            raise SpaceError(f"{space.path}: {exc}") from None
    dists = distributions(space)
    overlap = set(dists) & set(space.fixed)
    if callable(space.params) and overlap:
        dists = {k: v for k, v in dists.items() if k not in overlap}
    collapsed, first_collapse, cheapest = 0, None, math.inf
    checked = sample_configs(space, dists)
    for where, params in checked:
        config = TrainConfig.from_dict({**space.base_config(), **params})
        try:
            config.validate()
        except ConfigError as exc:
            if not isinstance(exc.__cause__, PoolingCollapse):
                raise SpaceError(f"{space.path}: {where}: {exc}") from None
            collapsed += 1
            first_collapse = first_collapse or f"{where}: {exc}"
            continue
        if space.settings.MAX_MACS:
            cheapest = min(cheapest, config.cost()["macs"])
    for i, point in enumerate(space.settings.START_WITH):
        if not isinstance(point, dict):
            raise SpaceError(f"{space.path}: START_WITH[{i}] must be a dict of parameters, got {point!r}")
    for i, point in enumerate(space.start_with()):
        if isinstance(space.params, dict) and set(point) != set(space.params):
            raise SpaceError(
                f"{space.path}: START_WITH[{i}] must give every searched parameter: {', '.join(space.params)}"
            )
        try:
            config = TrainConfig.from_dict({**space.base_config(), **point})
            config.validate()
        except ConfigError as exc:
            raise SpaceError(f"{space.path}: START_WITH[{i}]: {exc}") from None
        if space.settings.MAX_MACS and config.cost()["macs"] > space.settings.MAX_MACS:
            raise SpaceError(
                f"{space.path}: START_WITH[{i}] costs {config.cost()['macs']:.3g} MACs per image, over MAX_MACS "
                f"({space.settings.MAX_MACS:.3g})"
            )
    if collapsed == len(checked):
        raise SpaceError(f"{space.path}: every architecture this space samples collapses: {first_collapse}")
    if cheapest > space.settings.MAX_MACS > 0:
        raise SpaceError(
            f"{space.path}: MAX_MACS={space.settings.MAX_MACS:.3g}: none of {len(checked)} sampled configs fits "
            f"(the cheapest costs {cheapest:.3g} MACs per image)"
        )
