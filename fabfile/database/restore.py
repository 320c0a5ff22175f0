"""Load a dump of shared/backups into the app's database (issue 14): `fab db restore ID` and
`fab rollback --restore-db`. Pure builders; the caller stops the app first and starts it after.

RESTORE_PY runs as the app user with the production settings (so with the password read on the host from
app.env, never on a command line: PGPASSWORD / MYSQL_PWD) and the dump, unzipped, on stdin; every table and
view of the database is dropped first (tables a later migration created do not survive the restore):
  SQLite      the dump's bytes loaded into memory (not a database: nothing changed), copied into the database
              file with the online backup API (one transaction)
  PostgreSQL  a -Fc dump turned into SQL by pg_restore (unreadable: nothing changed), or a plain-SQL dump
              (fabdeploy's dumps before -Fc, <release>.sql.gz) as is; the drops and the SQL in one
              `psql --single-transaction -v ON_ERROR_STOP=1`: any failure changes nothing
  MySQL       a dump without mysqldump's closing "-- Dump completed" line is refused (nothing changed); else
              the drops (foreign key checks off) and the SQL through the `mariadb`/`mysql` client. MySQL's
              DDL commits as it goes: a failure there leaves the database partly restored, the app stopped
              and names the command to retry.
A failure that changed nothing (exit UNCHANGED) starts the app again and says the database was left as it was.
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

UNCHANGED = 4  # RESTORE_PY's status when it failed before anything in the database changed
UNCHANGED_SAID = "the database was left unchanged"  # in the failure's message (ops/db_fleet.py reads it)

RESTORE_PY = PY_MARKERS + f"""\
import os, shutil, sqlite3, subprocess, sys, tempfile
import django
django.setup()
from django.db import connection
db, vendor, kind = connection.settings_dict, connection.vendor, sys.argv[1]
want = {{'sqlite3': ('sqlite',), 'pgdump': ('postgresql',), 'sql': ('mysql', 'postgresql')}}[kind]


def unchanged(msg):
    print(msg, file=sys.stderr)
    sys.exit({UNCHANGED})


def last(text):
    lines = [ln for ln in text.decode(errors='replace').splitlines() if ln.strip()]
    return lines[-1] if lines else 'no message'


if vendor not in want:
    unchanged(f'the dump is of a {{want[0]}} database, the app uses {{vendor}}')
if vendor == 'sqlite':
    mem = sqlite3.connect(':memory:')
    try:
        mem.deserialize(sys.stdin.buffer.read())
        mem.execute('SELECT COUNT(*) FROM sqlite_master').fetchone()
    except sqlite3.DatabaseError as exc:
        unchanged(f'the dump is not an SQLite database ({{exc}})')
    dst = sqlite3.connect(str(db['NAME']))
    mem.backup(dst)  # (all pages in one step: one transaction on the file)
    dst.close()
    sys.exit(0)
tmp = tempfile.mkdtemp(prefix='fabdeploy-restore-')
try:
    dump = os.path.join(tmp, 'dump')
    with open(dump, 'wb') as out:
        shutil.copyfileobj(sys.stdin.buffer, out)
    with connection.cursor() as cur:
        infos = connection.introspection.get_table_list(cur)
    connection.close()
    drops = [f"DROP {{'VIEW' if i.type == 'v' else 'TABLE'}} IF EXISTS {{connection.ops.quote_name(i.name)}}"
             + (' CASCADE' if vendor == 'postgresql' else '') + ';'
             for i in sorted(infos, key=lambda i: i.type != 'v')]  # views first
    if vendor == 'postgresql':
        env = dict(os.environ, PGPASSWORD=str(db['PASSWORD'] or ''))
        script = dump
        with open(dump, 'rb') as f:
            custom = f.read(5) == b'PGDMP'
        if custom:  # pg_dump -Fc: turned into SQL first (a dump pg_restore cannot read changes nothing)
            script = os.path.join(tmp, 'restore.sql')
            r = subprocess.run(['pg_restore', '--no-owner', '-f', script, dump], stderr=subprocess.PIPE)
            if r.returncode:
                unchanged('pg_restore cannot read the dump: ' + last(r.stderr))
        # (else plain SQL: the dumps fabdeploy took before -Fc)
        with open(os.path.join(tmp, 'drop.sql'), 'w') as f:
            f.write('\\n'.join(drops) + '\\n')
        r = subprocess.run(['psql', '-X', '-q', '--single-transaction', '-v', 'ON_ERROR_STOP=1',
                            '-h', db['HOST'] or 'localhost', '-p', str(db['PORT'] or 5432), '-U', db['USER'],
                            '-d', db['NAME'], '-f', os.path.join(tmp, 'drop.sql'), '-f', script],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if r.returncode:  # one transaction: rolled back
            unchanged('psql: ' + last(r.stderr))
        sys.exit(0)
    with open(dump, 'rb') as f:  # mysqldump ends every complete dump with this line
        f.seek(max(0, os.path.getsize(dump) - 200))
        if b'-- Dump completed' not in f.read():
            unchanged('the dump is incomplete (no "-- Dump completed" line at its end)')
    env = dict(os.environ, MYSQL_PWD=str(db['PASSWORD'] or ''))
    tool = shutil.which('mariadb') or 'mysql'
    argv = [tool, '-h', db['HOST'] or 'localhost', '-P', str(db['PORT'] or 3306), '-u', db['USER'], db['NAME']]
    errors = open(os.path.join(tmp, 'err'), 'w+b')
    p = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
    try:
        p.stdin.write(('SET FOREIGN_KEY_CHECKS = 0;\\n' + '\\n'.join(drops) + '\\n').encode())
        with open(dump, 'rb') as f:
            shutil.copyfileobj(f, p.stdin)
        p.stdin.close()
    except BrokenPipeError:
        pass
    if p.wait():  # (MySQL's DDL is not transactional: the tables may be half loaded)
        errors.seek(0)
        print(tool + ': ' + last(errors.read()), file=sys.stderr)
        sys.exit(1)
except OSError as exc:
    unchanged(f'{{exc.filename or "restore"}}: {{exc.strerror}} (install the database client on the host)')
finally:
    shutil.rmtree(tmp, ignore_errors=True)
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


def restore_lines(app_env: str, python: str, restart: list[str], retry: str) -> list[str]:
    """Load $file (kind $kind) into the database; `app_env` runs a command as the app user with app.env and
    the production settings in the release; `python` its interpreter word.

    A failure that changed nothing (a file gzip or the tool cannot read, a PostgreSQL restore: one
    transaction, an incomplete MySQL dump, an SQLite file that is none): `restart` (the app stopped for the
    restore started again) and a failure saying the database was left unchanged. A failure after MySQL's
    tables were dropped: the app stays stopped, the failure names `retry` (shell words, may expand)."""
    unchanged = f"restoring $(basename \"$file\") failed: $err; {UNCHANGED_SAID}"
    return [
        f'if ! gzip -t "$file" 2>/dev/null; then rc={UNCHANGED}; err="not a complete gzip file"',
        f'elif err=$(gzip -dc "$file" | {app_env} {python} -c {q(RESTORE_PY)} "$kind" 2>&1 >/dev/null); then rc=0',
        "else rc=$?; fi",
        "err=$(printf '%s\\n' \"$err\" | grep -v '^[[:space:]]*$' | tail -n 1)",
        'if [ "$rc" = 0 ]; then ' + note("database restored from $(basename \"$file\")"),
        f'elif [ "$rc" = {UNCHANGED} ]; then',
        *(["  serr=$(mktemp); set +e", "  ( set -e", *["  " + ln for ln in restart],
           '  ) 2>"$serr"; src=$?; set -e',  # (the start's chatter is no part of the error; its failure is)
           '  [ "$src" = 0 ] || { cat "$serr" >&2; rm -f "$serr"; exit 1; }', '  rm -f "$serr"']
          if restart else []),
        "  " + fail_expanded(unchanged + (", the app was started again" if restart else "")),
        "else",
        "  " + fail_expanded("restoring $(basename \"$file\") failed: $err; the database may be partly restored "
                             f"and the app is left stopped: retry with {retry}"),
        "fi",
    ]


def matching_lines(cfg: Config) -> list[str]:
    """(rollback, $T the target, $unknown non-empty) Set $match to the id of the dump taken before the first
    migration $T does not have: the oldest pre-migration dump of a release newer than $T (empty: none)."""
    d = backups_dir(cfg)
    return [
        f"match=$(ls -1 {q(d)} 2>/dev/null | grep -E {q(PRE_MIGRATE_ERE)} | sort | "
        "sed 's/[.][a-z0-9]*[.]gz$//' | awk -v t=\"$T\" '$0 > t {print; exit}')",
    ]
