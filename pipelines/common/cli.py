"""Map frozen config dataclasses to argparse flags and back; CLI error handling.

YAML key ``rm.learning_rate`` = field ``learning_rate`` = flag ``--learning-rate``
(STYLE.md section 3). Field comments become help text through ``metadata["help"]``.

A stage's ``main`` is wrapped by :func:`handle_user_errors`: a :class:`UserError`
(bad input file, row, flag or config value) ends the run with one line on
stderr and exit status :data:`USER_ERROR_EXIT`, its traceback going to the log
only; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
import types
import typing
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from pipelines.common.logs import FILES_ONLY, LOGS_ONLY, ROUTE
from pipelines.common.sandbox._types import SandboxUnavailable

T = TypeVar("T")
P = ParamSpec("P")

logger = logging.getLogger(__name__)

# Exit status of a user error; argparse exits with 2 on a bad flag as well.
USER_ERROR_EXIT = 2


class UserError(Exception):
    """A problem in what the user gave: a file, a row, a flag, a config value.

    The message must name the file (and row and field where there is one);
    :func:`handle_user_errors` shows it as one line.
    """


# What handle_user_errors shows as one line: bad input, and a machine that
# cannot isolate untrusted code (the sandbox package stays free of this module).
USER_ERRORS = (UserError, SandboxUnavailable)


def one_line(text: str) -> str:
    """``text`` with line breaks escaped, so that a message stays one line."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def handle_user_errors(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap a CLI ``main``: a :class:`UserError` becomes one line and exit 2.

    The traceback of a user error is logged for log files only (see
    :mod:`pipelines.common.logs`); stderr, when it is a screen, ends with
    ``error: <message>``. Any other exception is logged to log files and
    re-raised, so Python prints its traceback as for any bug.

    Args:
        main: the function to wrap; it returns the exit status.

    Returns:
        The wrapped function.
    """

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as err:
            if logging.getLogger().handlers:  # else nothing is set up to route it
                logger.error("%s", err, exc_info=True, extra={ROUTE: LOGS_ONLY})
            sys.stderr.write(f"error: {one_line(str(err))}\n")
            sys.stderr.flush()
            return USER_ERROR_EXIT
        except Exception:
            if logging.getLogger().handlers:
                logger.critical(
                    "unexpected error (a bug, not bad input)",
                    exc_info=True,
                    extra={ROUTE: FILES_ONLY},
                )
            raise

    return wrapper


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp: object) -> object:
    """Strip ``X | None`` to ``X``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


_JSON_KINDS: dict[type, tuple[type, str]] = {
    dict: (dict, "a JSON object"),
    list: (list, "a JSON array"),
    tuple: (list, "a JSON array"),
}


def _json_parser(tp: object, optional: bool) -> Callable[[str], object]:
    """A flag parser for JSON text of ``tp``'s kind (object/array), or null."""
    origin = typing.get_origin(tp) or tp
    kind = _JSON_KINDS.get(origin) if isinstance(origin, type) else None

    def parse(text: str) -> object:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(
                f"not valid JSON ({err.msg}, column {err.colno}): {text!r}"
            ) from err
        if value is None and optional:
            return None
        if kind is not None and not isinstance(value, kind[0]):
            got = type(value).__name__ if value is not None else "null"
            raise argparse.ArgumentTypeError(f"expected {kind[1]}, got {got}: {text!r}")
        return value

    parse.__name__ = "JSON"  # argparse names the type in its messages
    return parse


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--kebab-case`` flag per field of dataclass ``cls``.

    Scalars parse as their type; booleans take true/false; lists, tuples and
    dicts take JSON (``--sizes '{"train": 10}'``).

    Args:
        parser: the parser to extend.
        cls: a dataclass type whose fields all have defaults.
    """
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for field in dataclasses.fields(cls):
        tp = _base_type(hints[field.name])
        optional = tp is not hints[field.name]
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:  # pragma: no cover - configs must be fully defaulted
            raise TypeError(f"{cls.__name__}.{field.name} has no default")
        helptext = field.metadata.get("help", "")
        helptext = f"{helptext} (default: {default!r})".strip()
        if tp is bool:
            parse = _parse_bool
        elif tp in (int, float, str):
            parse = tp
        else:
            parse = _json_parser(tp, optional)
        group.add_argument(
            _flag(field.name),
            dest=field.name,
            type=parse,
            default=default,
            choices=field.metadata.get("choices"),
            help=helptext,
        )


def dataclass_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` from the parsed flags added by :func:`add_dataclass_args`."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name)
        tp = _base_type(hints[field.name])
        if typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    return cls(**values)


def field_help(
    text: str, *, choices: typing.Sequence[str] | None = None, **kwargs: object
) -> object:
    """A dataclass field whose help text (and allowed values) the CLI shows.

    Args:
        text: the help text.
        choices: the values the flag accepts (argparse refuses any other).
        **kwargs: passed to :func:`dataclasses.field` (``default``...).

    Returns:
        The field.
    """
    meta: dict[str, object] = {"help": text}
    if choices is not None:
        meta["choices"] = tuple(choices)
    return dataclasses.field(metadata=meta, **kwargs)
