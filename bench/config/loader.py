"""Parsed YAML -> nested typed dataclasses, generically, plus the value checks every section uses.

``build(cls, raw)`` builds any dataclass from its annotations (int, float, bool, str, Path,
Literal choices, lists, tuples, dicts, optionals, nested dataclasses, and types with a
``from_yaml`` classmethod), refusing unknown keys. Every mistake is a ConfigError whose key is the
full dotted path of the culprit, e.g. ``train.resolution.min_side``. Values a type cannot express
(ranges) are checked by the section's ``__post_init__`` with the helpers at the end, so that every
section words its messages alike.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import MISSING
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..errors import BenchError, ConfigError


def read_yaml(path: Path) -> dict:
    """The mapping in a YAML file; BenchError naming the file (and line) when it is not one."""
    try:
        text = path.read_text()
    except OSError as error:
        raise BenchError(f"cannot read config {path}: {error.strerror or error}") from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise BenchError(f"{where}: YAML does not parse: {problem}") from None
    if not isinstance(raw, dict):
        raise BenchError(f"{path}: expected a YAML mapping of config keys, got {describe(raw)}")
    return raw


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a number (YAML 1.1 wants ``1.0e-3``) and refuses a key
    given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


def build(cls, raw, where: str = ""):
    """Build dataclass ``cls`` from parsed YAML, checking every key and type against ``cls``."""
    if not isinstance(raw, dict):
        raise ConfigError(where or "config", f"expected a mapping, got {describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]
    names = [f.name for f in fields]
    for key in raw:
        if key not in names:
            raise ConfigError(join(where, str(key)), f"unknown key{suggest(str(key), names)}; "
                                                     f"valid keys: {', '.join(names)}")
    values = {}
    for f in fields:
        path = join(where, f.name)
        if f.name in raw:
            values[f.name] = convert(hints[f.name], raw[f.name], path)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(path, "required key is missing")
    try:
        return cls(**values)
    except ConfigError as error:
        raise error.under(where) from None
    except (TypeError, ValueError) as error:
        raise ConfigError(where or "config", str(error)) from None


def convert(tp, value, where: str):
    """``value`` checked against annotation ``tp`` (int is not bool; a float accepts an int)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if hasattr(tp, "from_yaml"):
        return tp.from_yaml(value, where)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return convert(option, value, where)
            except ConfigError as error:
                errors.append(error)
        # An option whose shape matched failed on the value (nan) or deeper down (a list with a bad item): say so.
        raise next((e for e, option in zip(errors, options) if str(e) != str(_type_error(option, value, where))),
                   _type_error(tp, value, where))
    if origin is Literal:
        if value in args:
            return value
        # A suggestion for a string only: one for a list would hide that its item is the culprit.
        close = suggest(value, [str(a) for a in args]) if isinstance(value, str) else ""
        raise ConfigError(where, f"expected one of {', '.join(map(repr, args))}, got {describe(value)}{close}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):  # nan passes every range check
                raise ConfigError(where, f"expected a finite number, got {describe(value)}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, str):
            return Path(value)
    elif origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, (list, tuple)):
            return _convert_sequence(origin or tp, args, value, where)
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            key_type, value_type = args or (Any, Any)
            return {convert(key_type, k, join(where, str(k))): convert(value_type, v, join(where, str(k)))
                    for k, v in value.items()}
    else:
        return value  # an annotation we do not model: let the owning dataclass validate it
    raise _type_error(tp, value, where)


def _convert_sequence(container, args, value, where):
    if container is list:
        item = args[0] if args else Any
        return [convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if args and len(args) != len(value):
        raise ConfigError(where, f"expected {len(args)} values, got {len(value)}")
    return tuple(convert(args[i] if args else Any, v, f"{where}[{i}]") for i, v in enumerate(value))


def _type_error(tp, value, where: str) -> ConfigError:
    return ConfigError(where, f"expected {_type_name(tp)}, got {describe(value)}")


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (list, tuple) or tp in (list, tuple):
        return "a list"
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def describe(value) -> str:
    if value is None:
        return "null"
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}
    return f"{value!r} ({kind.get(type(value), type(value).__name__)})"


def suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


# ---- value checks: every section's __post_init__ words its messages with these ---------------

def positive(section, *keys: str) -> None:
    for key in keys:
        if not getattr(section, key) > 0:
            raise ConfigError(key, f"must be positive, got {getattr(section, key)}")


def positive_items(section, key: str) -> None:
    """Every item of the list ``key`` (None: no list) must be positive."""
    for i, value in enumerate(getattr(section, key) or []):
        if not value > 0:
            raise ConfigError(f"{key}[{i}]", f"must be positive, got {value}")


def non_negative(section, *keys: str) -> None:
    for key in keys:
        if getattr(section, key) < 0:
            raise ConfigError(key, f"must be zero or positive, got {getattr(section, key)}")


def below_one(section, key: str, *, zero: bool) -> None:
    """A share: in [0, 1) when ``zero`` is allowed, else in (0, 1)."""
    value = getattr(section, key)
    if not (0 <= value < 1 if zero else 0 < value < 1):
        raise ConfigError(key, f"must be in {'[' if zero else '('}0, 1), got {value}")


def at_most(section, key: str, limit: str) -> None:
    """``key`` must not exceed the section's ``limit`` key."""
    value, bound = getattr(section, key), getattr(section, limit)
    if value > bound:
        raise ConfigError(key, f"{value} is more than {limit}={bound}")
