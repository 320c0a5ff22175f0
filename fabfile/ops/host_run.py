"""What an app host's and a load balancer's part of a deploy share: the host worked out once (Target), the
lock owner, the pipeline's state for this host, running one of the pipeline's invocations (listed first
with --verbose), and the guard that cleans the host up when a step fails or is interrupted."""
from __future__ import annotations

import contextlib
import threading
import time

from fabdeploy import model, pipeline
from fabdeploy.config import Config
from fabdeploy.errors import FabdeployError
from fabdeploy.hosts.connect import host_label, local_user
from fabdeploy.hosts.fleet import deferred_interrupt
from fabdeploy.hosts.target import Target
from fabdeploy.output import Printer
from fabdeploy.remote import shell
from fabdeploy.remote.runner import run_script
from fabdeploy.remote.script import Phase, Script
from fabdeploy.steps import lock
from fabdeploy.steps.lock import LockOwner


def lock_wait(cfg: Config, printer: Printer, conns: list, wait: int | None) -> int:
    """The lock wait of a task over `conns` (its option, else lock.wait; at most lock.ttl, said once), with the
    printer's host column set for them."""
    printer.width = max(len(host_label(c)) for c in conns)
    return lock.capped_wait(cfg, cfg.lock.wait if wait is None else wait, printer.warn)


def run_locked(conn, cfg: Config, script, owner: LockOwner, host: str, timeout: float, printer: Printer):
    """Run a one-invocation script that takes and releases the deploy lock itself (rollback, stop, start...),
    Ctrl-C held until it ends. When it fails without cleaning up after itself (a lost channel, a timeout):
    stop what is left of it and, while the lock is still ours, write the failed audit line and unlock."""
    remote: dict = {}
    try:
        with deferred_interrupt():
            # the lock wait counts in the timeout: we never give up on a loop that still waits
            return run_script(conn, script, host=host, timeout=timeout, on_phase=lambda ph: printer.phase(host, ph),
                              remote=remote)
    except FabdeployError as exc:
        failed = lock.failed_finish(cfg, owner, {"result": "failed", "error": str(exc).splitlines()[0]})
        stop = Phase("stop", shell.stop_group(remote.get("pgid")))  # a timed-out script, if still there
        try:
            run_script(conn, Script([stop, failed]), host=host, timeout=60)
        except FabdeployError:
            pass
        raise


class HostRun:
    kind = ""  # the pipeline: "app" or "lb"

    def __init__(self, conn, cfg: Config, rel_id: str, printer: Printer, cancel: threading.Event, wait: int = 0,
                 record: dict | None = None, **state):
        self.conn, self.cfg, self.printer, self.cancel, self.wait = conn, cfg, printer, cancel, wait
        self.target = Target.of(conn, cfg)
        self.host, self.server, self.layout = self.target.label, self.target.server, self.target.layout
        self.owner = LockOwner.new("deploy", local_user())
        # what the pipeline's builders need, filled in as the run goes
        self.state = pipeline.RunState(cfg, self.target, self.owner, rel_id, dict(record or {}), wait, **state)
        self.stage = "connect"
        self.remote: dict = {}  # the process group of the running invocation: its cleanup stops it
        self.detached = ""  # the file prefix of a detached invocation on the host (remote/detach.py)
        self.started = time.monotonic()

    @property
    def facts(self) -> model.Facts | None:
        return self.state.facts

    def run(self, name: str, stdin: bytes | None = None, interruptible: bool = True, built=None, shown=(),
            on_phase=None, spare=None, spare_next=None):
        """Run the pipeline's invocation `name` on this host (an interruptible one stops at Ctrl-C); `built`: a
        script already built for it (the app's setup and prepare in one), listed with --verbose as `shown`
        ((name, script) pairs, and lines); `on_phase` runs before each phase line; `spare`: a channel opened
        for it beforehand (runner.SpareChannel); `spare_next`: called once this run's channel is open."""
        script = built or pipeline.script(self.kind, name, self.state)
        if script.detach:
            self.detached = script.detach
        for item in shown or [(name, script)]:
            self.printer.debug(self.host, item if isinstance(item, str) else pipeline.listing(*item))

        def phase(ph) -> None:
            if on_phase:
                on_phase(ph)
            self.printer.phase(self.host, ph)
        return run_script(self.conn, script, host=self.host, stdin=stdin,
                          timeout=self.cfg.pip.timeout + 600 + self.wait,
                          remote=self.remote if interruptible else None, cancel=self.cancel if interruptible else None,
                          on_phase=phase, spare=spare, opened=spare_next,
                          on_output=(lambda s, ln: self.printer.debug(self.host, ln)) if self.printer.verbose
                          else None)

    @contextlib.contextmanager
    def cleaned_up_on_failure(self):
        """A failure or Ctrl-C inside, once connected: the host is cleaned up (fail_cleanup), then it goes on."""
        try:
            yield
        except (FabdeployError, KeyboardInterrupt) as exc:
            if self.stage != "connect":
                self.fail_cleanup(exc)
            raise

    def fail_cleanup(self, exc: BaseException) -> str:
        raise NotImplementedError
