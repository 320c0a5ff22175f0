"""The phases of a rollback (see pipeline.ROLLBACK): lock, pick and activate the target, reload, finish.

Migrations are never unapplied: those the database has but the target does not know are listed (warning),
or refused with --strict before anything changes. They are found without starting Python when the migration
records answer (steps/migration_record.py: the live release's applied record against the target's disk
record, `comm`); else (no record, --strict, --restore-db, a shared database) the target's own Django is
asked (UNKNOWN_MIGRATIONS_PY, one boot).
"""
from __future__ import annotations

from fabdeploy import appserver, model
from fabdeploy.config import Config
from fabdeploy.database import fleet
from fabdeploy.database.backup import backups_dir
from fabdeploy.database.restore import find_lines, matching_lines, restore_lines
from fabdeploy.hosts.layout import SETTINGS_MODULE, VENV_COMPLETE, Layout
from fabdeploy.remote.markers import fact, fail_expanded, note, warn
from fabdeploy.remote.script import Phase
from fabdeploy.remote.shell import AS_APP, IS_RELEASE_FN, READ_LINE_FN, link_name_word, q
from fabdeploy.steps.django_app import APP_ENV_SH
from fabdeploy.steps import control, lock
from fabdeploy.steps import migration_record as record
from fabdeploy.steps.activate import activate, reload
from fabdeploy.steps.lock import LockOwner

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


def select_and_switch(cfg: Config, to: str | None, strict: bool, restore_db: bool = False) -> Phase:
    """Pick the target (--to, else the newest usable release older than current), refuse what cannot work,
    list (or with strict refuse) migrations it does not know, make it live, mark the abandoned release bad."""
    lay = Layout(cfg.paths.deploy_to)
    app = appserver.of(cfg)
    target_word = '"$T"'
    if to:
        pick = [
            f"T={q(to)}",
            f'[ -d "$T" ] || {fail_expanded(f"release {to} is not on the host (see fab releases)")}',
            f'[ "$T" != "$cur" ] || {fail_expanded(f"release {to} is already current")}',
            f'[ ! -f "$T/.fabdeploy/{model.PENDING}" ] || '
            + warn(f"release {to} never went live (it was prepared by a deploy that did not switch)"),
        ]
    else:
        pick = [
            "T=; past=0",
            IS_RELEASE_FN,
            READ_LINE_FN,
            'all=; for r in *; do if is_release "$r"; then all="$r $all"; fi; done',  # newest first (a glob sorts)
            "for r in $all; do",
            '  if [ "$r" = "$cur" ]; then past=1; continue; fi',
            '  [ "$past" = 1 ] || continue',
            '  [ -f "$r/.fabdeploy/bad" ] && continue',
            f'  [ -f "$r/.fabdeploy/{model.PENDING}" ] && continue  # never went live',
            '  read_line v "$r/.fabdeploy/venv"',
            f'  [ -f {q(lay.venvs)}/"$v"/{VENV_COMPLETE} ] || continue',
            f"  [ -f {app.staged_config(chr(34) + '$r' + chr(34))} ] || continue",
            '  T=$r; break',
            "done",
            f'[ -n "$T" ] || {fail_expanded("nothing to roll back to: no older good release on disk (see fab releases)")}',
        ]
    refuse = (f'[ -z "$unknown" ] || {fail_expanded("refusing (--strict): the database has migrations release $T does not know:$unknown_list")}'
              if strict else "true")
    return Phase("rollback", [
        f"cd {q(lay.releases)} 2>/dev/null || {fail_expanded('nothing is deployed here')}",
        f'cur=$(readlink {q(lay.current)} 2>/dev/null || true); cur=${{cur##*/}}',
        f'[ -n "$cur" ] || {fail_expanded("nothing is deployed here (no current release)")}',
        *pick,
        READ_LINE_FN,
        'read_line v "$T/.fabdeploy/venv"',
        f'V={q(lay.venvs)}/"$v"',
        f'[ -f "$V/{VENV_COMPLETE}" ] || {fail_expanded("the virtualenv of release $T was removed; deploy it again instead")}',
        f"[ -f {app.staged_config(target_word)} ] || "
        + fail_expanded(f"release $T has no saved {app.title} config; deploy it again instead"),
        f'R={q(lay.releases)}/"$T"',
        # Migrations: the records (no Python), else ask the target's own code which applied ones it does not
        # know (as the app user: it owns the database).
        *app.as_app_lines(cfg),
        record.usable_line(not strict and not restore_db and not fleet.shared(cfg)),
        'if [ -n "$rec" ]; then',
        "  " + record.compare_line(fail_expanded("could not compare the migration records of $cur and $T")),
        "else",
        f'  unknown=$(cd "$R" && {AS_APP} sh -c {q(APP_ENV_SH)} rollback {q(lay.env_file)} '
        f'env DJANGO_SETTINGS_MODULE={SETTINGS_MODULE} "$V/bin/python" -c {q(UNKNOWN_MIGRATIONS_PY)}) || '
        + fail_expanded("could not compare the migrations of release $T with the database"),
        "fi",
        # (" app.name" for each line "app name" of $unknown, by the shell: no process)
        "unknown_list=; while read -r fd_a fd_n; do if [ -n \"$fd_n\" ]; then unknown_list=\"$unknown_list $fd_a.$fd_n\"; "
        "fi; done <<FD_UNKNOWN\n$unknown\nFD_UNKNOWN",
        "printf '%s\\n' \"$unknown\" | while read -r app name; do [ -n \"$name\" ] && "
        + warn("the database has migration $app.$name that $T does not know (left applied; fabdeploy never "
               "unapplies migrations)") + "; done || true",
        refuse,
        record.carry_line(),
        *database_lines(cfg, restore_db),
        *activate(cfg, '"$R"', '"$T"'),
        'touch "$cur/.fabdeploy/bad"',
        f'rm -f "$R/.fabdeploy/bad" "$R/.fabdeploy/{model.PENDING}"',
        fact("rolled_back_to", "$T"),
        note("$cur -> $T ($cur marked bad)"),
    ])


def database_lines(cfg: Config, restore_db: bool) -> list[str]:
    """(after the comparison, $unknown set, before the switch) When the database has migrations $T does not
    know: name the dump taken before the first of them (database/restore.matching_lines) and how to load it;
    restore_db (--restore-db): stop the app, load that dump with $T's code (or fail: none), so that the
    restart phase starts $T on the database as it was. A restore that changed nothing starts the live
    release again and fails (nothing rolled back)."""
    lay = Layout(cfg.paths.deploy_to)
    d = backups_dir(cfg)
    if not restore_db:
        return [
            'if [ -n "$unknown" ]; then',
            *["  " + ln for ln in matching_lines(cfg)],
            '  if [ -n "$match" ]; then '
            + warn(f"the dump matching release $T is $match (taken before those migrations, in {d}): restore it "
                   "with fab db restore --id $match (or roll back with --restore-db)") + "; else "
            + warn(f"no dump in {d} matches release $T (taken before those migrations)") + "; fi",
            "fi",
        ]
    app = appserver.of(cfg)
    return [
        'if [ -n "$unknown" ]; then',
        *["  " + ln for ln in matching_lines(cfg)],
        f'  [ -n "$match" ] || {fail_expanded(f"--restore-db: no dump in {d} matches release $T; nothing changed")}',
        *["  " + ln for ln in find_lines(cfg, '"$match"', "$match")],
        *["  " + ln for ln in app.stop_lines(cfg)],
        '  cd "$R"',
        *["  " + ln for ln in restore_lines(f"{AS_APP} sh -c {q(APP_ENV_SH)} rollback {q(lay.env_file)} env "
                                            f"DJANGO_SETTINGS_MODULE={SETTINGS_MODULE}", '"$V/bin/python"',
                                            control.start(cfg).lines,
                                            "fab db restore --id $match --yes (then fab rollback)")],
        f"  cd {q(lay.releases)}",
        "fi",
    ]


def restart(cfg: Config) -> Phase:
    """Reload the app server onto the release `current` now points at."""
    lay = Layout(cfg.paths.deploy_to)
    return Phase("restart", [
        f'R=$(readlink {q(lay.current)}); T=${{R##*/}}',
        f'fd_v=; read -r fd_v < "$R/.fabdeploy/venv" || [ -n "$fd_v" ]; V={q(lay.venvs)}/"$fd_v"',
        *reload(cfg, '"$R"', '"$V"', "$T"),
    ])


def finish(cfg: Config, owner: LockOwner) -> Phase:
    """The audit line (naming the release rolled back to), then the lock released."""
    lay = Layout(cfg.paths.deploy_to)
    return lock.finish(cfg, owner, {"result": "ok"}, dynamic={
        "release": link_name_word(lay.current)})


def lock_phase(cfg: Config, owner: LockOwner, wait: int) -> Phase:
    """Take the deploy lock (nothing deployed: say so)."""
    return Phase("lock", [
        f"[ -d {q(cfg.paths.deploy_to)} ] || {fail_expanded('nothing is deployed here')}",
        *lock.acquire(cfg, owner, wait)])
