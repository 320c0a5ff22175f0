"""[database] end to end (real fab, real lab hosts, real servers; tests in order): per engine one lab host
whose /var/lib/postgresql or /var/lib/mysql is its own (hostlab.PRIVATE_DIRS) and whose package state is
private (pkglab: an install could never reach the machine's dpkg database; the servers' packages are on the
machine already, so the packages step finds them installed). The host starts without a cluster.

`fab provision --plan` changes nothing; provision creates the cluster, starts the server (pg_ctlcluster /
a daemonized mariadbd: the lab runs no systemd), creates the database and its user with a generated password
in shared/config/database.password (deploy, 0600); a second provision changes nothing. The sample project
deploys on it and writes through the real server (the row is read back with psql / mariadb); a deploy with a
new migration takes a gzipped dump that holds the table; a deploy without one takes none; dumps are pruned
to [database] keep_backups; the password is in no output.
"""
from __future__ import annotations

import re
import sqlite3
import subprocess
from types import SimpleNamespace

import pytest

import pkglab
from conftest import make_project, run_fab, sample_config

D = "/srv/sample"
PWFILE = f"{D}/shared/config/database.password"
BACKUPS = f"{D}/shared/backups"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

# (nullable: the model does not declare the field, so inserts leave it out)
MIGRATION = """\
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("pages", "{dep}")]
    operations = [migrations.AddField("note", "{field}", models.CharField(max_length=20, default="", null=True))]
"""


def _host(make_host, name: str, engine: str):
    host = make_host(name)
    pkglab.private_apt(host)
    pkglab.assert_private(host)
    if engine == "postgresql":  # the host's own /etc: a server whose package created no cluster
        host.exec("rm -rf /etc/postgresql/*/main")
    assert host.exec("ls -A /var/lib/postgresql /var/lib/mysql").stdout.split() == \
        ["/var/lib/mysql:", "/var/lib/postgresql:"]  # private and empty
    return host


@pytest.fixture(scope="module", params=["postgresql", "mysql"])
def db(request, make_host, tmp_path_factory, wheel_cache):
    engine = request.param
    host = _host(make_host, f"db{engine[:2]}", engine)
    tmp = tmp_path_factory.mktemp(engine)
    proj = make_project(tmp)
    proj.write_config(sample_config(host, extra=f'[database]\nengine = "{engine}"\nkeep_backups = 1\n'))
    return SimpleNamespace(engine=engine, host=host, proj=proj, cache=wheel_cache, outputs=[], migrations=1, previous_dump="")


def fab(db, *args):
    res = run_fab(db.proj.root, *args, cache=db.cache)
    db.outputs.append(res.stdout + res.stderr)
    return res


def changed(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if re.search(r": (changed|would change): ", ln)]


def sql(db, query: str) -> str:
    """The query's rows, as the server's administrator inside the host (never the app's password)."""
    if db.engine == "postgresql":
        cmd = ["runuser", "-u", "postgres", "--", "psql", "-X", "-d", "sample", "-tAc", query]
    else:
        cmd = ["mariadb", "-N", "-D", "sample", "-e", query]
    return db.host.exec(cmd).stdout.strip()


def backups(db) -> list[str]:
    return sorted(db.host.exec(["ls", "-1", BACKUPS], check=False).stdout.split())


def add_migration(db) -> None:
    n = db.migrations + 1
    dep = "0001_initial" if n == 2 else f"{n - 1:04d}_field{n - 1}"
    db.proj.commit(f"migration {n}", {f"pages/migrations/{n:04d}_field{n}.py":
                                      MIGRATION.format(dep=dep, field=f"field{n}")})
    db.migrations = n


def test_plan_changes_nothing(db):
    res = fab(db, "provision", "--plan")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "packages: ok" in res.stdout, res.stdout  # the servers' packages are there: nothing installed
    steps = {"postgresql": "postgresql", "mysql": "mysql"}[db.engine]
    for step in ("data", "server", "database"):
        assert f"{steps}-{step}: would change" in res.stdout, res.stdout
    assert db.host.exec("ls -A /var/lib/postgresql /var/lib/mysql").stdout.split() == \
        ["/var/lib/mysql:", "/var/lib/postgresql:"]
    assert db.host.exec(["test", "-e", PWFILE], check=False).returncode != 0


def test_provision_creates_the_server_database_and_password(db):
    res = fab(db, "provision")
    assert res.returncode == 0, res.stdout + res.stderr
    pre = db.engine
    assert f"{pre}-data: changed" in res.stdout and f"{pre}-server: changed" in res.stdout, res.stdout
    assert f"{pre}-database: changed: database sample and user sample ready (password in {PWFILE})" in res.stdout
    assert db.host.exec(["stat", "-c", "%U:%a", PWFILE]).stdout.strip() == "deploy:600"
    assert re.fullmatch(r"[0-9a-f]{36}", db.host.exec(["cat", PWFILE]).stdout.strip())
    if db.engine == "postgresql":  # the lab runs no systemd: pg_ctlcluster started the cluster
        assert " online " in db.host.exec(["pg_lsclusters", "-h"]).stdout
    else:
        assert db.host.exec("kill -0 $(cat /run/mysqld/mysqld.pid)", check=False).returncode == 0


def test_a_second_provision_changes_nothing_and_keeps_the_password(db):
    before = db.host.exec(["cat", PWFILE]).stdout
    res = fab(db, "provision")
    assert res.returncode == 0 and changed(res.stdout) == [], res.stdout + res.stderr
    assert f"{db.engine}-database: ok" in res.stdout
    assert db.host.exec(["cat", PWFILE]).stdout == before


def test_the_app_writes_and_reads_through_the_server(db):
    res = fab(db, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    env = db.host.exec(["cat", f"{D}/shared/config/app.env"]).stdout
    assert re.search(rf"^DATABASE_URL={db.engine}://sample:[0-9a-f]{{36}}@127\.0\.0\.1:\d+/sample$", env, re.M), env
    status, _, body = db.host.http("/notes/add", host_header=db.host.address, method="POST",
                                   body=b"text=through-the-server", headers=FORM)
    assert status == 200 and body.strip() == b"1", body
    assert sql(db, "SELECT text FROM pages_note") == "through-the-server"
    assert db.host.http("/", host_header=db.host.address)[0] == 200
    assert not db.host.path(f"{D}/shared/db/default.sqlite3").exists()
    assert "backup" not in res.stdout and backups(db) == []  # an empty database: nothing to back up


def test_a_new_migration_takes_a_dump_holding_the_table(db):
    add_migration(db)
    res = fab(db, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    ext = {"postgresql": "pgdump", "mysql": "sql"}[db.engine]  # pg_dump -Fc (custom format), mysqldump SQL
    m = re.search(rf"backup before migrate \(1 to apply\): ({BACKUPS}/(\S+)\.{ext}\.gz)", res.stdout)
    assert m, res.stdout
    dump = m.group(1)
    db.previous_dump = dump.rsplit("/", 1)[1]
    assert backups(db) == [db.previous_dump]
    assert m.group(2) in res.stdout.split("deployed ", 1)[1]  # named after the release
    assert db.host.exec(["stat", "-c", "%U:%a", dump]).stdout.strip() == "deploy:600"
    assert db.host.exec(["stat", "-c", "%a", BACKUPS]).stdout.strip() == "700"
    if db.engine == "postgresql":  # a custom-format archive pg_restore reads (its data uncompressed inside)
        assert db.host.exec(f"zcat {dump} | head -c 5").stdout == "PGDMP"
        assert "TABLE public pages_note" in db.host.exec(f"zcat {dump} | pg_restore -l").stdout
    text = db.host.exec(f"zcat {dump} | tr -c '[:print:]\\n' .").stdout
    assert "pages_note" in text and "through-the-server" in text
    assert "field2" not in text  # taken before the migration
    assert sql(db, "SELECT COUNT(*) FROM pages_note WHERE field2 = ''") == "1"


def test_a_deploy_without_migrations_takes_no_dump(db):
    before = backups(db)
    db.proj.commit("text only", {"pages/message.txt": "no migration here\n"})
    res = fab(db, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "backup" not in res.stdout
    assert backups(db) == before


BREAK = {  # a dump that fails (a table the app's user may not read; a broken view), while migrate works
    "postgresql": ("CREATE TABLE hidden_x (i int); REVOKE ALL ON hidden_x FROM PUBLIC", "DROP TABLE hidden_x"),
    "mysql": ("CREATE TABLE hidden_t (i int); CREATE VIEW hidden_x AS SELECT i FROM hidden_t; DROP TABLE hidden_t",
              "DROP VIEW hidden_x"),  # a view whose table is gone: mariadb-dump stops on it
}


def test_a_failing_dump_stops_the_deploy_before_migrate(db):
    sql(db, BREAK[db.engine][0])
    current = db.host.exec(["readlink", f"{D}/current"]).stdout
    before = backups(db)
    add_migration(db)
    res = fab(db, "deploy")
    assert res.returncode == 1, res.stdout + res.stderr
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and f"the backup before migrate failed ({db.engine}), nothing was migrated: " in err[0], \
        res.stderr
    assert "hidden_x" in err[0] and "Traceback" not in res.stderr
    assert sql(db, f"SELECT COUNT(*) FROM django_migrations WHERE name = '{db.migrations:04d}_field{db.migrations}'") \
        == "0"
    assert db.host.exec(["readlink", f"{D}/current"]).stdout == current
    assert backups(db) == before  # nothing half-written left
    sql(db, BREAK[db.engine][1])


def test_dumps_are_pruned_to_keep_backups(db):
    add_migration(db)  # (with the one the failed deploy did not apply: 2 to apply)
    res = fab(db, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    newest = re.search(rf"backup before migrate \(2 to apply\): {BACKUPS}/([^\s;]+)", res.stdout).group(1)
    assert backups(db) == [newest]  # [database] keep_backups = 1: the dump of the earlier migration is gone
    assert db.previous_dump != newest


def test_the_password_is_in_no_output(db):
    password = db.host.exec(["cat", PWFILE]).stdout.strip()
    res = fab(db, "deploy", "--verbose")  # nothing to do, or a deploy: its script shown either way
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(db.outputs) >= 7
    for out in db.outputs:
        assert password not in out
    grep = subprocess.run(["grep", "-rl", password, str(db.proj.root)], capture_output=True, text=True)
    assert grep.stdout == ""  # nor in deploy.toml or anything beside it


def test_two_more_app_hosts_use_the_server_by_url_and_migrate_once(db, make_host):
    """host = "url": two more app hosts (no server of their own) deploy the same project against this host's
    server, whose URL (with the password) comes from [secrets] DATABASE_URL, here an environment variable; a
    new migration is applied once (one host migrates, the other does not), both serve the same rows.
    The server is opened to the lab network and stopped first: a provision run starts it again."""
    server = db.host
    password = server.exec(["cat", PWFILE]).stdout.strip()
    if db.engine == "postgresql":
        server.exec("""runuser -u postgres -- psql -X -q -c "ALTER SYSTEM SET listen_addresses = '*'" """)
        server.exec("echo 'host sample sample 10.213.0.0/16 scram-sha-256' >> $(ls -d /etc/postgresql/*/main)/pg_hba.conf")
        server.exec('set -- $(pg_lsclusters -h | head -n 1); pg_ctlcluster "$1" "$2" stop')
        port = 5432
    else:
        server.exec(["mariadb", "-e", f"CREATE USER 'sample'@'10.213.%' IDENTIFIED BY '{password}'; "
                                      "GRANT ALL ON sample.* TO 'sample'@'10.213.%'"])
        server.path("/etc/mysql/mariadb.conf.d/99-lab.cnf").write_text("[mysqld]\nbind-address = 0.0.0.0\n")
        server.exec("mariadb-admin shutdown")
        port = 3306
    res = fab(db, "provision")
    assert res.returncode == 0 and f"{db.engine}-server: changed" in res.stdout, res.stdout + res.stderr
    app, app2 = make_host(f"dbu{db.engine[:2]}"), make_host(f"dbv{db.engine[:2]}")
    config = sample_config(app, extra=f'[database]\nengine = "{db.engine}"\nhost = "url"\n'
                                      '[secrets]\nDATABASE_URL = { env = "LAB_DATABASE_URL" }\n')
    db.proj.write_config(config.replace(f'hosts = ["{app.ssh_target()}"]',
                                        f'hosts = ["{app.ssh_target()}", "{app2.ssh_target()}"]'),
                         name="deploy-url.toml")
    add_migration(db)
    url = f"{db.engine}://sample:{password}@{server.address}:{port}/sample"
    env = {"FABDEPLOY_CONFIG": "deploy-url.toml", "LAB_DATABASE_URL": url}
    res = run_fab(db.proj.root, "deploy", "--verbose", env=env, cache=db.cache)
    assert res.returncode == 0, res.stdout + res.stderr
    assert password not in res.stdout + res.stderr
    migrated = re.findall(r"^(\S+) +django +1 migrations applied", res.stdout, re.M)
    assert migrated == [app.address], res.stdout  # once, for the shared database (--verbose shows the scripts)
    assert "migrate: once, on " in res.stdout, res.stdout
    name = f"{db.migrations:04d}_field{db.migrations}"
    assert sql(db, f"SELECT COUNT(*) FROM django_migrations WHERE name = '{name}'") == "1"
    status, _, body = app.http("/notes/add", host_header=app.address, method="POST", body=b"text=by-url",
                               headers=FORM)
    assert status == 200 and body.strip() == b"2", body  # the row the first host wrote, and this one
    status, _, page = app2.http("/", host_header=app.address)
    assert status == 200 and b"Notes: 2" in page, page  # the second url host serves the same rows
    assert sql(db, "SELECT text FROM pages_note ORDER BY id") == "through-the-server\nby-url"
    for h in (app, app2):
        assert h.exec(["ls", "-A", "/var/lib/postgresql", "/var/lib/mysql"]).stdout.split() == \
            ["/var/lib/mysql:", "/var/lib/postgresql:"]  # no server of its own
    # a URL without its password: one line naming the secret, nothing deployed
    res = run_fab(db.proj.root, "deploy", env={**env, "LAB_DATABASE_URL": url.replace(f":{password}", "")})
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "secrets.DATABASE_URL (env LAB_DATABASE_URL) has no password" in err[0], res.stderr


def test_sqlite_dumps_are_consistent_copies_of_the_database_file(make_host, tmp_path, wheel_cache):
    """The default engine: the same backup before a migration, an online-backup copy of shared/db's file."""
    host = make_host("dbsq")
    proj = make_project(tmp_path)
    proj.write_config(sample_config(host, extra="[database]\nkeep_backups = 1\n"))
    res = run_fab(proj.root, "deploy", cache=wheel_cache)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "backup" not in res.stdout  # a new database
    status, _, body = host.http("/notes/add", host_header=host.address, method="POST", body=b"text=in-sqlite",
                                headers=FORM)
    assert status == 200 and body.strip() == b"1"
    proj.commit("migration 2", {"pages/migrations/0002_field2.py": MIGRATION.format(dep="0001_initial",
                                                                                      field="field2")})
    res = run_fab(proj.root, "deploy", cache=wheel_cache)
    assert res.returncode == 0, res.stdout + res.stderr
    m = re.search(rf"backup before migrate \(1 to apply\): ({BACKUPS}/[^\s;]+\.sqlite3\.gz)", res.stdout)
    assert m, res.stdout
    assert host.exec(["ls", BACKUPS]).stdout.split() == [m.group(1).rsplit("/", 1)[1]]  # keep_backups = 1
    host.exec(f"zcat {m.group(1)} > /tmp/copy.sqlite3")
    copy = sqlite3.connect(host.path("/tmp/copy.sqlite3"))
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert copy.execute("SELECT text FROM pages_note").fetchall() == [("in-sqlite",)]
    assert "field2" not in [row[1] for row in copy.execute("PRAGMA table_info(pages_note)")]


def test_an_unknown_engine_is_one_line_before_any_connection(tmp_path):
    proj = make_project(tmp_path)
    nowhere = SimpleNamespace(ssh_target=lambda: "deploy@192.0.2.1", address="192.0.2.1")
    proj.write_config(sample_config(nowhere, extra='[database]\nengine = "oracle"\n'))
    for task in ("deploy", "provision"):
        res = run_fab(proj.root, task, timeout=60)
        assert res.returncode == 1
        err = res.stderr.strip().splitlines()
        assert len(err) == 1 and 'database.engine must be "sqlite", "postgresql" or "mysql" (got \'oracle\')' \
            in err[0], res.stderr


def test_under_systemd_the_servers_are_enabled_and_started_with_systemctl(make_host, tmp_path):
    """A host whose PID 1 is systemd (the lab masks both servers' units: unmasked here, in the host's own
    /etc): provision with engine = "postgresql", then "mysql", enables and starts each with systemctl (the
    PostgreSQL cluster created since boot: its postgresql@ instance); the next runs change nothing."""
    host = make_host("dbsd", init="systemd")
    pkglab.private_apt(host)
    host.exec("rm -rf /etc/postgresql/*/main")
    for unit in ("postgresql.service", "postgresql@.service", "mariadb.service"):
        host.path(f"/etc/systemd/system/{unit}").unlink()
    host.systemctl("daemon-reload")
    proj = make_project(tmp_path)
    for engine, units in (("postgresql", ["postgresql", "postgresql@15-main"]), ("mysql", ["mariadb"])):
        proj.write_config(sample_config(host, extra=f'[database]\nengine = "{engine}"\n'))
        res = run_fab(proj.root, "provision")
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"{engine}-server: changed" in res.stdout and f"{engine}-database: changed" in res.stdout, res.stdout
        assert host.systemctl("is-enabled", units[0]).stdout.strip() == "enabled"
        for unit in units:
            assert host.systemctl("is-active", unit).stdout.strip() == "active", unit
        res = run_fab(proj.root, "provision")
        assert res.returncode == 0 and changed(res.stdout) == [], res.stdout + res.stderr
