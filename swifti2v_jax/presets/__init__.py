"""Named model presets (Wan2.2 sizes, demo and tiny test variants) as ml_collections sections.

The library owns these tables; the `configs/*.py` files are thin `get_config()` wrappers over
them (library code never imports `configs`). `lookup` is the one name -> preset rule, and
`dispatch` builds the `get_config(preset)` function every preset-table config file exports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import ml_collections

Table = Mapping[str, Callable[[], ml_collections.ConfigDict]]


def lookup(table: Table, name: str | None, what: str, default: str) -> ml_collections.ConfigDict:
    """A fresh ConfigDict of preset `name` (None or "" picks `default`); unknown: ValueError."""
    name = name or default
    if name not in table:
        raise ValueError(f"unknown {what} preset {name!r}; choose one of {sorted(table)}")
    return table[name]()


def dispatch(table: Table, default: str, what: str) -> Callable[..., ml_collections.ConfigDict]:
    """`get_config(preset=default)` for a config file (`--config=FILE.py:preset`)."""

    def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
        return lookup(table, preset, what, default)

    get_config.__doc__ = f"A {what} preset by name: one of {sorted(table)} (default {default!r})."
    return get_config
