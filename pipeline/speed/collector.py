"""Keeping Python's cyclic garbage collector off a large send's long-lived records.

A send's settings, entries and digests live until it ends and hold no reference cycles;
without these, each full collection walks all of them again for nothing. Reference counting
still frees whatever is dropped.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def settled() -> Iterator[None]:
    """Keep the collector's full passes off what exists now, until the block ends."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection while the block allocates records that all live on."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
