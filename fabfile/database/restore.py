"""Load a dump of shared/backups into the app's database (issue 14): `fab db restore ID` and
`fab rollback --restore-db`. Pure builders; the caller stops the app first and starts it after.

RESTORE_PY runs as the app user with the production settings (so with the password read on the host from
app.env, never on a command line: PGPASSWORD / MYSQL_PWD) and the dump, unzipped, on stdin:
  SQLite      the dump's bytes loaded into memory, copied into the database file with the online backup API
  PostgreSQL  every table and view of the database dropped, then `pg_restore --no-owner --exit-on-error`
  MySQL       the same drop (foreign key checks off), then the `mariadb`/`mysql` client reads the SQL
so that tables a later migration created do not survive the restore.
"""
from __future__ import annotations

from fabdeploy.config import Config
from fabdeploy.database.backup import backups_dir
from fabdeploy.hosts.layout import RELEASE_GLOB_ERE
from fabdeploy.remote.markers import PY_MARKERS, fail_expanded, note
from fabdeploy.remote.shell import q

import re

TIME_ERE = "[0-9]{8}T[0-9]{6}Z"
# A dump's id is its file name without .<ext>.gz: <release> (before a migration) or <release>.<time> (fab db
# backup).
DUMP_ERE = RELEASE_GLOB_ERE[:-1] + f"([.]{TIME_ERE})?[.](pgdump|sql|sqlite3)[.]gz$"
ID_RE = re.compile(DUMP_ERE.replace("[.](pgdump|sql|sqlite3)[.]gz$", "$"))
PRE_MIGRATE_ERE = RELEASE_GLOB_ERE[:-1] + "[.](pgdump|sql|sqlite3)[.]gz$"

RESTORE_PY = PY_MARKERS + """\
import os, shutil, sqlite3, sys
import django
django.setup()
from django.db import connection
db, vendor, kind = connection.settings_dict, connection.vendor, sys.argv[1]
want = {'sqlite3': 'sqlite', 'pgdump': 'postgresql', 'sql': 'mysql'}[kind]
if want != vendor:
    print(f'the dump is of a {want} database, the app uses {vendor}', file=sys.stderr)
    sys.exit(2)
if vendor == 'sqlite':
    mem = sqlite3.connect(':memory:')
    mem.deserialize(sys.stdin.buffer.read())
    dst = sqlite3.connect(str(db['NAME']))
    mem.backup(dst)
    dst.close()
    sys.exit(0)
with connection.cursor() as cur:
    infos = connection.introspection.get_table_list(cur)
    if vendor == 'mysql':
        cur.execute('SET FOREIGN_KEY_CHECKS = 0')
    for info in sorted(infos, key=lambda i: i.type != 'v'):  # views first
        what = 'VIEW' if info.type == 'v' else 'TABLE'
        cur.execute(f'DROP {what} IF EXISTS {connection.ops.quote_name(info.name)}'
                    + (' CASCADE' if vendor == 'postgresql' else ''))
connection.close()
if vendor == 'postgresql':
    env = dict(os.environ, PGPASSWORD=str(db['PASSWORD'] or ''))
    argv = ['pg_restore', '--no-owner', '--exit-on-error', '-h', db['HOST'] or 'localhost',
            '-p', str(db['PORT'] or 5432), '-U', db['USER'], '-d', db['NAME']]
else:
    env = dict(os.environ, MYSQL_PWD=str(db['PASSWORD'] or ''))
    tool = shutil.which('mariadb') or 'mysql'
    argv = [tool, '-h', db['HOST'] or 'localhost', '-P', str(db['PORT'] or 3306), '-u', db['USER'], db['NAME']]
try:
    os.execvpe(argv[0], argv, env)
except OSError as exc:
    print(f'{argv[0]}: {exc.strerror} (install the database client on the host)', file=sys.stderr)
    sys.exit(2)
"""


def find_lines(cfg: Config, word: str, shown: str) -> list[str]:
    """Set $file to the dump whose id is the shell word `word` (a quoted id checked by ID_RE, or "$match") and
    $kind to its kind, or fail naming it (`shown`)."""
    d = backups_dir(cfg)
    return [
        "file=; kind=",
        f'for k in pgdump sql sqlite3; do [ -f {q(d)}/{word}."$k".gz ] && {{ file={q(d)}/{word}."$k".gz; '
        'kind=$k; }; done',
        f'[ -n "$file" ] || {fail_expanded(f"no dump {shown} in {d} (see fab db backups)")}',
    ]


def restore_lines(app_env: str, python: str) -> list[str]:
    """Load $file (kind $kind) into the database; `app_env` runs a command as the app user with app.env and
    the production settings in the release; `python` its interpreter word. Fails with the tool's last line."""
    return [
        f'err=$(gzip -dc "$file" | {app_env} {python} -c {q(RESTORE_PY)} "$kind" 2>&1 >/dev/null) || '
        + fail_expanded("restoring $(basename \"$file\") failed: $(printf '%s\\n' \"$err\" | "
                        "grep -v '^[[:space:]]*$' | tail -n 1)"),
        note("database restored from $(basename \"$file\")"),
    ]


def matching_lines(cfg: Config) -> list[str]:
    """(rollback, $T the target, $unknown non-empty) Set $match to the id of the dump taken before the first
    migration $T does not have: the oldest pre-migration dump of a release newer than $T (empty: none)."""
    d = backups_dir(cfg)
    return [
        f"match=$(ls -1 {q(d)} 2>/dev/null | grep -E {q(PRE_MIGRATE_ERE)} | sort | "
        "sed 's/[.][a-z0-9]*[.]gz$//' | awk -v t=\"$T\" '$0 > t {print; exit}')",
    ]
