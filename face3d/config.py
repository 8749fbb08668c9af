"""Dataclass configs overridable from YAML files and ``key=value`` strings.

Every config in the toolkit is a (nested) dataclass whose defaults are the papers' values.
:func:`apply_overrides` updates one from a mapping (e.g. a parsed YAML file), checking
names and types so a typo is an error rather than a silently ignored setting.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from face3d.errors import UsageError

__all__ = ["apply_overrides", "load_config", "config_to_dict", "parse_override"]

T = TypeVar("T")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert ``value`` to ``annotation`` where that is unambiguous (int → float, list → tuple)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if annotation is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if annotation is bool and isinstance(value, bool):
        return value
    if annotation is str and isinstance(value, str):
        return value
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except UsageError:
                continue
    if origin is typing.Literal and value in args:
        return value
    if annotation is Any:
        return value
    raise UsageError(f"config: {where} expects {getattr(annotation, '__name__', annotation)}, got {value!r}")


def apply_overrides(config: T, overrides: Mapping[str, Any], prefix: str = "") -> T:
    """Return a copy of dataclass ``config`` with ``overrides`` (nested mappings) applied."""
    if not dataclasses.is_dataclass(config):
        raise TypeError("apply_overrides needs a dataclass instance")
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for key, value in overrides.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise UsageError(f"config: unknown setting '{where}' (known: {', '.join(sorted(names))})")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise UsageError(f"config: '{where}' is a section; give a mapping")
            changes[key] = apply_overrides(current, value, prefix=f"{where}.")
        else:
            changes[key] = _coerce(value, hints[key], where)
    try:
        return dataclasses.replace(config, **changes)
    except ValueError as e:  # __post_init__ validation
        raise UsageError(f"config: {e}") from None


def load_config(config: T, path: str | Path) -> T:
    """``config`` updated from a YAML file (a mapping of the dataclass's fields)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise UsageError(f"config file not found: {p}") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return config
    if not isinstance(data, Mapping):
        raise UsageError(f"{p}: the top level must be a mapping of settings")
    return apply_overrides(config, data)


def parse_override(text: str) -> dict[str, Any]:
    """``"a.b=3"`` → ``{"a": {"b": 3}}`` (the value parsed as YAML)."""
    if "=" not in text:
        raise UsageError(f"override '{text}' must look like section.name=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw else ""
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain YAML-able data."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if hasattr(v, "__module__") and type(v).__module__ == "torch":
            return str(v)
        return v
    return plain(config)
