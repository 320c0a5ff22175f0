"""`fab db backup|backups|restore` (issue 14): the app database's dumps in shared/backups, one remote
invocation per app host, in parallel.

    backup    lock, dump (database/backup.dump_lines) named <current release>.<UTC time>, finish
    backups   list the dumps: id, release, size, time (no lock: read-only)
    restore   lock, find the dump (none: nothing stopped), stop the app, load the dump (database/restore.py), start, health check, finish
              (app hosts sharing one database: every one stopped, the dump loaded once: ops/db_fleet.py)

The lock, stop, start, health and finish phases are fab stop/start's own (steps/control.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from fabdeploy.config import Config
from fabdeploy.database import backup as _backup
from fabdeploy.database import fleet
from fabdeploy.database import restore as _restore
from fabdeploy.errors import ConfigError
from fabdeploy.hosts.connect import host_label, local_user
from fabdeploy.hosts.fleet import on_each_host
from fabdeploy.hosts.layout import SETTINGS_MODULE, Layout
from fabdeploy.hosts.target import Target
from fabdeploy.ops import db_fleet
from fabdeploy.ops.control import timeout as control_timeout
from fabdeploy.ops.host_run import lock_wait, run_locked
from fabdeploy.output import Printer
from fabdeploy.remote.markers import note
from fabdeploy.remote.runner import run_script
from fabdeploy.remote.script import Phase, Script
from fabdeploy.remote.shell import AS_APP, q
from fabdeploy.steps import control
from fabdeploy.steps.django_app import APP_ENV_SH
from fabdeploy.steps.lock import LockOwner
from fabdeploy import appserver

ACTIONS = ("backup", "backups", "restore")
LIST_MARK = "dump "


def in_release(cfg: Config) -> tuple[list[str], str, str]:
    """Lines that cd into the live release ($R, $T, $V set, $ASAPP too), and the words running a command
    there as the app user with app.env and the production settings, and its python."""
    lay = Layout(cfg.paths.deploy_to)
    lines = [*control.current_release(cfg), 'cd "$R"', *appserver.of(cfg).as_app_lines(cfg)]
    return lines, (f"{AS_APP} sh -c {q(APP_ENV_SH)} db {q(lay.env_file)} env "
                   f"DJANGO_SETTINGS_MODULE={SETTINGS_MODULE}"), '"$V/bin/python"'


def backup_phase(cfg: Config) -> Phase:
    lines, app_env, python = in_release(cfg)
    base = f'{q(_backup.backups_dir(cfg))}/"$T.$stamp"'
    return Phase("backup", [
        *lines, "dump=", "stamp=$(date -u +%Y%m%dT%H%M%SZ)  # (once: the name is used several times)",
        *_backup.dump_lines(cfg, base, app_env, python, "the backup failed (${vendor:-database}): ",
                            "no backup: the database does not exist yet"),
        '[ -z "$dump" ] || ' + note("$(basename \"$dump\") $(wc -c < \"$dump\") bytes"),
    ])


def list_phase(cfg: Config) -> Phase:
    d = q(_backup.backups_dir(cfg))
    return Phase("backups", [
        f"ls -1 {d} 2>/dev/null | grep -E {q(_restore.DUMP_ERE)} | sort -r | while read -r f; do "
        f'echo "{LIST_MARK}$f $(stat -c "%s %Y" {d}/"$f")"; done',
    ])


def restore_phase(cfg: Config, dump_id: str, restart: bool = True) -> Phase:
    """Load the dump; a failure that changed nothing starts the app again (restart: the app of this host)."""
    lines, app_env, python = in_release(cfg)
    again = control.start(cfg).lines if restart else []
    return Phase("restore", [*_restore.find_lines(cfg, q(dump_id), dump_id), *lines,
                             *_restore.restore_lines(app_env, python, again, f"fab db restore --id {dump_id} --yes")])


def script(cfg: Config, action: str, owner: LockOwner, wait: int, target: Target, dump_id: str = "") -> Script:
    """The one remote invocation of `fab db <action>` on an app host."""
    if action == "backups":
        return Script([list_phase(cfg)], tuple(cfg.secret_values()))
    if action == "backup":
        body = [backup_phase(cfg)]
    else:
        body = [Phase("find", [*_restore.find_lines(cfg, q(dump_id), dump_id), note("$(basename \"$file\")")]),
                control.stop(cfg), restore_phase(cfg, dump_id), control.start(cfg),
                control.health(cfg, target.address, target.server)]
    return Script([control.lock_phase(cfg, owner, wait), *body, control.finish(cfg, owner)],
                  tuple(cfg.secret_values()), on_failure=control.on_failure(cfg, owner))


@dataclass
class DbOutcome:
    host: str
    ok: bool
    said: str = ""
    error: str = ""
    dumps: list = field(default_factory=list)
    duration: float = 0.0


def parse_dumps(stdout: str) -> list[dict]:
    """The listing's lines (`dump <file> <size> <mtime>`) as {id, release, size, time} (UTC, ISO)."""
    out = []
    for line in stdout.splitlines():
        if not line.startswith(LIST_MARK):
            continue
        name, size, mtime = line[len(LIST_MARK):].split()
        ident = name.rsplit(".", 2)[0]
        out.append({"id": ident, "release": ident.split(".")[0], "kind": name.rsplit(".", 2)[1],
                    "size": int(size), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(mtime)))})
    return out


def check(action: str, dump_id: str) -> None:
    """One line for an unknown action or a restore without a well-formed dump id."""
    if action not in ACTIONS:
        raise ConfigError(f"fab db takes backup, backups or restore (got {action!r})")
    if action == "restore" and not _restore.ID_RE.match(dump_id or ""):
        raise ConfigError(f"fab db restore needs --id ID of a dump (see fab db backups; got {dump_id!r})")


def db_all(conns: list, cfg: Config, printer: Printer, action: str, dump_id: str = "", wait: int | None = None,
           parallel: int | None = None) -> list[DbOutcome]:
    check(action, dump_id)
    wait = lock_wait(cfg, printer, conns, wait) if action != "backups" else 0
    started = time.monotonic()
    if action == "restore" and len(conns) > 1 and fleet.shared(cfg):  # stop all, restore once, start all
        steps = db_fleet.restore_all(conns, cfg, printer, dump_id, wait, parallel or cfg.fleet.parallel)
        return [DbOutcome(s.host, s.ok, s.said, s.error, duration=time.monotonic() - started) for s in steps]

    def one(conn, cancel) -> DbOutcome:
        host, start = host_label(conn), time.monotonic()
        owner = LockOwner.new(f"db-{action}", local_user())
        s = script(cfg, action, owner, wait, Target.of(conn, cfg), dump_id)
        if action == "backups":
            res = run_script(conn, s, host=host, timeout=120, cancel=cancel)
            return DbOutcome(host, True, dumps=parse_dumps(res.stdout), duration=time.monotonic() - start)
        res = run_locked(conn, cfg, s, owner, host, control_timeout(cfg, "restart", wait) + 3600, printer)
        said = "; ".join(n for ph in res.phases.values() if ph.name not in ("lock", "finish") for n in ph.notes)
        return DbOutcome(host, True, said, duration=time.monotonic() - start)

    return on_each_host(conns, one, parallel or cfg.fleet.parallel,
                        failed=lambda conn, exc: DbOutcome(host_label(conn), False, error=str(exc),
                                                           duration=time.monotonic() - started))


def format_dumps(outcomes: list[DbOutcome]) -> str:
    rows = [("HOST", "ID", "RELEASE", "SIZE", "TIME")]
    for o in outcomes:
        rows += [(o.host, d["id"], d["release"], str(d["size"]), d["time"]) for d in o.dumps]
        if o.ok and not o.dumps:
            rows.append((o.host, "(no dumps)", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
