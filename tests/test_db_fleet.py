"""A fleet's shared db host (roles.db, database/fleet.py): the config checks and the pure builders (provision
steps of the db host and of its app hosts, DATABASE_URL / REDIS_URL pointing at it, migrate once, the
passwords read from it). The real thing: tests/test_db_fleet_e2e.py."""
from __future__ import annotations

import tomllib

import pytest

from fabdeploy import database
from fabdeploy.config import parse_config
from fabdeploy.database import fleet
from fabdeploy.errors import ConfigError, FabdeployError
from fabdeploy.hosts.roles import ALL_ROLES, parse_roles, select
from fabdeploy.model import Release
from fabdeploy.provision import database as pdb
from fabdeploy.provision import db_host, run, system
from fabdeploy.steps import code as code_step
from fabdeploy.steps import django_app

BASE = """\
[project]
name = "shop"
django_settings = "shop.settings"
wsgi = "shop.wsgi"
[paths]
deploy_to = "/srv/shop"
[roles]
app = [{ host = "deploy@web1", address = "10.0.0.11" }, "deploy@web2"]
db = [{ host = "deploy@db1", address = "10.0.0.5" }]
"""
PG = '[database]\nengine = "postgresql"\n'
REL = Release("20260101T000000Z-abcdef1", "abc", "main", "git", "now", "me", "0123456789abcdef")
DEBIAN = system.System("debian", "12", "Debian 12", "apt", 12)


def cfg_of(extra: str = PG, base: str = BASE):
    return parse_config(tomllib.loads(base + extra))


def test_the_db_host_and_the_app_addresses():
    cfg = cfg_of()
    assert fleet.db_server(cfg).target == "deploy@db1" and fleet.address(cfg) == "10.0.0.5"
    assert database.server_address(cfg) == "10.0.0.5"
    assert fleet.app_addresses(cfg) == ["10.0.0.11", "web2"]
    assert fleet.shared(cfg) and fleet.cidr("10.0.0.11") == "10.0.0.11/32" and fleet.cidr("::1") == "::1/128"
    assert fleet.cidr("web2") == "web2"
    no_db = cfg_of(base=BASE.replace('db = [{ host = "deploy@db1", address = "10.0.0.5" }]\n', ""))
    assert database.server_address(no_db) == "127.0.0.1" and not fleet.shared(no_db)


def test_the_db_host_is_only_worked_on_when_asked():
    cfg = cfg_of()
    assert [s.target for s in select(cfg, [])] == ["deploy@web1", "deploy@web2"]  # deploy, status...
    assert [s.role for s in select(cfg, [], ALL_ROLES)] == ["app", "app", "db"]  # provision
    assert [s.role for s in select(cfg, ["deploy@db1"], ALL_ROLES)] == ["db"]
    with pytest.raises(ConfigError, match="unknown role 'db'"):
        parse_roles("db")
    assert parse_roles("db", ALL_ROLES) == ("db",)


@pytest.mark.parametrize("extra,base,message", [
    (PG, BASE.replace('db = [', 'db = ["deploy@db2", '), "roles.db lists 2 hosts: a fleet has one database host"),
    ('[database]\nengine = "postgresql"\nhost = "url"\n[secrets]\nDATABASE_URL = { env = "X" }\n', BASE,
     'roles.db and database.host = "url" both name the database server'),
    ("", BASE, 'roles.db needs database.engine = "postgresql" or "mysql" (or cache.redis = true)'),
    (PG, BASE.replace('address = "10.0.0.5" }', 'address = "10.0.0.5", weight = 2 }'),
     "roles.db deploy@db1: weight, backup"),
    (PG, BASE.replace('db = [{ host = "deploy@db1"', 'db = [{ host = "deploy@web2"'), "host web2 is listed twice"),
])
def test_bad_db_roles_are_one_line(extra, base, message):
    with pytest.raises(ConfigError) as exc:
        cfg_of(extra, base)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_redis_with_several_app_hosts_needs_the_db_host():
    assert cfg_of('[cache]\nredis = true\n').cache.redis  # (one Redis, on the db host)
    with pytest.raises(ConfigError, match="add the fleet's db host"):
        cfg_of('[cache]\nredis = true\n', BASE.replace('db = [{ host = "deploy@db1", address = "10.0.0.5" }]\n', ""))


def names(steps) -> list[str]:
    return [s.name for s in steps]


def test_provision_puts_the_server_on_the_db_host_and_the_client_on_the_app_hosts():
    cfg = cfg_of(PG + '[cache]\nredis = true\n')
    db = run.host_steps(cfg, DEBIAN, [], "db")
    assert names(db) == ["packages", "deploy-user", "deploy-login", "authorized-keys", "app-user", "layout",
                         "postgresql-data", "postgresql-server", "postgresql-access", "postgresql-database",
                         "redis-password", "redis-config", "redis", "db-firewall"]  # no nginx, manager, sudoers
    packages = "\n".join(db[0].check + db[0].apply)
    assert all(p in packages for p in ("postgresql", "redis-server", "nftables"))
    app = run.host_steps(cfg, DEBIAN, [], "app")
    assert not any(n.startswith(("postgresql", "redis")) for n in names(app))
    assert pdb.packages(cfg, "apt", "app") == ["postgresql-client"] and pdb.packages(cfg, "apt", "db") == ["postgresql"]
    script = "\n".join(run.provision_script(cfg, DEBIAN, [], "app", False, True).text().splitlines())
    assert "redis-server" not in script
    conf = next(s for s in db if s.name == "redis-config")
    assert "bind 127.0.0.1 10.0.0.5" in "\n".join(conf.apply)


def test_pg_hba_lines_per_app_host_and_listen_on_the_db_address():
    cfg = cfg_of()
    assert db_host.hba_block(cfg).splitlines() == [
        "# BEGIN fabdeploy shop (the app hosts of the fleet; managed by fab provision)",
        "host shop shop 10.0.0.11/32 scram-sha-256", "host shop shop web2 scram-sha-256", "# END fabdeploy shop"]
    step = db_host.pg_access_step(cfg, "apt")
    assert "localhost,10.0.0.5" in "\n".join(step.check) and "pg_ctlcluster" in "\n".join(step.apply)
    login = "\n".join(pdb.pg_database_step(cfg).check)
    assert "-h 127.0.0.1" in login  # the db host checks its own login locally (its address is for the apps)


def test_mysql_users_at_each_app_address_on_the_db_host():
    cfg = cfg_of('[database]\nengine = "mysql"\n')
    text = "\n".join(pdb.mysql_database_step(cfg, "db").apply)
    assert text.count("CREATE USER IF NOT EXISTS") == 4 and text.count("GRANT ALL PRIVILEGES") == 4
    assert "10.0.0.11" in text and "web2" in text
    assert db_host.mysql_accounts(cfg, "db") == ["localhost", "127.0.0.1", "10.0.0.11", "web2"]
    assert "10.0.0.11" not in "\n".join(pdb.mysql_database_step(cfg, "app").apply)


def test_mariadb_on_the_db_host_listens_on_its_address_by_a_drop_in():
    import subprocess
    cfg = cfg_of('[database]\nengine = "mysql"\n')
    names = [s.name for s in pdb.steps(cfg, "apt", "db")]
    assert names == ["mysql-data", "mysql-server", "mysql-access", "mysql-database"]
    assert "mysql-access" not in [s.name for s in pdb.steps(cfg, "apt", "app")]
    assert db_host.mysql_cnf(cfg, "127.0.0.1,10.0.0.5").endswith("[mysqld]\nbind-address = 127.0.0.1,10.0.0.5")
    for family, path in (("apt", "/etc/mysql/mariadb.conf.d/70-fabdeploy.cnf"), ("dnf", "/etc/my.cnf.d/fabdeploy.cnf")):
        step = db_host.mysql_access_step(cfg, family)
        assert path in "\n".join(step.apply) and "SELECT @@bind_address" in "\n".join(step.check)
        for text in (step.check, step.apply):
            assert subprocess.run(["sh", "-n"], input="\n".join(text), text=True).returncode == 0


def test_the_bind_address_is_a_list_only_where_the_server_takes_one(tmp_path):
    """MariaDB 10.11+ and MySQL 8 take `127.0.0.1,<address>`; the 10.3-10.6 of RHEL 8/9 and Ubuntu 22.04
    would not start with a list: the db address alone (local tools use the socket)."""
    import subprocess
    cfg = cfg_of('[database]\nengine = "mysql"\n')
    fake = tmp_path / "mariadbd"
    for version, want in (("10.11.6-MariaDB-0+deb12u1", "127.0.0.1,10.0.0.5"), ("10.5.22-MariaDB", "10.0.0.5"),
                          ("10.3.39-MariaDB", "10.0.0.5"), ("8.0.36", "127.0.0.1,10.0.0.5"), ("", "10.0.0.5")):
        fake.write_text(f"#!/bin/sh\necho '/usr/sbin/mariadbd  Ver {version} for debian-linux-gnu on x86_64'\n"
                        if version else "#!/bin/sh\necho 'mariadbd: unknown option'\n")
        fake.chmod(0o755)
        script = "\n".join([*db_host.mysql_bind_lines(cfg), 'printf %s "$bind"'])
        out = subprocess.run(["/bin/sh", "-c", script], env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
                             capture_output=True, text=True).stdout
        assert out == want, version


def test_the_app_hosts_urls_point_at_the_db_host():
    cfg = cfg_of(PG + '[cache]\nredis = true\n')
    text = "\n".join(code_step.env_file_lines(cfg, "/srv/shop/shared/config/app.env"))
    assert "postgresql://shop:$dbpw@10.0.0.5:5432/shop" in text
    assert "redis://:$pw@10.0.0.5:6379/0" in text


def test_the_passwords_are_written_masked_and_migrate_runs_on_one_host():
    cfg = cfg_of()
    phase = code_step.code(cfg, REL, None, {"database.password": "s3cr3tvalue"})
    text = "\n".join(phase.lines)
    assert "(umask 177; cat > /srv/shop/shared/config/database.password.fabdeploy-tmp)" in text  # (0600)
    assert text.index("database.password.fabdeploy-tmp") < text.index("dbpw=$(cat")
    from test_phases import _boots
    assert any("migrate" in params for _, params in _boots(django_app.django(cfg, REL).lines))
    skipped = "\n".join(django_app.django(cfg, REL, migrate=False).lines)
    assert not any("migrate" in params for _, params in _boots(skipped.splitlines()))
    assert "done once for the fleet's shared database" in skipped


def test_reading_the_passwords_from_the_db_host():
    cfg = cfg_of(PG + '[cache]\nredis = true\n')
    text = fleet.read_script(cfg).text()
    assert "/srv/shop/shared/config/database.password" in text and "/srv/shop/shared/config/redis.password" in text
    assert fleet.parse({"database": "ab12", "redis": "cd34"}, cfg, "db1") == \
        {"database.password": "ab12", "redis.password": "cd34"}
    with pytest.raises(FabdeployError, match="db1: shared/config/redis.password on the db host is empty"):
        fleet.parse({"database": "ab12"}, cfg, "db1")


def test_the_db_hosts_firewall_opens_its_ports_to_the_app_hosts_only():
    cfg = cfg_of(PG + '[cache]\nredis = true\n')
    table, script = db_host.firewall_table(cfg)
    assert table == "fabdeploy_db_shop"
    assert "tcp dport { 5432, 6379 } ip saddr { 10.0.0.11, web2 } accept" in script
    assert script.splitlines()[-3].strip() == "tcp dport { 5432, 6379 } reject with tcp reset"
    assert "db-firewall" in names(run.host_steps(cfg, DEBIAN, [], "db"))
    off = cfg_of(PG + '[balancer]\nfirewall = "off"\n')
    assert db_host.firewall_steps(off) == [] and "db-firewall" not in names(run.host_steps(off, DEBIAN, [], "db"))


def test_the_coordinated_restore_scripts_parse_and_keep_the_lock_between_stages():
    """ops/db_fleet.py: stage 1 takes the lock and stops (no finish: the lock is kept), stage 3 keeps the lock
    fresh first and releases it last; a partial restore only releases it (the app stays stopped)."""
    import subprocess
    from fabdeploy.hosts.target import Target
    from fabdeploy.ops import db_fleet
    from fabdeploy.steps.lock import LockOwner
    c = cfg_of()
    owner = LockOwner.new("db-restore", "me")
    stop = db_fleet.stop_script(c, owner, 0, [])
    start = db_fleet.start_script(c, owner, Target.named(c, "web1"))
    release = db_fleet.release_script(c, owner, "left stopped")
    assert [p.name for p in stop.phases] == ["lock", "stop"]
    assert [p.name for p in start.phases][0] == "start" and start.phases[-1].name == "finish"
    assert "touch -c" in start.phases[0].lines[0]  # (keep_alive: the lock taken in stage 1 kept fresh)
    assert [p.name for p in release.phases] == ["finish"]
    for s in (stop, start, release):
        res = subprocess.run(["sh", "-n"], input=s.text(), capture_output=True, text=True)
        assert res.returncode == 0, res.stderr


def test_a_rotated_db_password_changes_the_already_live_fingerprint():
    """The db host's passwords (read before setup) are part of the fingerprint: a new one, a real deploy."""
    from fabdeploy.steps import live_check
    c = cfg_of()
    fp = [live_check.fingerprint(c, "abc", b"django\n", None, fleet.digest(c, pw))
          for pw in ({"database.password": "old"}, {"database.password": "new"}, {"database.password": "old"})]
    assert fp[0] != fp[1] and fp[0] == fp[2]
    assert fleet.digest(c, {}) == "" and "old" not in fleet.digest(c, {"database.password": "old"})
    assert live_check.fingerprint(c, "abc", b"django\n", None, "") == live_check.fingerprint(c, "abc", b"django\n")
