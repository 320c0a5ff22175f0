"""fab's process ends as soon as its task is done: no last garbage collections over every object of the run.

After a deploy's last line the interpreter took another 40-90 ms to exit (measured from the last output to the
process's end: no system call in between, all of it the garbage collector walking the run's objects while the
modules are torn down; `fab --list` 2 ms). `gc.freeze()` at exit moves every live object out of the
collector's reach, so those collections find nothing to walk: 5-15 ms. Nothing else changes: the atexit
handlers still run, stdout and stderr are still flushed, objects still freed by reference counting are
freed; only cyclic garbage left at the very end is not collected (the operating system takes the memory).
Every file fabdeploy writes locally is closed by its `with` block, and the audit line is written on the host
before the task returns.
"""
from __future__ import annotations

import atexit
import gc

_installed = False


def install() -> None:
    """Freeze the garbage collector at exit (once per process)."""
    global _installed
    if not _installed:
        atexit.register(gc.freeze)
        _installed = True
