"""`fab db backup|backups|restore` and `fab rollback --restore-db` end to end (issue 14): real fab, real lab
hosts, real PostgreSQL and MariaDB servers (one lab host per engine, shared by the module's tests, in order;
provisioned like tests/test_database_e2e.py), and SQLite on a plain host.

Per server engine: a row written through the app; `fab db backup` names a dump after the live release, `fab
db backups --json` lists it; the row changed; `fab db restore` refuses without a terminal and without --yes
(one line, nothing changed), then with --yes stops the app, brings the row back and the app serves again.
A release with a migration takes its pre-migrate dump; `fab rollback` to the release before names that dump;
after a redeploy (no new dump: nothing to apply), `fab rollback --restore-db` loads it: the migration's
column is gone, the app serves on the database as it was. Then the load test's clients (test_load_e2e) run
through a deploy that dumps and migrates and a rollback past it: no request fails. SQLite: the round trip,
and --restore-db without a matching dump is one line, nothing changed.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
import sqlite3
from types import SimpleNamespace

import pytest

from conftest import FAB, OFFLINE, make_project, run_fab, sample_config
from test_database_e2e import BACKUPS, FORM, MIGRATION, _host, sql
from test_load_e2e import Load

D = "/srv/sample"


@pytest.fixture(scope="module", params=["postgresql", "mysql"])
def db(request, make_host, tmp_path_factory, wheel_cache):
    engine = request.param
    host = _host(make_host, f"dt{engine[:2]}", engine)
    proj = make_project(tmp_path_factory.mktemp(engine))
    proj.write_config(sample_config(host, extra=f'[database]\nengine = "{engine}"\nkeep_backups = 3\n'))
    return SimpleNamespace(engine=engine, host=host, proj=proj, cache=wheel_cache, dump="", releases=[])


def fab(db, *args):
    return run_fab(db.proj.root, *args, cache=db.cache)


def columns(db) -> list[str]:
    return sql(db, "SELECT column_name FROM information_schema.columns WHERE table_name = 'pages_note' "
                   + ("AND table_schema = 'sample' " if db.engine == "mysql" else "") + "ORDER BY column_name"
               ).split()


def add_note(host, text: str) -> int:
    status, _, body = host.http("/notes/add", host_header=host.address, method="POST",
                                body=f"text={text}".encode(), headers=FORM)
    assert status == 200, body
    return int(body.strip())


def ok(res):
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def test_backup_lists_and_restore_brings_the_row_back(db):
    ok(fab(db, "provision"))
    res = ok(fab(db, "deploy"))
    release = re.search(r"deployed (\S+)", res.stdout).group(1)
    db.releases.append(release)
    assert add_note(db.host, "original") == 1
    res = ok(fab(db, "db", "backup"))
    m = re.search(rf"db backup ok in \S+: ({re.escape(release)}\.\d{{8}}T\d{{6}}Z)\.(pgdump|sql)\.gz \d+ bytes",
                  res.stdout)
    assert m and m.group(2) == {"postgresql": "pgdump", "mysql": "sql"}[db.engine], res.stdout + res.stderr
    dump_id = m.group(1)
    path = f"{BACKUPS}/{dump_id}.{m.group(2)}.gz"
    assert db.host.exec(["stat", "-c", "%U:%a", path]).stdout.strip() == "deploy:600"
    listed = json.loads(ok(fab(db, "db", "backups", "--json")).stdout)
    assert [d["id"] for d in listed[0]["dumps"]] == [dump_id]
    assert listed[0]["dumps"][0]["release"] == release and listed[0]["dumps"][0]["size"] > 0
    assert dump_id in ok(fab(db, "db", "backups")).stdout
    sql(db, "UPDATE pages_note SET text = 'changed'")
    add_note(db.host, "later")
    # no terminal, no --yes: one line, nothing done
    res = fab(db, "db", "restore", "--id", dump_id)
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "no terminal to confirm on; pass --yes" in err[0] and dump_id in err[0], res.stderr
    assert sql(db, "SELECT text FROM pages_note ORDER BY id") == "changed\nlater"
    # an id that is not there: one line
    res = fab(db, "db", "restore", "--id", release + ".20000101T000000Z", "--yes")
    assert res.returncode == 1 and "no dump " in res.stderr and len(res.stderr.strip().splitlines()) == 1, \
        res.stderr
    assert db.host.http("/", host_header=db.host.address)[0] == 200  # (checked before anything was stopped)
    master = db.host.exec(["cat", f"{D}/shared/run/uwsgi.pid"]).stdout.strip()
    res = ok(fab(db, "db", "restore", "--id", dump_id, "--yes"))
    assert f"database restored from {dump_id}" in res.stdout, res.stdout
    assert db.host.exec(["cat", f"{D}/shared/run/uwsgi.pid"]).stdout.strip() != master  # stopped, started
    assert sql(db, "SELECT text FROM pages_note ORDER BY id") == "original"
    assert db.host.http("/", host_header=db.host.address)[0] == 200
    assert add_note(db.host, "after-restore") == 2  # the app serves and writes again
    password = db.host.exec(["cat", f"{D}/shared/config/database.password"]).stdout.strip()
    assert password not in res.stdout + res.stderr


def test_a_terminal_is_asked_and_no_means_nothing_done(db):
    dump_id = json.loads(ok(fab(db, "db", "backups", "--json")).stdout)[0]["dumps"][0]["id"]
    env = {**os.environ, **OFFLINE}
    env.pop("FABDEPLOY_CONFIG", None)
    res = subprocess.run(["script", "-qec", f"{FAB} db restore --id {dump_id}", "/dev/null"], input="n\n",
                         cwd=db.proj.root, capture_output=True, text=True, timeout=120, env=env)
    assert f"restore dump {dump_id} into the database of" in res.stdout, res.stdout + res.stderr
    assert "not confirmed: nothing done" in res.stdout and res.returncode == 1
    assert sql(db, "SELECT COUNT(*) FROM pages_note") == "2"


def put_dump(db, name: str, shell: str) -> str:
    """A file in shared/backups made by `shell` (its stdout, gzipped), the deploy user's like fabdeploy's."""
    path = f"{BACKUPS}/{name}"
    db.host.exec(f"({shell}) | gzip -c > {path} && chown deploy: {path} && chmod 600 {path}")
    return path


def test_a_corrupt_dump_changes_nothing_and_the_app_is_started_again(db):
    """PostgreSQL: one transaction; MySQL: a dump without its closing line is refused before anything is
    dropped. Either way the app, stopped for the restore, is started again and the error says so."""
    release = db.releases[0]
    before = sql(db, "SELECT text FROM pages_note ORDER BY id")
    good = json.loads(ok(fab(db, "db", "backups", "--json")).stdout)[0]["dumps"][0]["id"]
    ext = {"postgresql": "pgdump", "mysql": "sql"}[db.engine]
    # the real dump, cut short: pg_restore cannot read it / mysqldump's last line is missing
    bad_id = f"{release}.20000102T000000Z"
    put_dump(db, f"{bad_id}.{ext}.gz", f"zcat {BACKUPS}/{good}.{ext}.gz | head -c 1500")
    master = db.host.exec(["cat", f"{D}/shared/run/uwsgi.pid"]).stdout.strip()
    res = fab(db, "db", "restore", "--id", bad_id, "--yes")
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"restoring {bad_id}.{ext}.gz failed: " in res.stderr, res.stderr
    assert "the database was left unchanged, the app was started again" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
    assert sql(db, "SELECT text FROM pages_note ORDER BY id") == before
    assert db.host.exec(["cat", f"{D}/shared/run/uwsgi.pid"]).stdout.strip() != master  # stopped, started again
    assert db.host.http("/", host_header=db.host.address)[0] == 200
    db.host.exec(f"rm -f {BACKUPS}/{bad_id}.*")


def test_an_old_plain_sql_dump_is_restored(db):
    """fabdeploy's PostgreSQL dumps before -Fc were plain SQL named <release>.sql.gz: restore reads them
    (MySQL: a plain dump made by hand with mariadb-dump, as fabdeploy's)."""
    pw = db.host.exec(["cat", f"{D}/shared/config/database.password"]).stdout.strip()
    old_id = f"{db.releases[0]}.20000103T000000Z"
    tool = {"postgresql": f"PGPASSWORD={pw} pg_dump --no-owner -h 127.0.0.1 -U sample sample",
            "mysql": f"MYSQL_PWD={pw} mariadb-dump --no-tablespaces -h 127.0.0.1 -u sample sample"}[db.engine]
    put_dump(db, f"{old_id}.sql.gz", tool)
    before = sql(db, "SELECT text FROM pages_note ORDER BY id")
    sql(db, "UPDATE pages_note SET text = 'changed'")
    res = ok(fab(db, "db", "restore", "--id", old_id, "--yes"))
    assert f"database restored from {old_id}.sql.gz" in res.stdout, res.stdout
    assert sql(db, "SELECT text FROM pages_note ORDER BY id") == before
    assert db.host.http("/", host_header=db.host.address)[0] == 200
    db.host.exec(f"rm -f {BACKUPS}/{old_id}.*")


def test_rollback_across_a_migration_names_the_dump_and_restore_db_loads_it(db):
    db.proj.commit("migration 2", {"pages/migrations/0002_field2.py": MIGRATION.format(dep="0001_initial",
                                                                                        field="field2")})
    res = ok(fab(db, "deploy"))
    newer = re.search(r"deployed (\S+)", res.stdout).group(1)
    m = re.search(rf"backup before migrate \(1 to apply\): {BACKUPS}/({re.escape(newer)})\.", res.stdout)
    assert m, res.stdout
    assert "field2" in columns(db)
    add_note(db.host, "with-field2")
    res = ok(fab(db, "rollback"))
    out = res.stdout + res.stderr
    assert f"rolled back to {db.releases[0]}" in out
    assert f"the dump matching release {db.releases[0]} is {newer} " in out, out
    assert f"fab db restore --id {newer}" in out and "--restore-db" in out
    assert "field2" in columns(db)  # (named, not restored)
    res = ok(fab(db, "deploy"))  # the migration's release again: nothing to apply, no dump
    assert "backup before migrate" not in res.stdout
    res = ok(fab(db, "rollback", "--restore-db"))
    out = res.stdout + res.stderr
    assert f"rolled back to {db.releases[0]}" in out and f"database restored from {newer}" in out, out
    assert "field2" not in columns(db)
    assert sql(db, "SELECT text FROM pages_note ORDER BY id") == "original\nafter-restore"
    assert sql(db, "SELECT COUNT(*) FROM django_migrations WHERE name = '0002_field2'") == "0"
    assert add_note(db.host, "back-on-the-old-schema") == 3
    assert db.host.http("/", host_header=db.host.address)[0] == 200


def test_a_migrating_deploy_and_a_rollback_under_load_drop_nothing(db):
    """tests/test_load_e2e.py's load through nginx, on the server database: a deploy that dumps and migrates,
    then a rollback past that migration (named dump, no restore): not one failed or non-2xx request."""
    db.proj.commit("under load", {"pages/message.txt": "under load\n"})
    with Load(db.host.address) as load:
        time.sleep(1)
        res = ok(fab(db, "deploy"))
        assert "backup before migrate (1 to apply)" in res.stdout, res.stdout  # (0002 again, after the restore)
        time.sleep(0.5)
        res = ok(fab(db, "rollback"))
        assert "the dump matching release" in res.stdout + res.stderr
        time.sleep(1)
    failed = [s for s in load.samples if s.status is None or not 200 <= s.status < 300]
    assert len(load.samples) > 50 and failed == [], failed[:5]


def test_sqlite_backup_and_restore_round_trip(make_host, tmp_path, wheel_cache):
    host = make_host("dtsq")
    proj = make_project(tmp_path)
    proj.write_config(sample_config(host))
    ok(run_fab(proj.root, "deploy", cache=wheel_cache))
    assert add_note(host, "one") == 1
    res = ok(run_fab(proj.root, "db", "backup"))
    m = re.search(r"db backup ok in \S+: (\S+)\.sqlite3\.gz", res.stdout)
    assert m, res.stdout + res.stderr
    dump_id = m.group(1)
    assert add_note(host, "two") == 2
    res = ok(run_fab(proj.root, "db", "restore", "--id", dump_id, "--yes"))
    assert f"database restored from {dump_id}.sqlite3.gz" in res.stdout
    copy = sqlite3.connect(host.path(f"{D}/shared/db/default.sqlite3"))
    assert copy.execute("SELECT text FROM pages_note").fetchall() == [("one",)]
    copy.close()
    assert add_note(host, "three") == 2
    # a dump that is no SQLite database: nothing changed, the app started again
    bad = f"{dump_id.split('.')[0]}.20000102T000000Z"
    host.exec(f"echo not-a-database | gzip > {BACKUPS}/{bad}.sqlite3.gz && chown deploy: {BACKUPS}/{bad}.sqlite3.gz")
    res = run_fab(proj.root, "db", "restore", "--id", bad, "--yes")
    assert res.returncode == 1 and "the database was left unchanged, the app was started again" in res.stderr, \
        res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    host.exec(f"rm -f {BACKUPS}/{bad}.sqlite3.gz")
    assert add_note(host, "after-bad") == 3
    # --restore-db with no dump for the migration the target lacks: one line, nothing changed, still serving
    proj.commit("migration 2", {"pages/migrations/0002_field2.py": MIGRATION.format(dep="0001_initial",
                                                                                      field="field2")})
    res = ok(run_fab(proj.root, "deploy", cache=wheel_cache))
    assert "backup before migrate (1 to apply)" in res.stdout
    current = host.exec(["readlink", f"{D}/current"]).stdout
    host.exec(f"rm -f {BACKUPS}/*")
    res = run_fab(proj.root, "rollback", "--restore-db")
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and f"--restore-db: no dump in {BACKUPS} matches release " in err[0], res.stderr
    assert "nothing changed" in err[0] and "Traceback" not in res.stderr
    assert host.exec(["readlink", f"{D}/current"]).stdout == current
    assert add_note(host, "four") == 4
