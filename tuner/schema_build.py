"""Dataclasses built from parsed YAML: unknown keys, missing keys and wrong types reported, not raised.

`build` walks a `schema` class's type hints and converts each value the YAML gives it, so the schema
alone says what a key takes; each problem is appended to one list with its key path, so a spec with
ten mistakes is reported once, in full. It accepts what YAML means rather than what it parsed
(`1e-4` is read as a string; `as_number` takes it as the number the user wrote). Imports `schema`
only for `scheduler: none`, the one section a word may stand for.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal

from tuner.schema import SchedulerSpec


def build(cls: type, raw: Any, path: str, problems: list[str]) -> Any:
    """Build dataclass `cls` from `raw`, recording unknown keys, missing keys and wrong types."""
    where = path or "spec"
    if not isinstance(raw, dict):
        problems.append(f"{where}: got {raw!r}, expected a mapping")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{_join(path, key)}: unknown key{hint}; allowed keys: {', '.join(fields)}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key_path = _join(path, name)
        if name not in raw:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                problems.append(f"{key_path}: missing; it is required")
                values[name] = None  # keep going: the other checks still report their problems
            continue
        values[name] = _convert(hints[name], raw[name], key_path, problems)
    return cls(**values)


def _convert(hint: Any, value: Any, path: str, problems: list[str]) -> Any:
    """`value` as a field typed `hint` holds it; where it does not fit, a problem and a stand-in (None
    or the value as given), so the checks after this one still run."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _union(typing.get_args(hint), value, path, problems)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            problems.append(f"{path}: got {value!r}, expected one of {', '.join(map(repr, choices))}")
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _section(hint, value, path, problems)
    if origin is list:
        return _list(typing.get_args(hint)[0], value, path, problems)
    if origin is dict or hint is dict:
        return _mapping(value, path, problems)
    return _scalar(hint, value, path, problems)


def _union(options: tuple[Any, ...], value: Any, path: str, problems: list[str]) -> Any:
    """`X | None` takes null; `float | str` takes whichever fits first."""
    if value is None and type(None) in options:
        return None
    inner = [o for o in options if o is not type(None)]
    if len(inner) == 1:
        return _convert(inner[0], value, path, problems)
    for option in inner:  # float | str: keep whichever fits
        scratch: list[str] = []
        converted = _convert(option, value, path, scratch)
        if not scratch:
            return converted
    problems.append(f"{path}: got {value!r}, expected one of {', '.join(o.__name__ for o in inner)}")
    return None


def _section(cls: type, value: Any, path: str, problems: list[str]) -> Any:
    """A nested section (`data.clean`, `promote.generate`); `scheduler: none` stands for ASHA off."""
    if cls is SchedulerSpec and value == "none":
        return SchedulerSpec(type="none")
    if value is None:
        fix = ("write `scheduler: none` to run every trial to the end" if cls is SchedulerSpec
               else "delete the line to take the defaults")
        problems.append(f"{path}: empty (the key has no value), expected a mapping; write its keys under "
                        f"it, or {fix}")
        return None
    return build(cls, value, path, problems)


def _list(item: Any, value: Any, path: str, problems: list[str]) -> Any:
    """A list of sections (`search.metrics`), of configs (`search.enqueue`) or of names (`tags`)."""
    if isinstance(item, type) and dataclasses.is_dataclass(item):
        if not isinstance(value, list):
            keys = ", ".join(f.name for f in dataclasses.fields(item))
            problems.append(f"{path}: got {value!r}, expected a list of mappings with keys {keys}")
            return None
        return [build(item, entry, f"{path}[{i}]", problems) for i, entry in enumerate(value)]
    if typing.get_origin(item) is dict:
        if not isinstance(value, list) or not value or not all(isinstance(v, dict) and v for v in value):
            problems.append(f"{path}: got {value!r}, expected a list of mappings, one per config, e.g. "
                            "[{learning_rate: 1.0e-4, per_device_train_batch_size: 8}]")
            return None
        return value
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.append(f"{path}: got {value!r}, expected a list of non-empty strings")
        return []
    return value


def _mapping(value: Any, path: str, problems: list[str]) -> dict[str, Any] | None:
    """A free-form mapping (`search.space`, `search.baseline`): its entries are checked later."""
    if value is None:
        problems.append(f"{path}: empty (the key has no value), expected a mapping; write its entries under it, "
                        "or delete the line to take the defaults")
        return None
    if not isinstance(value, dict):
        problems.append(f"{path}: got {value!r}, expected a mapping")
        return None
    return value


def _scalar(kind: type, value: Any, path: str, problems: list[str]) -> Any:
    """A bool, int, float or non-empty string; an integer written `1e6` or `4.0` is taken as one."""
    if kind is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: got {value!r}, expected true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            number = as_number(value)
            if number is not None and number.is_integer():  # 1e6 (YAML reads it as a string), 4.0
                return int(number)
            problems.append(f"{path}: got {value!r}, expected an integer")
        return value
    if kind is float:
        number = as_number(value)
        if number is None:
            problems.append(f"{path}: got {value!r}, expected a number")
        return number
    if kind is str:
        if not isinstance(value, str) or not value:
            problems.append(f"{path}: got {value!r}, expected a non-empty string")
        return value
    raise TypeError(f"no conversion for {kind}")  # a bug in the schema, not in the spec


def as_number(value: Any) -> float | None:
    """YAML reads `1e-4` (no dot) as a string; accept it as the number the user meant."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None  # NaN passes every range rule: never a value


def to_number(value: Any) -> float:
    """`as_number` of a value validation has accepted as one; ValueError where it is none."""
    found = as_number(value)
    if found is None:
        raise ValueError(f"{value!r} is not a finite number")
    return found


def _join(path: str, key: Any) -> str:
    """A key's dotted path under `path` (the top level has none)."""
    return f"{path}.{key}" if path else str(key)
