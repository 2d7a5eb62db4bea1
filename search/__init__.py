"""Hyperparameter search for PyTorch image classifiers: Ray Tune + Optuna TPE + ASHA, every trial in MLflow."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vgg-search")
except PackageNotFoundError:  # running from a checkout that was never pip-installed
    __version__ = "0+unknown"
