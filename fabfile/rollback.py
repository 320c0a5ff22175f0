"""`fab rollback`: back to the previous good release (or --to ID) in one remote invocation per host.

    lock      take the deploy lock
    rollback  pick the target on the host (newest release older than current, not marked bad, with its
              virtualenv and uWSGI ini still on disk), compare migrations, switch `current` atomically,
              restore the target's own uWSGI ini, mark the abandoned release bad
    restart   graceful uWSGI reload, wait until every worker runs the target
    finish    audit line, release the lock

Migrations are never unapplied: those the database has but the target does not know are listed (warning),
or refused with --strict before anything changes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from . import lock, phases
from .config import Config
from .connect import host_label, local_user, open_connection
from .errors import FabdeployError
from .fleet import deferred_interrupt, for_each_host
from .layout import RELEASE_GLOB_ERE, RELEASE_ID, SETTINGS_MODULE, Layout
from .lock import LockOwner
from .output import Printer
from .runner import run_script
from .script import MARK, Phase, Script, fail_expanded, q

# Run by the target release's own Python and code: applied migrations the target's code does not have.
UNKNOWN_MIGRATIONS_PY = """
import django
django.setup()
from django.db import connections
from django.db.migrations.loader import MigrationLoader
for alias in connections:
    loader = MigrationLoader(connections[alias], ignore_no_migrations=True)
    for app, name in sorted(set(loader.applied_migrations) - set(loader.disk_migrations)):
        print(app, name)
"""


def select_and_switch(cfg: Config, to: str | None, strict: bool) -> Phase:
    lay = Layout(cfg.paths.deploy_to)
    D = q(lay.deploy_to)
    if to:
        pick = [
            f"T={q(to)}",
            f'[ -d "$T" ] || {fail_expanded(f"release {to} is not on the host (see fab releases)")}',
            f'[ "$T" != "$cur" ] || {fail_expanded(f"release {to} is already current")}',
            f'[ ! -f "$T/.fabdeploy/{phases.PENDING}" ] || echo "{MARK} warn release {to} never went live '
            '(it was prepared by a deploy that did not switch)"',
        ]
    else:
        pick = [
            "T=; past=0",
            f"for r in $(ls -1 | grep -E {q(RELEASE_GLOB_ERE)} | sort -r); do",
            '  if [ "$r" = "$cur" ]; then past=1; continue; fi',
            '  [ "$past" = 1 ] || continue',
            '  [ -f "$r/.fabdeploy/bad" ] && continue',
            f'  [ -f "$r/.fabdeploy/{phases.PENDING}" ] && continue  # never went live',
            f'  [ -f {D}/venvs/"$(cat "$r/.fabdeploy/venv" 2>/dev/null)"/.fabdeploy-complete ] || continue',
            '  [ -f "$r/.fabdeploy/uwsgi.ini" ] || continue',
            '  T=$r; break',
            "done",
            f'[ -n "$T" ] || {fail_expanded("nothing to roll back to: no older good release on disk (see fab releases)")}',
        ]
    refuse = (f'[ -z "$unknown" ] || {fail_expanded("refusing (--strict): the database has migrations release $T does not know:$unknown_list")}'
              if strict else "true")
    return Phase("rollback", [
        f"cd {q(lay.releases)} 2>/dev/null || {fail_expanded('nothing is deployed here')}",
        f'cur=$(basename "$(readlink {q(lay.current)})" 2>/dev/null || true)',
        f'[ -n "$cur" ] || {fail_expanded("nothing is deployed here (no current release)")}',
        *pick,
        f'V={D}/venvs/"$(cat "$T/.fabdeploy/venv" 2>/dev/null)"',
        f'[ -f "$V/.fabdeploy-complete" ] || {fail_expanded("the virtualenv of release $T was removed; deploy it again instead")}',
        f'[ -f "$T/.fabdeploy/uwsgi.ini" ] || {fail_expanded("release $T has no saved uWSGI config; deploy it again instead")}',
        f'R={q(lay.releases)}/"$T"',
        # Migrations: ask the target's own code which applied ones it does not know.
        f'unknown=$(cd "$R" && export DJANGO_SETTINGS_MODULE={SETTINGS_MODULE} && set -a && . {q(lay.env_file)} '
        f'&& set +a && "$V/bin/python" -c {q(UNKNOWN_MIGRATIONS_PY)}) || '
        + fail_expanded("could not compare the migrations of release $T with the database"),
        "unknown_list=$(printf '%s\\n' \"$unknown\" | awk 'NF == 2 {printf \" %s.%s\", $1, $2}')",
        "printf '%s\\n' \"$unknown\" | while read -r app name; do "
        f'[ -n "$name" ] && echo "{MARK} warn the database has migration $app.$name that $T does not know '
        '(left applied; fabdeploy never unapplies migrations)"; done || true',
        refuse,
        *phases.install_ini(cfg, '"$R"'),  # (before `current` moves, as in a switch)
        f'ln -sfn "$R" {q(lay.current + ".fabdeploy-tmp")}',
        f"mv -Tf {q(lay.current + '.fabdeploy-tmp')} {q(lay.current)}",
        *phases.static_switch(cfg, '"$T"'),
        'touch "$cur/.fabdeploy/bad"',
        f'rm -f "$R/.fabdeploy/bad" "$R/.fabdeploy/{phases.PENDING}"',
        f'echo "{MARK} note $cur -> $T ($cur marked bad)"',
    ])


def restart(cfg: Config) -> Phase:
    lay = Layout(cfg.paths.deploy_to)
    return Phase("restart", [
        f'R=$(readlink {q(lay.current)}); T=$(basename "$R")',
        f'V={q(lay.venvs)}/"$(cat "$R/.fabdeploy/venv")"',
        *phases.uwsgi_restart_lines(cfg, '"$R"', '"$V"', "$T"),
    ])


def finish(cfg: Config, owner: LockOwner) -> Phase:
    lay = Layout(cfg.paths.deploy_to)
    return lock.finish(cfg, owner, {"result": "ok"}, dynamic={
        "release": f'"$(basename "$(readlink {q(lay.current)})")"'})


def rollback_script(cfg: Config, owner: LockOwner, to: str | None, strict: bool, wait: int) -> Script:
    lock_phase = Phase("lock", [
        f"[ -d {q(cfg.paths.deploy_to)} ] || {fail_expanded('nothing is deployed here')}",
        *lock.acquire(cfg, owner, wait)])
    return Script([lock_phase, select_and_switch(cfg, to, strict), restart(cfg), finish(cfg, owner)],
                  tuple(cfg.secret_values()))


@dataclass
class RollbackOutcome:
    host: str
    ok: bool
    release: str = ""
    error: str = ""
    duration: float = 0.0


def rollback_all(conns: list, cfg: Config, printer: Printer, to: str | None, strict: bool,
                 wait: int | None = None, parallel: int | None = None) -> list[RollbackOutcome]:
    if to and not RELEASE_ID.match(to):
        raise FabdeployError(f"--to {to!r} is not a release id (like 20261122T033903Z-cadb91d)")
    wait = lock.capped_wait(cfg, cfg.lock.wait if wait is None else wait, printer.warn)
    printer.width = max(len(host_label(c)) for c in conns)

    def one(conn, cancel) -> RollbackOutcome:
        host = host_label(conn)
        start = time.monotonic()
        owner = LockOwner.new("rollback", local_user())
        remote: dict = {}
        try:
            open_connection(conn)
            script = rollback_script(cfg, owner, to, strict, wait)
            printer.debug(host, script.display())
            try:
                with deferred_interrupt():
                    # the lock wait counts in the timeout: we never give up on a loop that still waits
                    res = run_script(conn, script, host=host, timeout=cfg.uwsgi.reload_timeout + 120 + wait,
                                     on_phase=lambda ph: printer.phase(host, ph), remote=remote)
            except FabdeployError as exc:
                failed = lock.failed_finish(cfg, owner, {"result": "failed", "error": str(exc).splitlines()[0]})
                stop = Phase("stop", phases.stop_group(remote.get("pgid")))  # a timed-out script, if still there
                try:
                    run_script(conn, Script([stop, failed]), host=host, timeout=60)
                except FabdeployError:
                    pass
                raise
            note = res.phases["rollback"].notes[-1] if res.phases.get("rollback") else ""
            target = note.split(" -> ")[-1].split(" ")[0] if " -> " in note else ""
            return RollbackOutcome(host, True, target, "", time.monotonic() - start)
        except FabdeployError as exc:
            return RollbackOutcome(host, False, "", str(exc), time.monotonic() - start)
        finally:
            conn.close()

    return for_each_host(conns, one, parallel or cfg.fleet.parallel)
