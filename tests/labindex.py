"""Lab host indexes (address 10.213.N.2) for this test process: one disjoint range per pytest-xdist worker.

FABDEPLOY_LAB_INDEX (default 20) is the first index of the run and FABDEPLOY_LAB_SPAN (default 60) the size
of each worker's range: worker gwK (PYTEST_XDIST_WORKER) takes base + K*span .. base + (K+1)*span - 1, and a
plain `pytest` (no -n) is worker 0. With the defaults `-n 2` uses 20..79 and 80..139: clear of the manual
benchmark's 150 and up (bench/run.py) and of scripts/demo's host (5).

How many a worker needs at once: make_host's hosts live until the end of their module, and the biggest
module holds 8 (tests/test_database_e2e.py: two engines x three hosts, sqlite, systemd). A whole run takes
about 100 indexes in all (in one process, ci7's 73rd went to test_plan_e2e), so two workers use about 50
each and a worker's counter wraps only on a longer run. A wrapped index is safe: an index whose veth
(fdl<N>a) still exists is skipped, whichever run owns it; only `span` live hosts at once fill a range, and
that is refused with one line rather than stealing an address (hostlab.create_host refuses too).
"""
from __future__ import annotations

import os
from pathlib import Path

LOWEST, HIGHEST = 1, 250  # hostlab's index bounds
DEFAULT_BASE, DEFAULT_SPAN = 20, 60


class LabIndexError(Exception):
    pass


def worker_number(worker: str | None = None) -> int:
    """0 for a plain pytest process or gw0, K for pytest-xdist's gwK."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "") if worker is None else worker
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0


def worker_range(env: dict | None = None, worker: str | None = None) -> range:
    """The indexes this process may use (FABDEPLOY_LAB_INDEX, FABDEPLOY_LAB_SPAN, the xdist worker)."""
    env = os.environ if env is None else env
    try:
        base = int(env.get("FABDEPLOY_LAB_INDEX", DEFAULT_BASE))
        span = int(env.get("FABDEPLOY_LAB_SPAN", DEFAULT_SPAN))
    except ValueError:
        raise LabIndexError("FABDEPLOY_LAB_INDEX and FABDEPLOY_LAB_SPAN must be whole numbers") from None
    k = worker_number(worker)
    first = base + k * span
    last = first + span - 1
    if span < 1 or first < LOWEST or last > HIGHEST:
        raise LabIndexError(f"lab indexes {first}..{last} (FABDEPLOY_LAB_INDEX={base}, FABDEPLOY_LAB_SPAN={span}, "
                            f"worker {k}) are outside {LOWEST}..{HIGHEST}: lower the base, the span or -n")
    return range(first, last + 1)


def in_use(index: int) -> bool:
    """A lab host (of any run) has this index: its root-side veth exists (tests/hostlab.py names it)."""
    return Path("/sys/class/net", f"fdl{index}a").exists()


class Allocator:
    """Hands out the indexes of one range in turn, wrapping, skipping those in use."""

    def __init__(self, indexes: range | None = None):
        self._indexes = indexes
        self._next = 0

    @property
    def indexes(self) -> range:
        if self._indexes is None:
            self._indexes = worker_range()
        return self._indexes

    def next(self, busy=in_use) -> int:
        indexes = self.indexes
        for _ in range(len(indexes)):
            index = indexes[self._next % len(indexes)]
            self._next += 1
            if not busy(index):
                return index
        raise LabIndexError(f"every lab index {indexes.start}..{indexes.stop - 1} is in use "
                            "(raise FABDEPLOY_LAB_SPAN, or remove stale hosts: python tests/hostlab.py ls)")


_allocator = Allocator()


def next_index() -> int:
    """A free index of this process's range (the one counter every test module shares)."""
    return _allocator.next()
