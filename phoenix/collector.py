"""When Python's cyclic garbage collector runs: during an engine run, and in the ``phoenix`` command.

Two costs, both measured by bench/plan_bench.py:

- Pulumi's runtime allocates several container objects per Output and per registration (futures,
  tasks, protobuf structs). At Python's default threshold (700), collections took half of the
  mock engine's CPU time for 1,000 resources (bench/bare_engine.py: 5.3 s, against 2.6 s at
  10,000), and more as the heap grows. Peak memory is the same.
- The ``phoenix`` command is a process that ends with its command. Its start-up (Pulumi, pydantic
  and the model's validators, the stack model itself) makes about 175,000 objects that
  live until it exits. Collections walking them were about 0.1 s of a dev plan (20 ms in the bare
  engine). The executable (``phoenix/__main__.py``) starts with the collector off; when the
  command's work starts, what start-up made is frozen out of every later collection
  (``gc.freeze``), and so is the run's heap when the run is over.

A library caller (the tests, an Automation API host) keeps its own collector: only a process
whose collector ``start_up`` turned off is frozen.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: The collector's first threshold while a program runs (Python's default is 700).
GC_FIRST_THRESHOLD = 10_000


def start_up() -> None:
    """First thing in the ``phoenix`` executable: no collection until ``work_starts``."""
    gc.disable()


def work_starts() -> bool:
    """Start-up is over: what it made lives until exit, so no collection walks it again; from here
    the collector runs at the engine's threshold. True if so; nothing changes (False) where
    ``start_up`` was not called."""
    if gc.isenabled():
        return False
    gc.freeze()
    gc.set_threshold(GC_FIRST_THRESHOLD, *gc.get_threshold()[1:])
    gc.enable()
    return True


@contextmanager
def batch_gc(first: int = GC_FIRST_THRESHOLD) -> Iterator[None]:
    """Collect garbage less often for the duration of a run, then restore the settings. In the
    ``phoenix`` executable the run is its work: what the run made is frozen too when it ends
    (the command exits soon after, and the collections at exit no longer walk it)."""
    ends_process = work_starts()
    before = gc.get_threshold()
    gc.set_threshold(first, *before[1:])
    try:
        yield
    finally:
        if ends_process:
            gc.freeze()
        gc.set_threshold(*before)
