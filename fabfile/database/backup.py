"""A backup of the app's default database before every migration that has something to apply (issue 14).

The django phase's program (steps/django_program.py, as the app user, production settings) counts the
unapplied migrations; none (or none applied yet: an empty database, a first deploy): no backup. Otherwise it
dumps the database Django is configured with, the same way DUMP_PY does for `fab db backup`
(PostgreSQL: pg_dump -Fc, the custom format pg_restore reads, uncompressed inside; MySQL/MariaDB: mysqldump
--single-transaction, plain SQL; SQLite: the online backup API into memory, then the database file's bytes: a
consistent copy while the app writes) to stdout, and the deploy user gzips it into
shared/backups/<release>.<pgdump|sql|sqlite3>.gz (directory 0700, file 0600), then keeps the newest
`[database] keep_backups` of them (prune_lines). A failing dump stops the deploy before migrate with one line.
`fab db backup` takes one now (<release>.<UTC time>.<ext>.gz); `fab db restore` loads one (database/restore.py).
"""
from __future__ import annotations

from fabdeploy.config import Config
from fabdeploy.hosts.layout import RELEASE_GLOB_ERE, Layout
from fabdeploy.remote.markers import PY_MARKERS, fail_expanded, note
from fabdeploy.remote.shell import q

NOTHING = 3  # DUMP_PY's status when there is no database to back up yet (an SQLite file not created)
VENDOR = "fabdeploy-vendor="  # DUMP_PY's first stderr line names the database vendor
EXTS = {"sqlite": "sqlite3", "postgresql": "pgdump", "mysql": "sql"}  # a dump's kind, in its file name
EXT_OF_VENDOR = 'case "$vendor" in sqlite) echo sqlite3;; postgresql) echo pgdump;; *) echo sql;; esac'

# Runs as the app user with the production settings; the password goes to the tool in its environment
# (PGPASSWORD / MYSQL_PWD: readable only by that user), never on a command line.
DUMP_PY = PY_MARKERS + f"""\
import os, shutil, sqlite3, sys
import django
django.setup()
from django.db import connection
db, vendor = connection.settings_dict, connection.vendor
print({VENDOR!r} + vendor, file=sys.stderr, flush=True)
if vendor == 'sqlite':
    name = str(db['NAME'])
    if name == ':memory:' or not os.path.exists(name):
        sys.exit({NOTHING})
    src, mem = sqlite3.connect(name), sqlite3.connect(':memory:')
    src.backup(mem)
    sys.stdout.buffer.write(mem.serialize())
    sys.exit(0)
if vendor == 'postgresql':
    env = dict(os.environ, PGPASSWORD=str(db['PASSWORD'] or ''))
    argv = ['pg_dump', '-Fc', '-Z0', '--no-owner', '-h', db['HOST'] or 'localhost', '-p', str(db['PORT'] or 5432),
            '-U', db['USER'], db['NAME']]
elif vendor == 'mysql':
    env = dict(os.environ, MYSQL_PWD=str(db['PASSWORD'] or ''))
    tool = shutil.which('mariadb-dump') or 'mysqldump'
    argv = [tool, '--single-transaction', '--no-tablespaces', '--routines', '-h', db['HOST'] or 'localhost',
            '-P', str(db['PORT'] or 3306), '-u', db['USER'], db['NAME']]
else:
    print(f'no backup tool for a {{vendor}} database', file=sys.stderr)
    sys.exit(2)
try:
    os.execvpe(argv[0], argv, env)
except OSError as exc:
    print(f'{{argv[0]}}: {{exc.strerror}} (install the database client on the host)', file=sys.stderr)
    sys.exit(2)
"""


def backups_dir(cfg: Config) -> str:
    return f"{Layout(cfg.paths.deploy_to).shared}/backups"


def prune_lines(cfg: Config) -> list[str]:
    """Keep the newest `[database] keep_backups` dumps (release ids sort by time), remove the others."""
    d = backups_dir(cfg)
    return [f"ls -1 {q(d)} | grep -E {q(RELEASE_GLOB_ERE[:-1] + '[.].*gz$')} | sort -r | "
            f"tail -n +{cfg.database.keep_backups + 1} | while read -r old; do rm -f {q(d)}/\"$old\"; done"]


def dump_lines(cfg: Config, base: str, app_env: str, python: str, failed: str, nothing: str) -> list[str]:
    """Dump the database Django is configured with into `base`.<ext>.gz (a shell word, may expand; 0600 in
    the 0700 backups dir) and set $dump to it, then prune to keep_backups. No database yet: a note `nothing`,
    $dump empty. A failing dump stops with `failed` + its last error line, nothing half-written left."""
    d, b = backups_dir(cfg), base
    return [
        f"(umask 077; mkdir -p {q(d)}) && chmod 700 {q(d)}",
        f"rm -f {b}.tmp {b}.err {b}.rc",
        f"(umask 077; {{ {app_env} {python} -c {q(DUMP_PY)} 2>{b}.err; echo $? > {b}.rc; }} | gzip -c > {b}.tmp)",
        f"rc=$(cat {b}.rc 2>/dev/null || echo 1)",
        f"vendor=$(sed -n 's/^{VENDOR}//p' {b}.err | head -n 1)",
        f"err=$(grep -v '^{VENDOR}' {b}.err | grep -v '^[[:space:]]*$' | tail -n 1)",
        f"rm -f {b}.err {b}.rc",
        f'if [ "$rc" = {NOTHING} ]; then rm -f {b}.tmp; ' + note(nothing),
        'elif [ "$rc" = 0 ]; then',
        f'  ext=$({EXT_OF_VENDOR})',
        f"  chmod 600 {b}.tmp && mv -f {b}.tmp {b}.\"$ext\".gz",
        f"  dump={b}.\"$ext\".gz",
        *["  " + ln for ln in prune_lines(cfg)],
        "else",
        f"  rm -f {b}.tmp",
        "  " + fail_expanded(failed + "${err:-status $rc}"),
        "fi",
    ]
