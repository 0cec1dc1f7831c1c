"""Command-line flags derived from a settings dataclass, so a field, its default and its help exist once.

Every field ``name`` becomes ``--name-with-dashes`` (or the field's ``metadata["flag"]``) with the field's
``metadata["help"]`` and its default shown; a flag left out keeps the dataclass default (argparse's default is None,
so the dataclass is the only source of defaults). By the field's type:

- ``int`` / ``float`` / ``str`` (also ``| None``): one value;
- ``bool``: ``--name`` sets True (``--no-name`` sets False when the default is True);
- ``list[int]`` / ``list[str]``: comma-separated (``--ks 1,4,16``), or one value per repeat with ``metadata["repeat"]``;
- ``dict``: ``KEY=VALUE`` per repeat, values read as YAML like ``--set`` (``--pot-option rank=16``).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from recipes.config import parse_override


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _shown(value: Any) -> str:
    if isinstance(value, (list, dict)) and not value:
        return "none"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def _kind(annotation: Any) -> tuple[str, type | None]:
    """("scalar", type) | ("bool", None) | ("list", item type) | ("dict", None) of a field annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return "bool", None
    if origin is list:
        return "list", args[0]
    if origin is dict or annotation is dict:
        return "dict", None
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return "scalar", args[0]
    if annotation in (int, float, str):
        return "scalar", annotation
    raise TypeError(f"no flag for a field of type {annotation!r}")


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, item = _kind(hints[f.name])
        default = field_default(f)
        text = f.metadata.get("help", "")
        if kind == "bool":
            if default:
                parser.add_argument("--no-" + flag_name(f)[2:], dest=f.name, action="store_const", const=False,
                                    default=None, help=text)
            else:
                parser.add_argument(flag_name(f), dest=f.name, action="store_const", const=True, default=None,
                                    help=text)
            continue
        repeat = kind == "dict" or (kind == "list" and f.metadata.get("repeat", False))
        parser.add_argument(flag_name(f), dest=f.name, default=None, action="append" if repeat else "store",
                            type=item if kind == "scalar" else None, metavar=f.metadata.get("metavar"),
                            help=f"{text} (default: {_shown(default)})" if text else f"default: {_shown(default)}")


def _comma_list(text: str, item: type, flag: str) -> list:
    try:
        return [item(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated {item.__name__}s, got {text!r}") from None


def from_flags(cls: type, args: argparse.Namespace):
    """``cls`` built from the flags ``add_flags`` declared: the fields given on the command line, defaults for
    the rest; a malformed list or ``KEY=VALUE`` fails with one line naming the flag."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        raw = getattr(args, f.name, None)
        if raw is None:
            continue
        kind, item = _kind(hints[f.name])
        if kind == "list" and not f.metadata.get("repeat", False):
            raw = _comma_list(raw, item, flag_name(f))
        elif kind == "dict":
            raw = dict(parse_override(pair, flag_name(f)) for pair in raw)
        values[f.name] = raw
    return cls(**values)
