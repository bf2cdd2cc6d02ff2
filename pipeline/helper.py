"""Helper interpreters: ``python -m pipeline.<module>`` exchanging pickles over stdin/stdout.

The feed parser and the render workers run in such helpers. multiprocessing would make every
worker import the parent's ``__main__`` (the whole CLI, over a second each); a helper imports
only its own module. Each message is an 8-byte big-endian length and a pickle.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def start(module: str) -> subprocess.Popen[bytes]:
    """Start ``python -m module`` with unbuffered pipes, able to import this package."""
    package_parent = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-m", module],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
        env={**os.environ, "PYTHONPATH": path},
    )


def frame(value: object) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(8, "big") + data


def receive(pipe: Any) -> Any:
    """The next framed value from ``pipe`` (blocking); EOFError at its end."""
    size = int.from_bytes(_read_exactly(pipe, 8), "big")
    return pickle.loads(_read_exactly(pipe, size))


def _read_exactly(pipe: Any, size: int) -> bytes:
    chunks = []
    while size:
        chunk = pipe.read(min(size, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def serve(handle: Callable[[Any], object]) -> None:
    """The helper's loop: answer each request with ``handle(request)``, until stdin closes.

    Interrupts are for the parent (a terminal's Ctrl-C and systemd's stop reach the whole
    process group): it finishes or abandons the work and closes our stdin, which ends us.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            request = receive(requests)
        except EOFError:
            return
        try:
            replies.write(frame(handle(request)))
            replies.flush()
        except BrokenPipeError:  # the parent is gone
            return
