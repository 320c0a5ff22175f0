"""`fab rollback`: back to the previous good release (or --to ID) in one remote invocation per host.

    lock      take the deploy lock
    rollback  pick the target on the host (newest release older than current, not marked bad, with its
              virtualenv and app-server config still on disk), compare migrations, activate it (its own
              app-server config, `current`, static root: steps/activate.py), mark the abandoned release bad
              The database has migrations the target does not know: the dump taken before the first of
              them is named (database/restore.matching_lines); --restore-db stops the app and loads it
              (app hosts sharing one database: all stopped first, the dump loaded once: ops/db_fleet.py)
    restart   graceful reload, wait until every worker runs the target
    health    the deploy's health check through nginx (steps/control.health); a failure fails the rollback,
              which stays on the target (nothing is switched back)
    finish    audit line, release the lock

The phases are declared in pipeline.ROLLBACK and built in steps/rollback.py; hooks of the switch and
restart phases run around them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from fabdeploy import appserver, pipeline
from fabdeploy.config import Config
from fabdeploy.database import fleet
from fabdeploy.errors import FabdeployError
from fabdeploy.hosts.connect import host_label, local_user
from fabdeploy.hosts.fleet import on_each_host
from fabdeploy.hosts.layout import RELEASE_ID
from fabdeploy.hosts.target import Target
from fabdeploy.ops import db_fleet
from fabdeploy.ops.host_run import lock_wait, run_locked
from fabdeploy.output import Printer
from fabdeploy.remote.script import Script
from fabdeploy.steps.lock import LockOwner


def rollback_script(cfg: Config, owner: LockOwner, to: str | None, strict: bool, wait: int,
                    target: Target | None = None, restore_db: bool = False) -> Script:
    """The rollback invocation (pipeline.ROLLBACK) for a host (hooks see its name)."""
    target = target or Target.named(cfg, "localhost")
    return pipeline.script("rollback", "rollback", pipeline.RunState(cfg, target, owner, "", wait=wait, to=to,
                                                                     strict=strict, restore_db=restore_db))


@dataclass
class RollbackOutcome:
    host: str
    ok: bool
    release: str = ""
    error: str = ""
    duration: float = 0.0


def rollback_all(conns: list, cfg: Config, printer: Printer, to: str | None, strict: bool,
                 wait: int | None = None, parallel: int | None = None,
                 restore_db: bool = False) -> list[RollbackOutcome]:
    if to and not RELEASE_ID.match(to):
        raise FabdeployError(f"--to {to!r} is not a release id (like 20261122T033903Z-cadb91d)")
    wait, started = lock_wait(cfg, printer, conns, wait), time.monotonic()
    if restore_db and len(conns) > 1 and fleet.shared(cfg):  # stop all, restore once, switch all
        steps = db_fleet.rollback_all(conns, cfg, printer, to, strict, wait, parallel or cfg.fleet.parallel)
        return [RollbackOutcome(s.host, s.ok, s.said, s.error, time.monotonic() - started) for s in steps]

    def one(conn, cancel) -> RollbackOutcome:
        host = host_label(conn)
        start = time.monotonic()
        owner = LockOwner.new("rollback", local_user())
        script = rollback_script(cfg, owner, to, strict, wait, Target.of(conn, cfg), restore_db)
        printer.debug(host, pipeline.listing("rollback", script))
        res = run_locked(conn, cfg, script, owner, host, appserver.of(cfg).reload_timeout(cfg) * 2 + 120 + wait
                         + 3600 * restore_db, printer)
        target = res.facts.get("rolled_back_to", "")
        return RollbackOutcome(host, True, target, "", time.monotonic() - start)

    return on_each_host(conns, one, parallel or cfg.fleet.parallel,
                        failed=lambda conn, exc: RollbackOutcome(host_label(conn), False, "", str(exc),
                                                                 time.monotonic() - started))
