"""Typed options: one place for an option's default, type and help text, and the checks configs share.

Config dataclasses declare ``field = option(default, "help text")``; the command line derives its flags from the
type hints and this help (see ``cli/options.py``), YAML keys are the field names, and ``check_*`` turn bad
values into one-line :class:`AdaptFormerError` messages naming the option.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import AdaptFormerError


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    flag: str | None = None,
    repeat: bool = False,
    group: str | None = None,
):
    """A dataclass field carrying its help text (``factory`` for mutable defaults). For the command line: ``flag``
    names it where its field name would not (``--header-timeout`` for ``header_timeout_s``), ``repeat`` makes a
    list option given once per item (``--allowed-host a --allowed-host b``), ``group`` heads it in ``--help``."""
    metadata = {"help": help, "flag": flag, "repeat": repeat, "group": group}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def help_of(field: dataclasses.Field) -> str:
    return field.metadata.get("help", "")


def is_int(value: Any, minimum: int | None = None) -> bool:
    """An integer (JSON's and YAML's ``true`` is not one) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def check_int(name: str, value: Any, minimum: int | None = None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not is_int(value, minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise AdaptFormerError(f"{name}: expected an integer{bound}, got {value!r}")


def check_number(
    name: str, value: Any, minimum: float | None = None, maximum: float | None = None, allow_none: bool = False
) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        low = "-inf" if minimum is None else minimum
        high = "inf" if maximum is None else maximum
        raise AdaptFormerError(f"{name}: expected a number in [{low}, {high}], got {value!r}")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise AdaptFormerError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise AdaptFormerError(f"{name}: expected true or false, got {value!r}")
