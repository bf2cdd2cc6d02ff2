"""Python child processes (``python -m pipeline.<module>``) exchanging pickles over stdin/stdout.

The feed parser (a time bound on feedparser, :mod:`pipeline.parse`) and the render pool
(:mod:`pipeline.speed`) run in such children. multiprocessing would make every child import
the parent's ``__main__`` (the whole CLI); a child imports only its own module. Each message is
an 8-byte big-endian length and a pickle (whose persistent ids may stand for objects sent
before).
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn


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


def frame(value: object, persistent_id: Callable[[Any], Any] | None = None) -> memoryview:
    """``value`` framed; ``persistent_id`` may name objects the other side already has.

    (A view of the pickler's buffer, not a copy: a batch of rendered replies is megabytes.)
    """
    buffer = io.BytesIO(bytes(8))
    buffer.seek(8)
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    if persistent_id is not None:
        pickler.persistent_id = persistent_id  # type: ignore[method-assign]
    pickler.dump(value)
    view = buffer.getbuffer()
    view[:8] = (len(view) - 8).to_bytes(8, "big")
    return view


def receive(pipe: Any, persistent_load: Callable[[Any], Any] | None = None) -> Any:
    """The next framed value from ``pipe`` (blocking); EOFError at its end."""
    size = int.from_bytes(_read_exactly(pipe, 8), "big")
    data = _read_exactly(pipe, size)
    if persistent_load is None:
        return pickle.loads(data)
    unpickler = pickle.Unpickler(io.BytesIO(data))
    unpickler.persistent_load = persistent_load  # type: ignore[method-assign]
    return unpickler.load()


def _read_exactly(pipe: Any, size: int) -> bytearray:
    data = bytearray(size)  # read into place: no chunks to join
    view, done = memoryview(data), 0
    while done < size:
        count = pipe.readinto(view[done:])
        if not count:
            raise EOFError
        done += count
    return data


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write ``data`` to the pipe ``fd``, however many writes that takes.

    Not through a BufferedWriter (``sys.stdout.buffer``): when a stop signal (Ctrl-Z, a
    profiler) cuts a large pipe write short, CPython 3.11's BufferedWriter loses the rest of
    the data without an error (measured: 20% of 200 MB written 1 MB at a time), which tore
    replies apart.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def serve(handle: Callable[[Any], object], persistent_load: Callable[[Any], Any] | None = None) -> NoReturn:
    """The child's loop: answer each request with ``handle(request)``, until stdin closes.

    Interrupts are for the parent (a terminal's Ctrl-C and systemd's stop reach the whole
    process group): it finishes or abandons the work and closes our stdin, which ends us.
    The end is ``os._exit``: a child has nothing to clean up, and tearing down a render
    child's large heap the usual way keeps its parent waiting.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests, replies = sys.stdin.buffer, sys.stdout.fileno()
    while True:
        try:
            request = receive(requests, persistent_load)
        except EOFError:
            break
        try:
            write_all(replies, frame(handle(request)))
        except BrokenPipeError:  # the parent is gone
            break
    sys.stderr.flush()
    os._exit(0)
