"""Running one function per host: in parallel threads, with Ctrl-C turned into an orderly cancel."""
from __future__ import annotations

import contextlib
import signal
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, TypeVar

from fabdeploy.errors import FabdeployError
from fabdeploy.hosts.connect import open_connection

T = TypeVar("T")
MAX_PARALLEL = 10


def for_each_host(conns: list, fn: Callable[[object, threading.Event], T], parallel: int = MAX_PARALLEL) -> list[T]:
    """fn(conn, cancel) for every connection; one host runs in this thread, several in a pool of at most
    `parallel` threads.

    On Ctrl-C the cancel event is set and every host gets to clean up (release its lock...) before
    KeyboardInterrupt is raised again here.
    """
    cancel = threading.Event()
    if not conns:
        return []
    if len(conns) == 1:
        return [fn(conns[0], cancel)]
    pool = ThreadPoolExecutor(max_workers=max(1, min(len(conns), parallel)))
    futures = [pool.submit(fn, conn, cancel) for conn in conns]
    try:
        wait(futures)
    except KeyboardInterrupt:
        cancel.set()
        wait(futures, timeout=120)
        pool.shutdown(wait=False)
        raise
    pool.shutdown()
    return [f.result() for f in futures]


def on_each_host(conns: list, fn: Callable[[object, threading.Event], T], parallel: int = MAX_PARALLEL,
                 failed: Callable[[object, FabdeployError], T] | None = None) -> list:
    """fn(conn, cancel) for every connection, in parallel (for_each_host), each connection opened first (a
    host that cannot be reached is one line naming it) and closed after. A FabdeployError on a host becomes
    failed(conn, exc) for that host (default: the error's text); fn's value otherwise."""
    def one(conn, cancel):
        try:
            open_connection(conn)
            return fn(conn, cancel)
        except FabdeployError as exc:
            return failed(conn, exc) if failed else str(exc)
        finally:
            conn.close()
    return for_each_host(conns, one, parallel)


@contextlib.contextmanager
def deferred_interrupt():
    """Hold Ctrl-C until the block is done (a switch + reload must not be cut in half)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def signals_as_interrupt():
    """SIGTERM and SIGHUP (a cancelled CI job, a closed terminal) act like Ctrl-C while the block runs: they go
    to the current SIGINT handler (so deferred_interrupt holds them too). A SIGINT inherited as ignored is
    Ctrl-C again: a command started with `&` by a script (no job control: sh ignores SIGINT for it, and Python
    then installs no handler) would otherwise drop an interrupt and go live. The previous handlers come back
    after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def as_sigint(signum, frame):
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, as_sigint) for sig in (signal.SIGTERM, signal.SIGHUP)}
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
