"""A model's options: plain values, checked against the model's defaults in one place."""

from __future__ import annotations

import numbers

Option = str | int | float | bool


def _same_kind(value: object, default: Option) -> bool:
    # bool is an int subclass: True must not pass as a width, nor 1 as a flag. An int may stand for a float.
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, numbers.Real)
    if isinstance(default, int):
        return isinstance(value, numbers.Integral)
    return isinstance(value, type(default))


def check_options(name: str, options: dict[str, object], defaults: dict[str, Option]) -> None:
    """Raises ValueError naming the first option `name` does not have, or whose value is of the wrong kind."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown option {', '.join(map(repr, unknown))} for model {name!r}; valid options: {', '.join(defaults)}"
        )
    for key, value in options.items():
        if not _same_kind(value, defaults[key]):
            raise ValueError(f"{name}: option {key} must be {type(defaults[key]).__name__}, got {value!r}")
