"""A fleet sharing one database host (issue 14, roles.db) end to end: real fab, real lab hosts, a real
PostgreSQL (tests in order, one module: a db host, two app hosts, and an outsider host that is in no role).

`fab provision -H <db host>` (the db role: no nginx, no app server) creates the cluster, makes it listen on the
db host's address and lets in only the two app hosts (pg_hba.conf, scram-sha-256), creates the database and
its user with a password generated on the db host (0600), starts the fleet's one Redis (bound to the db
address, its password required) and an nftables table opening both ports to the app hosts only. `fab deploy`
reads the passwords once over SSH (never printed), writes them into each app host's shared/config, and
DATABASE_URL / REDIS_URL point at the db host; only the first app host migrates. A row written through app A
is read through app B, a cache entry set on A is read on B; a migrating deploy takes one dump (on A), not two;
`fab db backups` lists it once; the outsider host, with the right passwords, gets a TCP reset from the db
host's firewall (PostgreSQL and Redis), and the server itself refuses an address not in pg_hba.conf (the db
host connecting to its own address: local traffic passes the firewall). A no-op redeploy is "already live";
after a password rotation on the db host the next deploy is real and both app hosts get it. `fab db restore`
stops both app hosts and restores once; a corrupt dump changes nothing and both serve again; `fab rollback
--restore-db` restores once and switches both. The passwords are in no output.
"""
from __future__ import annotations

import json
import re
import secrets
import textwrap
from types import SimpleNamespace

import pytest

import pkglab
from conftest import make_project, run_fab, sample_config

D = "/srv/sample"
PWFILE = f"{D}/shared/config/database.password"
REDIS_PW = f"{D}/shared/config/redis.password"
BACKUPS = f"{D}/shared/backups"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
MIGRATION = """\
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("pages", "0001_initial")]
    operations = [migrations.AddField("note", "field2", models.CharField(max_length=20, default="", null=True))]
"""


@pytest.fixture(scope="module")
def fl(make_host, tmp_path_factory, wheel_cache):
    db = make_host("fldb")
    pkglab.private_apt(db)
    pkglab.assert_private(db)
    db.exec("rm -rf /etc/postgresql/*/main")  # the host's own /etc: a server whose package created no cluster
    a, b, outsider = make_host("fla"), make_host("flb"), make_host("flx")
    proj = make_project(tmp_path_factory.mktemp("dbfleet"))
    proj.write_config(fleet_config(a, b, db, "postgresql", "[cache]\nredis = true\n"))
    return SimpleNamespace(db=db, a=a, b=b, outsider=outsider, proj=proj, cache=wheel_cache, outputs=[])


def fleet_config(a, b, db, engine: str, extra: str = "") -> str:
    """deploy.toml of two app hosts sharing the database of `db` (roles with their addresses)."""
    base = sample_config(a).replace(f'hosts = ["{a.ssh_target()}"]\n', "")
    return base + textwrap.dedent(f"""\
        [roles]
        app = [{{ host = "{a.ssh_target()}", address = "{a.address}" }},
               {{ host = "{b.ssh_target()}", address = "{b.address}" }}]
        db = [{{ host = "{db.ssh_target()}", address = "{db.address}" }}]
        [database]
        engine = "{engine}"
        """) + extra


def fab(fl, *args):
    res = run_fab(fl.proj.root, *args, cache=fl.cache)
    fl.outputs.append(res.stdout + res.stderr)
    return res


def password(fl) -> str:
    return fl.db.exec(["cat", PWFILE]).stdout.strip()


def psql(host, server: str, pw: str):
    return host.exec(f"PGPASSWORD={pw} psql -X -h {server} -U sample -d sample -tAc 'SELECT 1' 2>&1", check=False)


def redis_pw(fl) -> str:
    return fl.db.exec(["cat", REDIS_PW]).stdout.strip()


def redis_ping(host, server: str, pw: str):
    return host.exec(f"REDISCLI_AUTH={pw} timeout 10 redis-cli -h {server} ping 2>&1", check=False)


def backups(host) -> list[str]:
    return sorted(host.exec(["ls", "-1", BACKUPS], check=False).stdout.split())


def test_provision_makes_the_db_host_the_fleets_server(fl):
    res = fab(fl, "provision", "-H", fl.db.ssh_target())
    assert res.returncode == 0, res.stdout + res.stderr
    out, a, b = res.stdout, fl.a.address, fl.b.address
    assert f"postgresql-access: changed: PostgreSQL listens on {fl.db.address}, database sample open to {a}, {b} only" \
        in out, out
    assert f"postgresql-database: changed: database sample and user sample ready (password in {PWFILE})" in out
    assert "nginx" not in out and "manager" not in out and "sudoers" not in out  # a db host, not an app host
    assert f"redis-config: changed: Redis bound to 127.0.0.1,{fl.db.address}:6379 with a password" in out, out
    assert f"db-firewall: changed: nftables: port 5432, 6379 open to {a}, {b} only (table fabdeploy_db_sample)" in out
    table = fl.db.exec("nft list table inet fabdeploy_db_sample").stdout
    assert f"ip saddr {{ {a}, {b} }} accept" in table and "reject with tcp reset" in table, table
    assert fl.db.exec(["stat", "-c", "%U:%a", PWFILE]).stdout.strip() == "deploy:600"
    assert re.fullmatch(r"[0-9a-f]{36}", password(fl))
    hba = fl.db.exec("cat $(runuser -u postgres -- psql -X -tAc 'SHOW hba_file')").stdout
    assert f"host sample sample {a}/32 scram-sha-256\nhost sample sample {b}/32 scram-sha-256\n" in hba, hba
    listen = fl.db.exec(["runuser", "-u", "postgres", "--", "psql", "-X", "-tAc", "SHOW listen_addresses"])
    assert listen.stdout.strip() == f"localhost,{fl.db.address}"
    again = fab(fl, "provision", "-H", fl.db.ssh_target())  # idempotent: the password and the access kept
    assert again.returncode == 0 and not re.search(r": changed: ", again.stdout), again.stdout + again.stderr


def test_the_fleet_deploys_against_the_db_host_and_migrates_once(fl):
    res = fab(fl, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    pw = password(fl)
    for host in (fl.a, fl.b):
        env = host.exec(["cat", f"{D}/shared/config/app.env"]).stdout
        assert f"DATABASE_URL=postgresql://sample:{pw}@{fl.db.address}:5432/sample\n" in env
        assert f"REDIS_URL=redis://:{redis_pw(fl)}@{fl.db.address}:6379/0\n" in env
        for f in (PWFILE, REDIS_PW):
            assert host.exec(["stat", "-c", "%U:%a", f]).stdout.strip() == "deploy:600"
        assert not host.path(f"{D}/shared/db/default.sqlite3").exists()
    assert f"migrate: once, on {fl.a.address}" in res.stdout, res.stdout
    assert res.stdout.count("migrations applied") == 1, res.stdout
    assert "migrate: done once for the fleet's shared database" in res.stdout


def test_a_row_written_through_app_a_is_read_through_app_b(fl):
    name = fl.a.address  # nginx.server_name
    status, _, body = fl.a.http("/notes/add", host_header=name, method="POST", body=b"text=from-a", headers=FORM)
    assert status == 200 and body.strip() == b"1", body
    status, _, page = fl.b.http("/", host_header=name)
    assert status == 200 and b"Notes: 1" in page, page
    status, _, body = fl.b.http("/notes/add", host_header=name, method="POST", body=b"text=from-b", headers=FORM)
    assert status == 200 and body.strip() == b"2", body
    rows = fl.db.exec(["runuser", "-u", "postgres", "--", "psql", "-X", "-d", "sample", "-tAc",
                       "SELECT text FROM pages_note ORDER BY id"]).stdout.split()
    assert rows == ["from-a", "from-b"]


def test_a_migrating_deploy_takes_one_dump_not_two(fl):
    fl.proj.commit("migration 2", {"pages/migrations/0002_field2.py": MIGRATION})
    res = fab(fl, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    dumps = re.findall(r"backup before migrate \(1 to apply\): (\S+\.pgdump\.gz)", res.stdout)
    assert len(dumps) == 1, res.stdout
    assert backups(fl.a) == [dumps[0].rsplit("/", 1)[1]] and backups(fl.b) == []
    assert "from-a" in fl.a.exec(f"zcat {dumps[0]} | tr -c '[:print:]\\n' .").stdout
    listed = fab(fl, "db", "backups")  # once for the fleet: the first app host's
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert dumps[0].rsplit("/", 1)[1].removesuffix(".pgdump.gz") in listed.stdout
    assert fl.b.address not in listed.stdout, listed.stdout


def test_a_cache_entry_set_on_app_a_is_read_on_app_b(fl):
    put = "from django.core.cache import cache; cache.set('fleet-key', 'set-on-a', 300)"
    get = "from django.core.cache import cache; print('got', cache.get('fleet-key'))"
    res = fab(fl, "manage", "--host", fl.a.ssh_target(), "--", "shell", "-c", put)
    assert res.returncode == 0, res.stdout + res.stderr
    res = fab(fl, "manage", "--host", fl.b.ssh_target(), "--", "shell", "-c", get)
    assert res.returncode == 0 and "got set-on-a" in res.stdout, res.stdout + res.stderr


def test_only_the_app_hosts_are_let_in(fl):
    pw, rpw = password(fl), redis_pw(fl)
    assert psql(fl.a, fl.db.address, pw).stdout.strip() == "1"  # an app host, with the password
    assert redis_ping(fl.b, fl.db.address, rpw).stdout.strip() == "PONG"
    out = psql(fl.outsider, fl.db.address, pw)  # the db host's firewall: a reset
    assert out.returncode != 0 and "Connection refused" in out.stdout, out.stdout
    out = redis_ping(fl.outsider, fl.db.address, rpw)
    assert "PONG" not in out.stdout and "Connection refused" in out.stdout, out.stdout
    out = psql(fl.db, fl.db.address, pw)  # past the firewall (local), an address pg_hba.conf does not list
    assert out.returncode != 0 and f'no pg_hba.conf entry for host "{fl.db.address}"' in out.stdout, out.stdout


def sql(fl, query: str) -> str:
    return fl.db.exec(["runuser", "-u", "postgres", "--", "psql", "-X", "-d", "sample", "-tAc", query]).stdout.strip()


def masters(fl) -> list[str]:
    return [h.exec(["cat", f"{D}/shared/run/uwsgi.pid"]).stdout.strip() for h in (fl.a, fl.b)]


def serving(fl) -> bool:
    return all(h.http("/", host_header=fl.a.address)[0] == 200 for h in (fl.a, fl.b))


def test_a_rotated_database_password_reaches_the_app_hosts_on_the_next_deploy(fl):
    """The db host's passwords are part of the "already live" fingerprint: a no-op redeploy is skipped, but
    after a rotation (a new password file on the db host, fab provision sets it) the next deploy is real."""
    res = fab(fl, "deploy")
    assert res.returncode == 0 and "already live" in res.stdout, res.stdout + res.stderr
    live = json.loads(fl.a.exec(["cat", f"{D}/current/.fabdeploy/release.json"]).stdout)["fingerprint"]
    res = fab(fl, "deploy", "--plan")  # (the plan's setup checks the same fingerprint, passwords included)
    assert res.returncode == 0 and live in res.stdout, res.stdout + res.stderr
    new = secrets.token_hex(18)
    fl.db.exec(f"printf '%s' {new} > {PWFILE}")  # (the file's owner and mode kept)
    res = fab(fl, "provision", "-H", fl.db.ssh_target())
    assert res.returncode == 0 and "postgresql-database: changed" in res.stdout, res.stdout + res.stderr
    res = fab(fl, "deploy")
    assert res.returncode == 0 and "already live" not in res.stdout, res.stdout + res.stderr
    for host in (fl.a, fl.b):
        env = host.exec(["cat", f"{D}/shared/config/app.env"]).stdout
        assert f"DATABASE_URL=postgresql://sample:{new}@{fl.db.address}:5432/sample\n" in env
    assert serving(fl)


def test_db_restore_stops_every_app_host_and_restores_once(fl):
    """fab db restore on a fleet: both app hosts stopped (new masters after), the dump loaded once."""
    res = fab(fl, "db", "backup")
    assert res.returncode == 0, res.stdout + res.stderr
    dump_id = re.search(r"db backup ok in \S+: (\S+)\.pgdump\.gz", res.stdout).group(1)
    before = masters(fl)
    res = fab(fl, "db", "restore", "--id", dump_id.split(".")[0] + ".20000101T000000Z", "--yes")
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1 and "no dump " in res.stderr, \
        res.stdout + res.stderr
    assert masters(fl) == before  # (found missing before any host was stopped)
    sql(fl, "UPDATE pages_note SET text = 'changed'")
    res = fab(fl, "db", "restore", "--id", dump_id, "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    restored = re.findall(rf"^(\S+) +restore +database restored from {dump_id}", res.stdout, re.M)
    assert restored == [fl.a.address], res.stdout  # once, on the first app host
    assert all(m != b for m, b in zip(masters(fl), before))  # stopped and started on both hosts
    assert sql(fl, "SELECT text FROM pages_note ORDER BY id").split() == ["from-a", "from-b"]
    assert serving(fl)


def test_a_corrupt_dump_on_the_fleet_changes_nothing_and_every_host_serves_again(fl):
    dump = backups(fl.a)[-1]
    bad = dump.split(".")[0] + ".20000102T000000Z"
    fl.a.exec(f"zcat {BACKUPS}/{dump} | head -c 1500 | gzip > {BACKUPS}/{bad}.pgdump.gz && "
              f"chown deploy: {BACKUPS}/{bad}.pgdump.gz")
    before = masters(fl)
    res = fab(fl, "db", "restore", "--id", bad, "--yes")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "the database was left unchanged, the app was started again" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"{fl.b.address}: db restore ok in " in res.stdout and \
        f"started again (the restore on {fl.a.address} changed nothing)" in res.stdout, res.stdout
    assert all(m != b for m, b in zip(masters(fl), before))  # stopped for the restore, started again
    assert sql(fl, "SELECT text FROM pages_note ORDER BY id").split() == ["from-a", "from-b"]
    assert serving(fl)
    fl.a.exec(f"rm -f {BACKUPS}/{bad}.pgdump.gz")


def test_rollback_restore_db_on_the_fleet_restores_once_and_switches_both(fl):
    """Back past migration 0002: the dump taken before it (on A) is loaded once, both hosts on the old
    release, the column gone, both serving."""
    old = sorted(fl.a.exec(["ls", "-1", f"{D}/releases"]).stdout.split())[0]
    res = fab(fl, "rollback", "--restore-db", "--to", old)  # (the release before is 0002's too: the rotation)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert out.count("database restored from") == 1, out
    for h in (fl.a, fl.b):
        assert h.exec(["readlink", f"{D}/current"]).stdout.strip().endswith(old)
        assert f"{h.address}: rolled back to {old}" in out or f"rolled back to {old}" in out
    assert "field2" not in sql(fl, "SELECT column_name FROM information_schema.columns "
                                   "WHERE table_name = 'pages_note'").split()
    assert sql(fl, "SELECT COUNT(*) FROM django_migrations WHERE name = '0002_field2'") == "0"
    assert serving(fl)


def test_the_passwords_are_in_no_output(fl):
    pw, rpw = password(fl), redis_pw(fl)
    assert fl.outputs and not any(pw in o or rpw in o for o in fl.outputs)
