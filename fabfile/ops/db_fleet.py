"""`fab db restore` and `fab rollback --restore-db` on a fleet whose app hosts share one database
(database/fleet.shared: a db host or host = "url"): the database is restored once, and no app host serves
the old code on the restored database (or the new code on the old one) in between.

    1  every app host, in parallel: lock (kept), stop the app                  (db restore: the dump found first)
    2  the first app host (it holds the fleet's dumps, database/fleet.py):
         db restore   load the dump
         rollback     compare, load the matching dump, switch, restart, finish (steps/rollback.py)
    3  db restore: every app host start, health check, finish; rollback: every other app host switches to
       the release the first one rolled back to, restarts, finishes (the database matches it: no restore)

A host that cannot be stopped: nothing is restored, the hosts already stopped are started again. A restore
that changed nothing (database/restore.UNCHANGED_SAID): the first host was started again by it, the others
are started again, the run fails saying so. A restore that may have changed part of the database (MySQL):
every lock released, the app left stopped on every host, the failure names the command to retry.
"""
from __future__ import annotations

from dataclasses import dataclass

from fabdeploy import pipeline
from fabdeploy.config import Config
from fabdeploy.database import restore as _restore
from fabdeploy.errors import FabdeployError
from fabdeploy.hosts.connect import host_label, local_user, open_connection
from fabdeploy.hosts.fleet import on_each_host
from fabdeploy.hosts.target import Target
from fabdeploy.ops.control import timeout as control_timeout
from fabdeploy.ops.host_run import run_locked
from fabdeploy.output import Printer
from fabdeploy.remote.markers import note
from fabdeploy.remote.runner import run_script
from fabdeploy.remote.script import Phase, Script
from fabdeploy.remote.shell import q
from fabdeploy.steps import control, lock
from fabdeploy.steps.lock import LockOwner


@dataclass
class Step:
    """One host's result of a coordinated run: ok, what it said (db restore) or the release (rollback)."""
    host: str
    ok: bool
    said: str = ""
    error: str = ""


def _secrets(cfg: Config) -> tuple:
    return tuple(cfg.secret_values())


def stop_script(cfg: Config, owner: LockOwner, wait: int, first: list[Phase]) -> Script:
    """Stage 1: the lock (kept for the later stages), `first` (finding the dump), the app stopped."""
    return Script([control.lock_phase(cfg, owner, wait), *first, control.stop(cfg)], _secrets(cfg),
                  on_failure=control.on_failure(cfg, owner))


def start_script(cfg: Config, owner: LockOwner, target: Target) -> Script:
    """The app started again, health checked, the lock released (stage 3 of db restore; after a failure)."""
    boot = [b] if (b := control.boot_phase(cfg)) else []
    phases = [lock.kept_alive(control.start(cfg), cfg, owner), *boot,
              control.health(cfg, target.address, target.server), control.finish(cfg, owner)]
    return Script(phases, _secrets(cfg), on_failure=control.on_failure(cfg, owner))


def release_script(cfg: Config, owner: LockOwner, error: str) -> Script:
    """The lock released with a failed audit line, the app left as it is (stopped)."""
    return Script([lock.failed_finish(cfg, owner, {"result": "failed", "error": error[:200]})], _secrets(cfg))


def coordinated(conns: list, cfg: Config, printer: Printer, action: str, wait: int, parallel: int,
                first_phases: list[Phase], once, rest, rest_on_first: bool) -> list[Step]:
    """Stages 1-3 (module docstring). once(conn, owner) -> str runs stage 2 on conns[0] (raising
    FabdeployError on failure); rest(conn, owner, said) -> str runs stage 3 on the other hosts (and on the
    first too when rest_on_first: db restore)."""
    owners = {id(c): LockOwner.new(action, local_user()) for c in conns}
    first = conns[0]

    def run(conn, script: Script, seconds: float) -> None:
        host = host_label(conn)
        run_locked(conn, cfg, script, owners[id(conn)], host, seconds, printer)

    def stop(conn, cancel):
        run(conn, stop_script(cfg, owners[id(conn)], wait, first_phases if conn is first else []),
            control_timeout(cfg, "stop", wait))
        return Step(host_label(conn), True, "stopped")

    def failed(conn, exc):
        return Step(host_label(conn), False, error=str(exc))

    def start(conn, cancel):
        run(conn, start_script(cfg, owners[id(conn)], Target.of(conn, cfg)), control_timeout(cfg, "start", 0))
        return Step(host_label(conn), True, "started again")

    def release(why: str):
        def one(conn, cancel):
            run_script(conn, release_script(cfg, owners[id(conn)], why), host=host_label(conn), timeout=60)
            return Step(host_label(conn), False, error=why)
        return one

    stopped = on_each_host(conns, stop, parallel, failed=failed)
    if not all(s.ok for s in stopped):
        bad = ", ".join(s.host for s in stopped if not s.ok)
        up = [c for c, s in zip(conns, stopped) if s.ok]
        again = {s.host: s for s in on_each_host(up, start, parallel, failed=failed)}
        return [s if not s.ok else Step(s.host, False, error=f"nothing restored ({bad} failed); "
                                        + ("started again" if again[s.host].ok else again[s.host].error))
                for s in stopped]
    others = conns[1:]
    try:
        open_connection(first)
        said = once(first, owners[id(first)])
    except FabdeployError as exc:
        error = str(exc)
        if _restore.UNCHANGED_SAID in error:  # the first host was started again by the restore phase
            rest_of = [Step(s.host, s.ok, f"started again (the restore on {host_label(first)} changed nothing)",
                            s.error) for s in on_each_host(others, start, parallel, failed=failed)]
        else:  # partly restored: every host stays stopped, its lock released
            why = f"left stopped: the restore on {host_label(first)} failed"
            rest_of = on_each_host(others, release(why), parallel, failed=failed)
        return [Step(host_label(first), False, error=error), *rest_of]
    finally:
        first.close()
    done = on_each_host(conns if rest_on_first else others,
                        lambda conn, cancel: Step(host_label(conn), True, rest(conn, owners[id(conn)], said)),
                        parallel, failed=failed)
    return done if rest_on_first else [Step(host_label(first), True, said), *done]


def restore_all(conns: list, cfg: Config, printer: Printer, dump_id: str, wait: int, parallel: int) -> list[Step]:
    """fab db restore on a shared database: stop every app host, load the dump once, start every host."""
    from fabdeploy.ops import dbtasks
    find = Phase("find", [*_restore.find_lines(cfg, q(dump_id), dump_id), note('$(basename "$file")')])

    def once(conn, owner) -> str:
        script = Script([lock.kept_alive(dbtasks.restore_phase(cfg, dump_id), cfg, owner)], _secrets(cfg))
        res = run_locked(conn, cfg, script, owner, host_label(conn), 3600, printer)
        return "; ".join(n for ph in res.phases.values() for n in ph.notes)

    def start_all(conn, owner, said) -> str:
        run_locked(conn, cfg, start_script(cfg, owner, Target.of(conn, cfg)), owner, host_label(conn),
                   control_timeout(cfg, "start", 0), printer)
        return said if conn is conns[0] else f"stopped for the restore on {host_label(conns[0])}, started again"

    first = conns[0]
    try:  # (no such dump: one line, no host stopped)
        open_connection(first)
        run_script(first, Script([find], _secrets(cfg)), host=host_label(first), timeout=60)
    except FabdeployError as exc:
        return [Step(host_label(first), False, error=str(exc))]
    finally:
        first.close()
    return coordinated(conns, cfg, printer, "db-restore", wait, parallel, [find], once, start_all, True)


def rollback_all(conns: list, cfg: Config, printer: Printer, to: str | None, strict: bool, wait: int,
                 parallel: int) -> list[Step]:
    """fab rollback --restore-db on a shared database: stop every app host, roll the first back (restoring
    the matching dump), then the others to the same release."""
    from fabdeploy import appserver

    def script(conn, owner, target_release, restore_db) -> Script:
        state = pipeline.RunState(cfg, Target.of(conn, cfg), owner, "", wait=wait, to=target_release,
                                  strict=strict, restore_db=restore_db)
        s = pipeline.script("rollback", "rollback", state, only=("rollback", "restart", "health", "finish"))
        s.phases[0] = lock.kept_alive(s.phases[0], cfg, owner)
        return s

    seconds = appserver.of(cfg).reload_timeout(cfg) * 2 + 120 + 3600

    def once(conn, owner) -> str:
        res = run_locked(conn, cfg, script(conn, owner, to, True), owner, host_label(conn), seconds, printer)
        return res.facts.get("rolled_back_to", "")

    def rest(conn, owner, release) -> str:
        res = run_locked(conn, cfg, script(conn, owner, release, False), owner, host_label(conn), seconds,
                         printer)
        return res.facts.get("rolled_back_to", "")

    return coordinated(conns, cfg, printer, "rollback", wait, parallel, [], once, rest, False)
