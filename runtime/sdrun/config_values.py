"""Typed, bounded reading of the numbers in a model folder's configs (which a stranger may have written).

Each reader returns the value or raises a ModelFolderError naming the file, the key, what it holds and
what it must be; bools are not numbers here, and floats must be finite.
"""

import math
from typing import Any

from sdrun.errors import ModelFolderError

_MISSING = object()


def _given(config: dict[str, Any], key: str, where: str, default: Any) -> Any:
    """config[key]; `default` when it is absent or null, which must then be given."""
    value = config.get(key)
    if value is not None:
        return value
    if default is _MISSING:
        raise ModelFolderError(f"{where} has no {key!r}; export the model folder again")
    return default


def _refuse(where: str, key: str, value: Any, expected: str) -> ModelFolderError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ModelFolderError(f"{where} {key}={shown}: expected {expected}; export the model folder again")


def whole_number(
    config: dict[str, Any], key: str, where: str, low: int, high: int, default: Any = _MISSING
) -> int:
    """config[key] as an integer in [low, high] (a float with no fraction counts); `default` if absent."""
    value = _given(config, key, where, default)
    if value is default:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _refuse(where, key, value, f"a whole number from {low} to {high}")
    return value


def real_number(
    config: dict[str, Any],
    key: str,
    where: str,
    low: float,
    high: float,
    default: Any = _MISSING,
    *,
    open_low: bool = False,
) -> float:
    """config[key] as a finite float in [low, high] ((low, high] with `open_low`); `default` if absent."""
    value = _given(config, key, where, default)
    if value is default:
        return default
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    if not math.isfinite(number) or number > high or number < low or (open_low and number == low):
        bracket = "(" if open_low else "["
        raise _refuse(where, key, value, f"a number in {bracket}{low:g}, {high:g}]")
    return number


def whole_numbers(
    config: dict[str, Any], key: str, where: str, low: int, high: int, max_length: int
) -> list[int]:
    """config[key] as a list of 1 to `max_length` integers, each in [low, high]."""
    value = _given(config, key, where, _MISSING)
    expected = f"a list of 1 to {max_length} whole numbers from {low} to {high}"
    if not isinstance(value, list) or not 1 <= len(value) <= max_length:
        raise _refuse(where, key, value, expected)
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not low <= item <= high:
            raise _refuse(where, key, value, expected)
    return value


def flag(config: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = _given(config, key, where, default)
    if not isinstance(value, bool):
        raise _refuse(where, key, value, "true or false")
    return value
