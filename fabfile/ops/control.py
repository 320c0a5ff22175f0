"""`fab stop|start|restart|reload`: the app server of every app host, in parallel, one remote invocation per
host (phases in steps/control.py), under the deploy lock, with an audit line (`action`: the task's name).

A host that fails (or cannot be reached) does not stop the others; the task exits 1 naming each.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from fabdeploy import appserver
from fabdeploy.config import Config
from fabdeploy.hosts.connect import host_label, local_user
from fabdeploy.hosts.fleet import on_each_host
from fabdeploy.hosts.target import Target
from fabdeploy.ops.host_run import lock_wait, run_locked
from fabdeploy.output import Printer
from fabdeploy.pipeline import listing
from fabdeploy.remote.script import Script
from fabdeploy.steps import control
from fabdeploy.steps.lock import LockOwner


@dataclass
class ControlOutcome:
    host: str
    action: str
    ok: bool
    said: str = ""  # what its phases said ("uwsgi already stopped", "uwsgi started (...)"; GET / -> 200...)
    error: str = ""
    duration: float = 0.0


def control_script(cfg: Config, action: str, owner: LockOwner, wait: int, target: Target,
                   with_nginx: bool = False) -> Script:
    """The one remote invocation of `fab <action>` on an app host."""
    phases = control.phases(cfg, action, owner, wait, target.address, target.server, with_nginx)
    return Script(phases, tuple(cfg.secret_values()), on_failure=control.on_failure(cfg, owner))


def timeout(cfg: Config, action: str, wait: int) -> int:
    """Seconds the invocation may take: the lock wait, each app-server wait (a stop's includes its SIGKILL),
    the health check, and slack."""
    app = appserver.of(cfg).reload_timeout(cfg)
    return wait + app * (2 if action == "restart" else 1) + 10 + cfg.health.timeout + 120


def control_all(conns: list, cfg: Config, printer: Printer, action: str, with_nginx: bool = False,
                wait: int | None = None, parallel: int | None = None) -> list[ControlOutcome]:
    wait, started = lock_wait(cfg, printer, conns, wait), time.monotonic()

    def one(conn, cancel) -> ControlOutcome:
        host = host_label(conn)
        start = time.monotonic()
        owner = LockOwner.new(action, local_user())
        script = control_script(cfg, action, owner, wait, Target.of(conn, cfg), with_nginx)
        printer.debug(host, listing(action, script))
        # (the script's own on_failure writes the audit line and unlocks; run_locked covers a lost channel)
        res = run_locked(conn, cfg, script, owner, host, timeout(cfg, action, wait), printer)
        said = "; ".join(n for ph in res.phases.values() if ph.name not in ("lock", "finish") for n in ph.notes)
        return ControlOutcome(host, action, True, said, "", time.monotonic() - start)

    return on_each_host(conns, one, parallel or cfg.fleet.parallel,
                        failed=lambda conn, exc: ControlOutcome(host_label(conn), action, False, "", str(exc),
                                                                time.monotonic() - started))


def summary_table(outcomes: list[ControlOutcome]) -> str:
    """HOST, ACTION, DURATION, RESULT, DETAIL: one row per host."""
    rows = [("HOST", "ACTION", "DURATION", "RESULT", "DETAIL")]
    for o in outcomes:
        detail = o.said if o.ok else (o.error.splitlines()[0][:90] if o.error else "")
        rows.append((o.host, o.action, f"{o.duration:.1f}s", "ok" if o.ok else "FAILED", detail))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def report(outcomes: list[ControlOutcome], printer: Printer) -> list[str]:
    """A line per host that succeeded, the table when there are several hosts; the errors of the others."""
    for o in outcomes:
        if o.ok:
            printer.info(f"{o.host}: {o.action} ok in {o.duration:.1f}s")
    if len(outcomes) > 1:
        printer.info(summary_table(outcomes))
    return [o.error for o in outcomes if not o.ok]
