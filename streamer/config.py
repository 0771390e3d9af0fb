"""Typed YAML configs: dataclass schemas, every problem reported with its path.

`load(path, Schema)` reads YAML, substitutes ${ENV_VAR} (and ${ENV_VAR:-default})
in strings, then builds the dataclass tree. Unknown keys, wrong types and
invalid values are all collected and raised together as one `ConfigError`, so a
user fixes a config in one pass.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems))


def interpolate(value: Any, problems: list[str], where: str = "") -> Any:
    """Replace ${NAME} / ${NAME:-default} in every string of a YAML tree."""
    if isinstance(value, dict):
        return {k: interpolate(v, problems, _join(where, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, problems, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        problems.append(f"{where or '<root>'}: environment variable ${{{name}}} is not set")
        return ""

    return _ENV.sub(substitute, value)


def path_problem(path: str | os.PathLike, folder: bool = False) -> str | None:
    """Why this process could not create or write the file (or folder) `path`, or None; found without creating it."""
    path = Path(path)
    if path.exists():
        if path.is_dir() != folder:
            return f"cannot use {path}: it is not a {'folder' if folder else 'file'}"
        if not os.access(path, os.W_OK | (os.X_OK if folder else 0)):
            return f"cannot write {path}: permission denied, or a read-only file system"
        return None
    existing = next(p for p in path.parents if p.exists())
    if not existing.is_dir():
        return f"cannot create {path}: {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot create {path}: {existing} is not writable (permission denied, or a read-only file system)"
    return None


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError([f"cannot read {path}: {e.strerror or e}"], str(path)) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"invalid YAML: {e}"], str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["the top level must be a mapping of settings"], str(path))
    return data


def load(path: str | os.PathLike, schema: type, overrides: dict | None = None):
    """Read, interpolate and validate a YAML file into `schema` (a dataclass)."""
    problems: list[str] = []
    data = interpolate(read_yaml(path), problems)
    if overrides:
        data = merge(data, overrides)
    result = build(schema, data, problems)
    if problems:
        raise ConfigError(problems, str(path))
    return result


def from_dict(schema: type, data: dict, source: str = "config"):
    problems: list[str] = []
    result = build(schema, interpolate(data, problems), problems)
    if problems:
        raise ConfigError(problems, source)
    return result


def merge(base: dict, overrides: dict) -> dict:
    """Deep-merge `overrides` (nested dicts) into a copy of `base`."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def build(schema: type, data: Any, problems: list[str], where: str = ""):
    """A `schema` instance from YAML data; problems are appended, not raised."""
    if not isinstance(data, dict):
        problems.append(f"{where or '<root>'}: expected a mapping, got {type(data).__name__}")
        return None
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    for key in data:
        if key not in fields:
            problems.append(f"{_join(where, key)}: unknown setting (known: {', '.join(sorted(fields))})")
    values = {}
    before = len(problems)
    for name, field in fields.items():
        path = _join(where, name)
        if name in data:
            values[name] = _convert(hints[name], data[name], problems, path)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            problems.append(f"{path}: required setting is missing")
    if len(problems) > before:
        return None
    try:
        return schema(**values)
    except ConfigError as e:  # a __post_init__ that lists several problems, each with its path
        problems.extend(_join(where, p) for p in e.problems)
        return None
    except (TypeError, ValueError) as e:  # the dataclass's own __post_init__ checks
        problems.append(f"{where or '<root>'}: {e}")
        return None


def _convert(hint: Any, value: Any, problems: list[str], where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(options[0], value, problems, where)
        for option in options:  # first option that takes the value without complaint
            trial: list[str] = []
            converted = _convert(option, value, trial, where)
            if not trial:
                return converted
        problems.append(f"{where}: {value!r} is none of {', '.join(_name(o) for o in options)}")
        return None
    if origin is Literal:
        if value not in args:
            problems.append(f"{where}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, problems, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {value!r}")
            return None
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                problems.append(f"{where}: expected {len(args)} items, got {len(value)}")
                return None
            return tuple(_convert(a, v, problems, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, problems, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return None
        return value
    if hint is bool:
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: expected a number, got {value!r}")
            return value
        number = float(value) if isinstance(value, float) or abs(value) < 2**1000 else math.inf
        if not math.isfinite(number):  # YAML's .nan and .inf: no setting means them, and waits overflow on them
            problems.append(f"{where}: expected a finite number, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"config schema type {hint!r} at {where} is not supported")


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
