"""The migration record: a rollback's migration check without a Django boot (issue 16).

A rollback must name the migrations the database has that the target release's code does not know. Asking
the target's Django (rollback.UNKNOWN_MIGRATIONS_PY) costs a boot, 0.4-0.8 s. Instead the deploy's django
program, which has Django loaded anyway, records in the new release's `.fabdeploy/` directory, right after
its migrate:

    migrations.disk      the migrations on the release's disk, "app name" per line, sorted (byte order)
    migrations.applied   the migrations applied in the database (every alias' django_migrations rows), same form

The program runs as the app user (it owns the database) and cannot write the release (the deploy user's):
it prints the records on stderr (RECORD_PY, `fabdeploy-migration-` lines, a last line with both counts) and
the deploy user's shell writes the files when the counts match (django_app.SCAN_AWK; 0640 by the phase's
umask).

A rollback from the live release L to T then compares L's applied record with T's disk record with
`comm -23` (compare_lines: pure shell, no Python started) and, before the switch, makes T's applied record
L's (the database keeps every migration: fabdeploy never unapplies them). Only the live release's applied
record is ever read, so it must be true whenever it exists; whatever may change the database without
writing it removes it (invalidate_line), and the rollback falls back to the Django boot:
  - every django phase removes the live release's record before it does anything (a deploy that migrates
    but does not go live, a revert after a failed health gate, a host that does not migrate);
  - `fab db restore`, `fab manage` and `bin/manage` (any command may migrate), as the deploy user or root
    (the app user cannot delete the deploy user's file: bin/manage run by the app user itself is not seen);
  - a rollback that boots (no record, `--strict`: refusing must ask the database itself, `--restore-db`:
    the database changes) removes the target's applied record;
  - app hosts sharing one database (database/fleet.shared: a `[roles] db` host or `host = "url"`) never
    write or read a record: any app host of any later deploy (`-H` picks them) may migrate it.
Releases deployed before the record (no files) and `[django] migrate = false` take the boot path too.
"""
from __future__ import annotations

from fabdeploy.remote.shell import q

APPLIED = "migrations.applied"
DISK = "migrations.disk"
PREFIX = "fabdeploy-migration-"  # the program's record lines on stderr: PREFIX + applied|disk|record + " ..."

# Part of the django program (steps/django_program.py calls it after migrate): the records on stderr.
RECORD_PY = f'''
def record_migrations():
    """The migration record (steps/migration_record.py) as stderr lines; nothing when a database cannot say."""
    from django.db import connections
    from django.db.migrations.loader import MigrationLoader
    from django.db.migrations.recorder import MigrationRecorder
    applied = set()
    try:
        for alias in connections:
            applied |= set(MigrationRecorder(connections[alias]).applied_migrations())
        disk = set(MigrationLoader(None, ignore_no_migrations=True).disk_migrations)
    except Exception:
        return
    sys.stdout.flush()  # (the project's own prints, to the same file: never in the middle of a record line)
    lines = [f"{PREFIX}applied {{a}} {{n}}" for a, n in sorted(applied)]
    lines += [f"{PREFIX}disk {{a}} {{n}}" for a, n in sorted(disk)]
    lines.append(f"{PREFIX}record {{len(applied)}} {{len(disk)}}")
    sys.stderr.write("\\n".join(lines) + "\\n")
    sys.stderr.flush()
'''


def invalidate_line(current: str) -> str:
    """Remove the live release's applied record (`current`: the deploy's current symlink path)."""
    return f"rm -f {q(current + '/.fabdeploy/' + APPLIED)} 2>/dev/null || true"


def usable_line(trusted: bool) -> str:
    """(rollback, cwd releases/, $cur the live release, $R the target's path) $rec=1 when the records can
    answer: `trusted` (not --strict, not --restore-db, no shared database) and both files present."""
    if not trusted:
        return "rec="
    return (f'rec=; [ -f "$cur/.fabdeploy/{APPLIED}" ] && [ -f "$R/.fabdeploy/{DISK}" ] && rec=1 || true')


def compare_line(fail: str) -> str:
    """(rec=1) $unknown: the live release's applied migrations the target's disk does not have."""
    return (f'unknown=$(LC_ALL=C comm -23 "$cur/.fabdeploy/{APPLIED}" "$R/.fabdeploy/{DISK}") || {fail}')


def carry_line() -> str:
    """(before the switch) The target's applied record: the live one's when the records answered (the
    database does not change), else none (the boot path did not write one; and when the live one went away
    meanwhile: `fab manage` does not take the lock)."""
    a = f'"$R/.fabdeploy/{APPLIED}"'
    return (f'if [ -n "$rec" ] && cp "$cur/.fabdeploy/{APPLIED}" {a}.tmp 2>/dev/null; then mv -f {a}.tmp {a}; '
            f"else rm -f {a} {a}.tmp; fi")
