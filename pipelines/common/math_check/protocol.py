"""JSON-lines messages over raw pipe file descriptors (no buffered file objects).

Raw descriptors keep the processes on both sides free of the locks of Python's
buffered files, which matters in children created by ``fork``.
"""

from __future__ import annotations

import json
import os

_CHUNK = 65536


def send(fd: int, message: dict) -> None:
    """Write ``message`` as one JSON line, looping over partial writes."""
    data = memoryview((json.dumps(message) + "\n").encode())
    while data:
        written = os.write(fd, data)
        data = data[written:]


class LineReader:
    """Splits the bytes read from a descriptor into JSON messages."""

    def __init__(self, fd: int) -> None:
        """Read from ``fd``, which the caller keeps and closes."""
        self.fd = fd
        self._buffer = b""
        self.eof = False

    def read_ready(self) -> list[dict]:
        """Do one ``os.read`` and return the messages it completed.

        Call it when the descriptor is readable (it blocks otherwise). Sets
        :attr:`eof` when the writer has closed its end.
        """
        chunk = os.read(self.fd, _CHUNK)
        if not chunk:
            self.eof = True
            return []
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def next_message(self) -> dict | None:
        """Block until one whole message arrives; None at end of file."""
        pending: list[dict] = []
        while not pending:
            if self.eof:
                return None
            pending = self.read_ready()
        if len(pending) > 1:  # pragma: no cover - one request, one reply
            raise RuntimeError(f"expected one message, got {len(pending)}")
        return pending[0]
