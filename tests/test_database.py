"""[database]: the config keys and their checks, and the pure builders (provision steps, DATABASE_URL lines,
the backup before migrate, the settings overlay). The real servers: tests/test_database_e2e.py."""
from __future__ import annotations

import hashlib
import re
import subprocess
import tomllib

import pytest

from fabdeploy import appserver, database
from fabdeploy.config import parse_config
from fabdeploy.database import backup
from fabdeploy.errors import ConfigError
from fabdeploy.local.render import render
from fabdeploy.local.wheelhouse import venv_hash
from fabdeploy.model import Release
from fabdeploy.provision import database as pdb
from fabdeploy.provision import run, system
from fabdeploy.steps import code as code_step
from fabdeploy.steps import django_app, venv

BASE = """\
[project]
name = "my-shop.v2"
django_settings = "shop.settings"
wsgi = "shop.wsgi"
[paths]
deploy_to = "/srv/shop"
"""
REL = Release("20260101T000000Z-abcdef1", "abc", "main", "git", "now", "me", "0123456789abcdef")
DEBIAN = system.System("debian", "12", "Debian 12", "apt", 12)
ROCKY = system.System("rocky", "9.3", "Rocky 9", "dnf", 9)


def cfg_of(extra: str = ""):
    return parse_config(tomllib.loads(BASE + extra))


def sh_ok(text: str) -> None:
    res = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_defaults_keep_todays_sqlite_behaviour():
    cfg = cfg_of()
    assert (cfg.database.engine, cfg.database.host, cfg.database.keep_backups) == ("sqlite", "local", 5)
    assert database.requirements(cfg) == [] and database.url_lines(cfg, "/x") == []
    assert database.env_names(cfg) == set()
    # the venv key of a sqlite project is what it was before [database] existed (its venvs are reused)
    h = hashlib.sha256()
    for part in (b"Django", b"", " ".join(appserver.of(cfg).requirements(cfg)).encode(), b"3.11.2", b"python3",
                 b"", b"index"):
        h.update(part + b"\0")
    assert venv_hash(cfg, b"Django", "3.11.2") == h.hexdigest()[:16]
    assert "DATABASE_URL" not in render("settings.py.j2", release_id="R", django_settings="s", shared="/x",
                                        allowed_hosts=[], static_url="/s/", media_url="/m/",
                                        database_engine="sqlite")


def test_names_default_to_the_project_name_as_an_identifier():
    cfg = cfg_of('[database]\nengine = "postgresql"\n')
    assert database.db_name(cfg) == database.db_user(cfg) == "my_shop_v2"
    cfg = cfg_of('[database]\nengine = "mysql"\nname = "shop"\nuser = "shop_app"\n')
    assert (database.db_name(cfg), database.db_user(cfg)) == ("shop", "shop_app")
    assert database.default_ident("2fast") == "db_2fast"


@pytest.mark.parametrize("extra, message", [
    ('[database]\nengine = "oracle"\n', 'database.engine must be "sqlite", "postgresql" or "mysql" (got \'oracle\')'),
    ('[database]\nhost = "db1"\n', 'database.host must be "local"'),
    ('[database]\nname = "my-db"\n', "database.name must be letters, digits or '_'"),
    ('[database]\nkeep_backups = 0\n', "database.keep_backups must be between 1 and 1000"),
    ('[database]\nengine = "postgresql"\n[django]\nenv = { DATABASE_URL = "postgres://x" }\n',
     "django.env.DATABASE_URL: database.engine = \"postgresql\" makes the deploy set DATABASE_URL"),
    ('[database]\nengine = "mysql"\n[secrets]\nDATABASE_URL = { env = "DB" }\n',
     "secrets.DATABASE_URL: database.engine = \"mysql\" makes the deploy set DATABASE_URL"),
])
def test_bad_database_config_is_one_line_naming_the_key(extra, message):
    with pytest.raises(ConfigError) as exc:
        cfg_of(extra)
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("engine, driver", [("postgresql", "psycopg[binary]"), ("mysql", "PyMySQL")])
def test_the_driver_joins_the_venv_and_its_hash(engine, driver):
    cfg = cfg_of(f'[database]\nengine = "{engine}"\n')
    assert driver in venv.venv_install_args(cfg, REL, "/tmp/x")
    assert venv_hash(cfg, b"Django", "3.11.2") != venv_hash(cfg_of(), b"Django", "3.11.2")


def test_database_url_is_built_on_the_host_from_the_password_file():
    cfg = cfg_of('[database]\nengine = "postgresql"\n')
    lines = database.url_lines(cfg, "/srv/shop/shared/config/app.env.fabdeploy-tmp")
    text = "\n".join(lines)
    assert "cat /srv/shop/shared/config/database.password" in text
    assert "DATABASE_URL=postgresql://my_shop_v2:$dbpw@127.0.0.1:5432/my_shop_v2" in text
    assert "run `fab provision` first" in text
    # in the code phase: appended to app.env's temporary file, before it replaces app.env
    phase = "\n".join(code_step.code(cfg, REL).lines)
    assert phase.index("DATABASE_URL=") < phase.index("mv -f /srv/shop/shared/config/app.env.fabdeploy-tmp")
    sh_ok(phase)


def test_the_overlay_sets_databases_default_from_the_url():
    text = render("settings.py.j2", release_id="R", django_settings="s", shared="/x", allowed_hosts=[],
                  static_url="/s/", media_url="/m/", database_engine="postgresql")
    func = re.search(r"^def _fabdeploy_database\(url\):\n(?:    .*\n|\n)+", text, re.M).group(0)
    scope: dict = {}
    exec(func, scope)
    assert scope["_fabdeploy_database"]("postgresql://shop:s3cr%40t@127.0.0.1:5432/shop") == {
        "ENGINE": "django.db.backends.postgresql", "NAME": "shop", "USER": "shop", "PASSWORD": "s3cr@t",
        "HOST": "127.0.0.1", "PORT": "5432"}
    assert 'DATABASES = {**globals().get("DATABASES", {}), "default": _fabdeploy_database(' in text
    mysql = render("settings.py.j2", release_id="R", django_settings="s", shared="/x", allowed_hosts=[],
                   static_url="/s/", media_url="/m/", database_engine="mysql")
    assert "pymysql.install_as_MySQLdb()" in mysql


@pytest.mark.parametrize("engine, apt, dnf", [
    ("postgresql", ["postgresql"], ["postgresql-server", "postgresql"]),
    ("mysql", ["mariadb-server", "mariadb-client"], ["mariadb-server", "mariadb"]),
    ("sqlite", [], []),
])
def test_provision_packages_per_family(engine, apt, dnf):
    cfg = cfg_of(f'[database]\nengine = "{engine}"\n')
    assert pdb.packages(cfg, "apt") == apt and pdb.packages(cfg, "dnf") == dnf == pdb.packages(cfg, "yum")
    names = [s.name for s in run.host_steps(cfg, DEBIAN, ["ssh-ed25519 AAAA k"], "app")]
    if engine == "sqlite":
        assert not [n for n in names if n.startswith(("postgresql", "mysql"))]
    else:  # after the layout (the password file is in shared/config); none on a balancer
        assert names.index(f"{engine}-database") > names.index("layout")
        lb = [s.name for s in run.host_steps(cfg, DEBIAN, ["ssh-ed25519 AAAA k"], "lb")]
        assert not [n for n in lb if n.startswith(engine)]


@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
@pytest.mark.parametrize("sysinfo", [DEBIAN, ROCKY])
def test_provision_scripts_parse_and_never_hold_or_show_the_password(engine, sysinfo):
    cfg = cfg_of(f'[database]\nengine = "{engine}"\n')
    for plan in (False, True):
        text = run.provision_script(cfg, sysinfo, ["ssh-ed25519 AAAA k"], "app", plan, True).text()
        sh_ok(text)
    for line in [ln for st in pdb.steps(cfg, sysinfo.family) for ln in st.apply]:
        if '"$pw"' in line:  # the SQL carrying it: printf (a builtin) into the client, whose output is dropped
            assert line.startswith("printf '%s' ") and ">/dev/null 2>&1 ||" in line
    assert "$pw" not in " ".join(ln for st in pdb.steps(cfg, sysinfo.family) for ln in st.check)


def test_the_password_file_is_generated_once_with_mode_0600(tmp_path):
    """_password_lines run for real on a temporary file (the deploy user: whoever runs the test)."""
    cfg = cfg_of('[database]\nengine = "postgresql"\n')
    me = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    lines = [ln.replace(database.password_file(cfg), str(tmp_path / "pw"))
             for ln in pdb._password_lines(cfg)]
    lines = [ln.replace("chown deploy:\"$(id -gn deploy)\"", f'chown {me}:"$(id -gn {me})"') for ln in lines]
    script = "set -e\n" + "\n".join(lines) + '\nprintf "%s" "$pw" > "$f.seen"\n'
    subprocess.run(["sh", "-c", script], check=True)
    first = (tmp_path / "pw").read_text()
    assert re.fullmatch(r"[0-9a-f]{36}", first) and (tmp_path / "pw.seen").read_text() == first
    assert (tmp_path / "pw").stat().st_mode & 0o777 == 0o600
    subprocess.run(["sh", "-c", script], check=True)
    assert (tmp_path / "pw").read_text() == first  # kept


def test_backup_lines_parse_and_run_before_migrate():
    cfg = cfg_of('[database]\nengine = "postgresql"\nkeep_backups = 3\n')
    text = "\n".join(django_app.django(cfg, REL).lines)
    sh_ok(text)
    import inspect
    from fabdeploy.steps import django_program
    steps = inspect.getsource(django_program.migrate)  # the pending migrations counted, the dump, then migrate
    assert steps.index("migration_plan") < steps.index("dump(") < steps.index('command("migrate"')
    assert "PGPASSWORD" in inspect.getsource(django_program.dump)
    assert '"backup":"/srv/shop/shared/backups/20260101T000000Z-abcdef1"' in text
    assert "/srv/shop/shared/backups/20260101T000000Z-abcdef1.tmp" in text
    cfg = cfg_of("[django]\nmigrate = false\n")
    from test_phases import _boots
    assert [params.get("migrate") for _, params in _boots(django_app.django(cfg, REL).lines)] == [None]


def test_pruning_keeps_the_newest_dumps(tmp_path):
    """prune_lines run for real on a directory of dumps (names sort by release time), other files kept."""
    cfg = cfg_of("[database]\nkeep_backups = 2\n")
    d = tmp_path / "backups"
    d.mkdir()
    names = [f"2026010{i}T000000Z-abcdef{i}.{'sql' if i % 2 else 'sqlite3'}.gz" for i in range(1, 6)]
    for n in [*names, "notes.txt"]:
        (d / n).write_text("x")
    line = backup.prune_lines(cfg)[0].replace(backup.backups_dir(cfg), str(d))
    subprocess.run(["sh", "-c", line], check=True)
    assert sorted(p.name for p in d.iterdir()) == sorted([*names[-2:], "notes.txt"])


URL = '[database]\nengine = "postgresql"\nhost = "url"\n[secrets]\nDATABASE_URL = { env = "SHOP_DB" }\n'


@pytest.mark.parametrize("extra, message", [
    ('[database]\nhost = "url"\n', 'database.host = "url" needs database.engine = "postgresql" or "mysql"'),
    ('[database]\nengine = "mysql"\nhost = "url"\n', 'database.host = "url" needs [secrets] DATABASE_URL = '),
    ('[database]\nengine = "mysql"\nhost = "url"\n[django]\nenv = { DATABASE_URL = "mysql://a:b@c/d" }\n',
     'database.host = "url" needs [secrets] DATABASE_URL'),
])
def test_an_existing_server_needs_its_url_in_secrets(extra, message):
    with pytest.raises(ConfigError) as exc:
        cfg_of(extra)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_an_existing_server_by_url_is_checked_once_resolved_without_showing_it():
    from fabdeploy.local import secrets as local_secrets
    cfg = cfg_of(URL)
    assert database.external(cfg) and database.url_lines(cfg, "/x") == [] and database.env_names(cfg) == set()
    assert database.requirements(cfg) == ["psycopg[binary]"]
    assert pdb.packages(cfg, "apt") == ["postgresql-client"] and pdb.steps(cfg, "apt") == []
    local_secrets.apply(cfg, environ={"SHOP_DB": "postgresql://shop:pw1234@db.internal:5432/shop"})
    assert cfg.secret_env["DATABASE_URL"].startswith("postgresql://")
    for url, problem in [("postgresql://shop@db.internal/shop", "has no password (the user shop needs one)"),
                         ("mysql://shop:hunter22@db.internal/shop", "must start with postgresql://"),
                         ("postgresql://shop:hunter22@db.internal/", "needs a user, a host and a database name"),
                         ("postgresql://shop:hunter22@db.internal:x/shop", "is not a URL like")]:
        with pytest.raises(Exception) as exc:
            local_secrets.apply(cfg_of(URL), environ={"SHOP_DB": url})
        text = str(exc.value)
        assert text.startswith("secrets.DATABASE_URL (env SHOP_DB) ") and problem in text, text
        assert "hunter22" not in text and "\n" not in text


def test_fab_secrets_and_plan_leave_the_host_built_database_url_alone():
    from fabdeploy.ops import plan, secrets as ops_secrets
    cfg = cfg_of('[database]\nengine = "postgresql"\n')
    assert "DATABASE_URL" in ops_secrets.configured(cfg)  # --prune keeps it
    key = "00" * 32
    assert ops_secrets.compare(cfg, {"names": {"DATABASE_URL": "h"}}, key) == [
        ("DATABASE_URL", "set on the host (database password)")]
    on_host = "A='1'\nDATABASE_URL=postgresql://u:p@127.0.0.1:5432/n\n"
    assert plan._host_written(on_host, database.env_names(cfg)) == "A='1'\n"
    assert plan._host_written(on_host, database.env_names(cfg_of())) == on_host
