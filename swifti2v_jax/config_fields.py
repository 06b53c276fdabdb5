"""One converter from ml_collections (or plain mappings) to frozen dataclass configs.

Every option a user can set lives in exactly one dataclass field. `from_fields` builds the
dataclass from a config section, coerces each value to the field's annotated type, recurses
into nested dataclass fields, and rejects names the dataclass does not have, so a knob that is
set in a config file but missing from the dataclass can never be silently ignored.

Missing names take the dataclass default. Values are coerced by annotation:
`int`, `float`, `bool`, `str`, `pathlib.Path`, `tuple[...]`, `X | None` (None, or "" / "none"
for None when X is not str), and nested dataclasses (a mapping, or an instance).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import ml_collections
from ml_collections import config_dict

T = TypeVar("T")


class ConfigFieldError(ValueError):
    """A config section has an unknown field or a value of the wrong kind."""


def as_dict(fields: Any) -> dict:
    """A plain dict from an ml_collections ConfigDict, a FrozenConfigDict or a mapping."""
    if fields is None:
        return {}
    if hasattr(fields, "to_dict"):
        return dict(fields.to_dict())
    if isinstance(fields, Mapping):
        return dict(fields)
    raise ConfigFieldError(f"expected a config section (mapping), got {type(fields).__name__}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(annotation) -> tuple[bool, Any]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != len(typing.get_args(annotation)):
            inner = args[0] if len(args) == 1 else Any  # a wider union: not policed
            return True, inner
    return False, annotation


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    optional, inner = _is_optional(annotation)
    if optional:
        if value is None:
            return None
        if inner is not str and isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return _coerce(value, inner, where)
    if dataclasses.is_dataclass(inner) and isinstance(inner, type):
        if isinstance(value, inner):
            return value
        return from_fields(inner, value, where)
    origin = typing.get_origin(inner)
    if origin is tuple:
        if isinstance(value, str) or not hasattr(value, "__iter__"):
            raise ConfigFieldError(f"{where} must be a sequence, got {value!r}")
        args = typing.get_args(inner)
        items = list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in items)
        if args and len(args) != len(items):
            raise ConfigFieldError(f"{where} must have {len(args)} items, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(items, args or [Any] * len(items)))
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigFieldError(f"{where} must be true or false, got {value!r}")
    if inner in (int, float):
        # bools are ints to Python but never a count or a scale here; 2.5 is not an integer
        fits = not isinstance(value, bool) and not (
            inner is int and isinstance(value, float) and not value.is_integer()
        )
        try:
            if fits:
                return inner(value)
        except (TypeError, ValueError):
            pass
        kind = "an integer" if inner is int else "a number"
        raise ConfigFieldError(f"{where} must be {kind}, got {value!r}")
    if inner is str:
        if not isinstance(value, str):
            raise ConfigFieldError(f"{where} must be a string, got {value!r}")
        return value
    if inner is pathlib.Path:
        return pathlib.Path(value).expanduser()
    return value  # Any or an annotation we do not police


def from_fields(cls: type[T], fields: Any, what: str | None = None) -> T:
    """Builds dataclass `cls` from a config section; unknown names raise ConfigFieldError.

    `what` names the section in error messages (e.g. "stage2"); it defaults to the class name.
    Validation in the dataclass's own __post_init__ still runs (its ValueErrors propagate).
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"{cls!r} is not a dataclass type")
    what = what or cls.__name__
    values = as_dict(fields)
    hints = _hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigFieldError(
            f"unknown {what} field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    kwargs = {name: _coerce(value, hints[name], f"{what}.{name}") for name, value in values.items()}
    return cls(**kwargs)


def to_fields(instance: Any) -> dict:
    """The inverse of `from_fields`: a nested plain dict (tuples as lists, Paths as str)."""

    def plain(value):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, pathlib.Path):
            return str(value)
        return value

    return plain(instance)


def as_section(instance: Any) -> ml_collections.ConfigDict:
    """A config section holding a dataclass instance's values, so a config file writes only what
    differs from the dataclass defaults (which then live in one place). None values become
    placeholders of the annotated type, so they stay settable from the command line."""
    hints = _hints(type(instance))
    section = {}
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if value is None:
            _, inner = _is_optional(hints[field.name])
            value = config_dict.placeholder(inner if isinstance(inner, type) else object)
        elif dataclasses.is_dataclass(value):
            value = as_section(value)
        else:
            value = to_fields(value)  # tuples as lists, paths as strings
        section[field.name] = value
    return ml_collections.ConfigDict(section)
