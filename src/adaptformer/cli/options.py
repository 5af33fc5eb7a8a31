"""Command-line options derived from typed dataclasses: one flag per field, parsed by its resolved type.

Types are read with ``typing.get_type_hints`` (not annotation strings), so any field of these shapes works:
``int``, ``float``, ``str``, ``bool`` (``--x`` / ``--no-x``), ``Literal[...]`` (choices), ``X | None`` (also
``none``), unions tried member by member (``float | str``: a number, else the text), ``list[int]`` /
``tuple[int, ...]`` (``0,3,5`` or a JSON list) and ``dict`` (a JSON object). Help text comes from the field's
``option(..., help)``. An unset flag stays ``None``, meaning "not given" (the config file or default applies).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal, Union

from ..utils.options import help_of


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def value_parser(tp: Any) -> Callable[[str], Any]:
    """A function text -> value for the type ``tp`` (raises ArgumentTypeError with what was expected)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        parsers = [value_parser(a) for a in sorted(members, key=lambda a: a is str)]  # text last
        optional = len(members) < len(args)

        def parse_union(text: str):
            if optional and text.lower() in ("none", "null"):
                return None
            for parse in parsers:
                try:
                    return parse(text)
                except (argparse.ArgumentTypeError, ValueError):
                    continue
            raise argparse.ArgumentTypeError(f"expected {describe(tp)}, got {text!r}")

        return parse_union
    if origin is Literal:
        return str
    if origin in (list, tuple) or tp in (list, tuple):
        item = args[0] if args else str
        convert = value_parser(item)

        def parse_sequence(text: str):
            try:
                values = json.loads(text) if text.strip().startswith("[") else [p for p in text.split(",") if p.strip()]
            except json.JSONDecodeError:
                raise argparse.ArgumentTypeError(f"expected a list such as 0,3,5, got {text!r}") from None
            return tuple(convert(str(v)) for v in values)

        return parse_sequence
    if tp is dict or origin is dict:
        return _json_object
    if tp in (int, float, str):
        return _scalar(tp)
    raise TypeError(f"no command-line parser for type {tp!r}")


def _scalar(kind):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"drop_path_rate\": 0.1}}', got {text!r}")
    return value


def _metavar(tp: Any) -> str:
    """What the help shows for a value: the type without its ``None`` (typing "none" is always accepted)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return "|".join(_metavar(a) for a in members)
    return describe(tp).upper()


def describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "list"
    return "none" if tp is type(None) else getattr(tp, "__name__", str(tp))


def add_field_option(group, field: dataclasses.Field, tp: Any, default_text: str | None = None) -> None:
    """Add ``--<field>`` to an argparse group for a dataclass field of (resolved) type ``tp``."""
    if default_text is None:
        default = field.default if field.default is not dataclasses.MISSING else None
        default_text = (
            "required"
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            else f"default: {default}"
        )
    text = f"{help_of(field)} ({default_text})".strip()
    name = field.metadata.get("flag") or flag(field.name)
    if tp is bool:
        group.add_argument(name, dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        return
    if field.metadata.get("repeat"):  # a list given item by item
        item = typing.get_args(tp)[0] if typing.get_args(tp) else str
        group.add_argument(name, dest=field.name, action="append", type=value_parser(item), default=None, help=text)
        return
    choices = list(typing.get_args(tp)) if typing.get_origin(tp) is Literal else None
    group.add_argument(
        name,
        dest=field.name,
        type=value_parser(tp),
        choices=choices,
        default=None,
        help=text,
        metavar=None if choices else _metavar(tp),
    )


def add_grouped_options(parser: argparse.ArgumentParser, cls: type) -> list[str]:
    """One option per field of ``cls``, under the ``group`` its ``option()`` names; returns the field names."""
    hints = typing.get_type_hints(cls)
    groups: dict[str | None, Any] = {}
    for f in dataclasses.fields(cls):
        title = f.metadata.get("group")
        if title not in groups:
            groups[title] = parser.add_argument_group(title) if title else parser
        add_field_option(groups[title], f, hints[f.name])
    return [f.name for f in dataclasses.fields(cls)]


def add_dataclass_options(group, cls: type, skip: Iterable[str] = (), only: Iterable[str] | None = None) -> list[str]:
    """One option per field of ``cls`` (less ``skip``); returns the field names added."""
    hints = typing.get_type_hints(cls)
    skip, only = set(skip), set(only) if only is not None else None
    added = []
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        add_field_option(group, f, hints[f.name])
        added.append(f.name)
    return added


def add_method_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option of every registered method, grouped by method; returns their names."""
    from ..methods.registry import method_option_fields, registered_methods

    fields = method_option_fields()
    added: set[str] = set()
    for method in registered_methods().values():
        names = [f.name for f in dataclasses.fields(method.config) if f.name not in added]
        if not names:
            continue
        group = parser.add_argument_group(f"{method.name} options", method.description)
        for name in names:
            field, tp = fields[name]
            add_field_option(group, field, tp)
            added.add(name)
    return sorted(added)


def given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The options among ``names`` that were given on the command line."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
