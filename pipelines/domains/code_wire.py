"""The code verifier's wire format: plain values and framed messages over pipes.

Shared by the two processes of :mod:`pipelines.domains.code_harness`, and sent
with it as part of the sandboxed program (its source comes first), so it uses the
standard library only.

A value crosses the pipe as a tagged JSON tree (:func:`encode`, :func:`decode`)
that only exact plain built-in types produce: None, bool, int, float, complex,
str, bytes, and lists, tuples, dicts, sets and frozensets of them. The receiving
side rebuilds the value from those types alone, so an object with its own
``__eq__``, ``__bool__`` or ``__del__`` can never cross. Each message is a 4-byte
big-endian length and that many bytes of JSON (:func:`send`, :func:`receive`).
"""

from __future__ import annotations

import json
import os
import struct

MAX_FRAME_BYTES = 32 << 20  # largest message either process accepts
MAX_DEPTH = 200  # deepest nesting of a value passed either way
_HEADER = struct.Struct(">I")
_CONTAINER_TAGS = {list: "l", tuple: "t", set: "S", frozenset: "F"}
_CONTAINERS = {"l": list, "t": tuple, "S": set, "F": frozenset}


class ProtocolError(Exception):
    """A message is not well-formed (cut short, too large, not JSON, bad tags)."""


def encode(value: object, depth: int = 0) -> list:
    """Turn a plain built-in value into a JSON-able tagged tree.

    Args:
        value: the value; containers are walked recursively.
        depth: nesting level of ``value`` (callers pass nothing).

    Returns:
        ``[tag, payload...]`` lists that :func:`decode` turns back into an equal
        value of the same types.

    Raises:
        TypeError: a value is not of an exact plain built-in type, or is nested
            deeper than ``MAX_DEPTH``.
    """
    if depth > MAX_DEPTH:
        raise TypeError(f"value nested deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if value is None:
        return ["n"]
    if kind is bool:
        return ["b", value]
    if kind is int:
        return ["i", value]
    if kind is float:
        return ["f", float.__repr__(value)]
    if kind is complex:
        return ["c", float.__repr__(value.real), float.__repr__(value.imag)]
    if kind is str:
        return ["s", value]
    if kind is bytes:
        return ["y", bytes.hex(value)]
    tag = _CONTAINER_TAGS.get(kind)
    if tag is not None:
        return [tag, [encode(item, depth + 1) for item in value]]
    if kind is dict:
        pairs = dict.items(value)
        return ["d", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in pairs]]
    raise TypeError(
        f"a {kind.__module__}.{kind.__qualname__} object is not a plain built-in "
        "value (None, bool, int, float, complex, str, bytes, list, tuple, dict, "
        "set, frozenset)"
    )


def decode(node: object, depth: int = 0) -> object:
    """Rebuild a value from :func:`encode`'s tree, trusting nothing about it.

    Args:
        node: the parsed JSON of a tagged tree.
        depth: nesting level of ``node`` (callers pass nothing).

    Returns:
        The value, built only from plain built-in types.

    Raises:
        ProtocolError: ``node`` is not a well-formed tree.
    """
    if depth > MAX_DEPTH + 1:
        raise ProtocolError("value nested too deeply")
    if type(node) is not list or not node or type(node[0]) is not str:
        raise ProtocolError("malformed value")
    tag, args = node[0], node[1:]
    try:
        if tag == "n" and not args:
            return None
        if len(args) == 1:
            (arg,) = args
            if tag == "b" and type(arg) is bool:
                return arg
            if tag == "i" and type(arg) is int:
                return arg
            if tag == "f" and type(arg) is str:
                return float(arg)
            if tag == "s" and type(arg) is str:
                return arg
            if tag == "y" and type(arg) is str:
                return bytes.fromhex(arg)
            if tag in _CONTAINERS and type(arg) is list:
                return _CONTAINERS[tag](decode(item, depth + 1) for item in arg)
            if tag == "d" and type(arg) is list:
                if not all(type(pair) is list and len(pair) == 2 for pair in arg):
                    raise ProtocolError("malformed dict")
                return {
                    decode(key, depth + 1): decode(val, depth + 1) for key, val in arg
                }
        if tag == "c" and len(args) == 2 and all(type(a) is str for a in args):
            return complex(float(args[0]), float(args[1]))
    except ProtocolError:
        raise
    except (ValueError, TypeError, RecursionError, MemoryError) as exc:
        raise ProtocolError(f"malformed value ({type(exc).__name__})") from None
    raise ProtocolError(f"malformed value (tag {tag[:20]!r})")


# --------------------------------------------------------------------- framing


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (a pipe may take it in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, size: int) -> bytes | None:
    """``size`` bytes from ``fd``; None on end of file before the first byte."""
    chunks = []
    left = size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            if left == size:
                return None
            raise ProtocolError("message cut short")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def send(fd: int, message: object) -> None:
    """Write one length-prefixed JSON message to ``fd``.

    Args:
        fd: a pipe's write end.
        message: a JSON-able object.
    """
    data = json.dumps(message, ensure_ascii=True, separators=(",", ":")).encode()
    write_all(fd, _HEADER.pack(len(data)) + data)


def receive(fd: int) -> object | None:
    """Read one message written by :func:`send`.

    Args:
        fd: a pipe's read end.

    Returns:
        The parsed message; None when the writer closed the pipe between messages.

    Raises:
        ProtocolError: the message is cut short, too large or not JSON.
    """
    head = _read_exact(fd, _HEADER.size)
    if head is None:
        return None
    (size,) = _HEADER.unpack(head)
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"message of {size} bytes (limit {MAX_FRAME_BYTES})")
    body = _read_exact(fd, size) if size else b""
    if body is None:
        raise ProtocolError("message cut short")
    try:
        return json.loads(body)
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ProtocolError(f"message is not JSON ({type(exc).__name__})") from None
