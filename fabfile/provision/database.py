"""`fab provision` for [database] engine = "postgresql" / "mysql" (host = "local", app hosts only): the server's
packages, its data directory (cluster) created when missing, the server enabled and started, the database
and its user with a generated password.

    step                 PostgreSQL                                  MariaDB / MySQL
    packages (apt)       postgresql (server and client)              mariadb-server mariadb-client
    packages (dnf/yum)   postgresql-server postgresql                mariadb-server mariadb
    <engine>-data        pg_createcluster (apt) / postgresql-setup   mariadb-install-db --user=mysql
                         --initdb (dnf, yum)
    <engine>-server      systemctl enable --now where systemd runs; elsewhere (a container, the test lab)
                         pg_ctlcluster start / pg_ctl start          mariadbd daemonized (its pidfile)
    <engine>-database    role + database owned by it (psql as the    database utf8mb4, user@localhost and
                         postgres user)                              user@127.0.0.1 (mariadb as root)

The password: generated once on the host (hex, 36 characters) into shared/config/database.password (the
deploy user's, 0600), kept on later runs; it goes to the server through a pipe from printf (a shell builtin:
never a command line), the statements' output is discarded (psql would echo a failing line). The database
step's check is a login with that password: a second run reports ok and changes nothing.
"""
from __future__ import annotations

from fabdeploy import database
from fabdeploy.config import Config
from fabdeploy.database import fleet
from fabdeploy.provision import db_host
from fabdeploy.provision.services import SYSTEMD
from fabdeploy.provision.steps import Step
from fabdeploy.remote.shell import q

PG_APT_DATA = "/var/lib/postgresql"
PG_RH_DATA = "/var/lib/pgsql/data"
MYSQL_DATA = "/var/lib/mysql"
MYSQL_RUN = "/run/mysqld"
LOCAL = "127.0.0.1"  # the provision checks log in on the server's host itself
WAIT = 60  # seconds a started server may take to accept connections


def packages(cfg: Config, family: str, role: str = "app") -> list[str]:
    """The server and client packages of the engine on this family of system (none for sqlite); app hosts
    of a fleet with a db host (and with host = "url") get the client only (the dumps)."""
    engine = database.engine(cfg)
    client_only = database.external(cfg) or (role == "app" and fleet.has_db_host(cfg))
    if client_only and engine in database.SERVER_ENGINES:  # the client only: the dumps
        return {("postgresql", True): ["postgresql-client"], ("postgresql", False): ["postgresql"],
                ("mysql", True): ["mariadb-client"], ("mysql", False): ["mariadb"]}[(engine, family == "apt")]
    if engine == "postgresql":
        # (apt: the postgresql metapackage pulls the versioned server and client packages)
        return ["postgresql"] if family == "apt" else ["postgresql-server", "postgresql"]
    if engine == "mysql":
        return ["mariadb-server", "mariadb-client"] if family == "apt" else ["mariadb-server", "mariadb"]
    return []


def steps(cfg: Config, family: str, role: str = "app") -> list[Step]:
    """The steps after the packages (and after the layout: the password file lives in shared/config); none
    for an existing server (host = "url") and on the app hosts of a fleet with a db host; on the db host
    the server is also opened to the app hosts (provision/db_host.py)."""
    engine = database.engine(cfg)
    if database.external(cfg) or role != (fleet.ROLE if fleet.has_db_host(cfg) else "app"):
        return []
    if engine == "postgresql":
        access = [db_host.pg_access_step(cfg, family)] if role == fleet.ROLE else []
        return [pg_data_step(family), pg_server_step(family), *access, pg_database_step(cfg)]
    if engine == "mysql":
        access = [db_host.mysql_access_step(cfg, family)] if role == fleet.ROLE else []
        return [mysql_data_step(), mysql_server_step(), *access, mysql_database_step(cfg, role)]
    return []


def _wait(ready: str, what: str) -> list[str]:
    return [f"i=0; until {ready}; do i=$((i+1)); [ $i -le {WAIT * 2} ] || "
            f"{{ echo {q(what + f' did not accept connections within {WAIT}s')}; exit 1; }}; sleep 0.5; done"]


# -- PostgreSQL -------------------------------------------------------------------------------------------

PG_READY = "pg_isready -q -h /run/postgresql"


def pg_data_step(family: str) -> Step:
    """A cluster with its data directory (Debian: the newest installed version's `main`)."""
    if family == "apt":
        check = ["pg_lsclusters -h 2>/dev/null | awk '{print $6}' | "
                 '{ while read -r d; do [ -f "$d/PG_VERSION" ] && exit 0; done; exit 1; }']
        apply = [f"install -d -o postgres -g postgres -m 755 {PG_APT_DATA}",
                 "v=$(ls /usr/lib/postgresql | sort -V | tail -n 1)",
                 '[ -n "$v" ] || { echo "no PostgreSQL server in /usr/lib/postgresql"; exit 1; }',
                 'pg_createcluster "$v" main']
    else:
        check = [f"[ -f {PG_RH_DATA}/PG_VERSION ]"]
        apply = ["postgresql-setup --initdb"]
    return Step("postgresql-data", check, apply, what="PostgreSQL cluster created")


def pg_server_step(family: str) -> Step:
    """Enabled at boot and started under systemd; elsewhere started with the system's own tool."""
    check = [f"if {SYSTEMD}; then systemctl is-enabled --quiet postgresql && systemctl is-active --quiet postgresql "
             f"&& {PG_READY}; else {PG_READY}; fi"]
    start = ('set -- $(pg_lsclusters -h | head -n 1); pg_ctlcluster "$1" "$2" start' if family == "apt" else
             f"runuser -u postgres -- pg_ctl -D {PG_RH_DATA} -l {PG_RH_DATA}/../fabdeploy-start.log -w start")
    # Debian: postgresql.service is an umbrella; a cluster created since boot is the instance
    # postgresql@<version>-<name> (its unit generated at daemon-reload)
    instance = ('; set -- $(pg_lsclusters -h | head -n 1); systemctl start "postgresql@$1-$2"'
                if family == "apt" else "")
    apply = [f"if {SYSTEMD}; then systemctl daemon-reload; systemctl enable --now postgresql{instance}",
             f"else install -d -o postgres -g postgres -m 2775 /run/postgresql; {start} >/dev/null; fi",
             *_wait(PG_READY, "PostgreSQL")]
    return Step("postgresql-server", check, apply, what="PostgreSQL enabled and started")


def pg_database_step(cfg: Config) -> Step:
    name, user = database.db_name(cfg), database.db_user(cfg)
    role = f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN CREATE ROLE \"{user}\"; " \
           f"END IF; END$$;\nALTER ROLE \"{user}\" LOGIN PASSWORD '"
    db = (f"SELECT 'CREATE DATABASE \"{name}\" OWNER \"{user}\"' WHERE NOT EXISTS "
          f"(SELECT FROM pg_database WHERE datname = '{name}')\\gexec\n"
          f"ALTER DATABASE \"{name}\" OWNER TO \"{user}\";\n")
    psql = "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres"
    login = (f'PGPASSWORD="$(cat "$f" 2>/dev/null)" psql -X -h {LOCAL} -U {q(user)} '
             f"-d {q(name)} -tAc 'SELECT 1' >/dev/null 2>&1")
    apply = [*_password_lines(cfg),
             f"printf '%s' {q(role)} \"$pw\" {q(chr(39) + ';' + chr(10))} | {psql} >/dev/null 2>&1 || "
             f"{{ echo {q(f'creating the role {user} or setting its password failed')}; exit 1; }}",
             f"printf '%s' {q(db)} | {psql}"]
    return Step("postgresql-database", [*_file_check(cfg), login], apply,
                what=f"database {name} and user {user} ready (password in {database.password_file(cfg)})")


# -- MariaDB / MySQL --------------------------------------------------------------------------------------

MYSQL_CLIENT = "$(command -v mariadb || echo mysql)"
MYSQL_READY = "$(command -v mariadb-admin || echo mysqladmin) --silent ping >/dev/null 2>&1"


def mysql_data_step() -> Step:
    apply = [f"install -d -o mysql -g mysql -m 755 {MYSQL_DATA}",
             "$(command -v mariadb-install-db || echo mysql_install_db) --user=mysql "
             f"--datadir={MYSQL_DATA} --skip-test-db"]
    return Step("mysql-data", [f"[ -d {MYSQL_DATA}/mysql ]"], apply, what=f"data directory {MYSQL_DATA} created")


def mysql_server_step() -> Step:
    """systemd: the mariadb unit; elsewhere mariadbd daemonized (setsid, every descriptor redirected), its
    pidfile the config's (/run/mysqld/mysqld.pid)."""
    check = [f"if {SYSTEMD}; then systemctl is-enabled --quiet mariadb && systemctl is-active --quiet mariadb; "
             f"else {MYSQL_READY}; fi"]
    apply = [f"if {SYSTEMD}; then systemctl enable --now mariadb", "else", *mysql_start_lines(), "fi",
             *_wait(MYSQL_READY, "MariaDB")]
    return Step("mysql-server", check, apply, what="MariaDB enabled and started")


def mysql_start_lines() -> list[str]:
    """(no systemd) mariadbd daemonized: setsid, every descriptor redirected."""
    return [f"  install -d -o mysql -g mysql -m 755 {MYSQL_RUN}; install -d -m 2750 -o mysql -g adm /var/log/mysql "
            "2>/dev/null || install -d -o mysql /var/log/mysql",
            "  d=$(command -v mariadbd || command -v mysqld || echo /usr/sbin/mariadbd)",
            '  setsid "$d" --user=mysql </dev/null >>/var/log/mysql/error.log 2>&1 &']


def mysql_database_step(cfg: Config, role: str = "app") -> Step:
    name, user = database.db_name(cfg), database.db_user(cfg)
    segments: list[str | None] = [  # None: the password
        f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;\n"]
    for acct in (f"'{user}'@'{h}'" for h in db_host.mysql_accounts(cfg, role)):
        segments[-1] += f"CREATE USER IF NOT EXISTS {acct} IDENTIFIED BY '"
        segments += [None, f"';\nALTER USER {acct} IDENTIFIED BY '", None,
                     f"';\nGRANT ALL PRIVILEGES ON `{name}`.* TO {acct};\n"]
    words = " ".join('"$pw"' if seg is None else q(seg) for seg in segments)
    login = (f'MYSQL_PWD="$(cat "$f" 2>/dev/null)" {MYSQL_CLIENT} -h {LOCAL} '
             f"-u {q(user)} -D {q(name)} -e 'SELECT 1' >/dev/null 2>&1")
    apply = [*_password_lines(cfg),
             f"printf '%s' {words} | {MYSQL_CLIENT} >/dev/null 2>&1 || "
             f"{{ echo {q(f'creating the database {name} or the user {user} failed')}; exit 1; }}"]
    return Step("mysql-database", [*_file_check(cfg), login], apply,
                what=f"database {name} and user {user} ready (password in {database.password_file(cfg)})")


# -- the password file ------------------------------------------------------------------------------------

def _file_check(cfg: Config) -> list[str]:
    """$f the password file; status 0 when it is there, the deploy user's, 0600."""
    user = cfg.provision.deploy_user
    return [f"f={q(database.password_file(cfg))}", '[ -s "$f" ]',
            f'[ "$(stat -c %U:%a "$f")" = {q(user + ":600")} ]']


def _password_lines(cfg: Config) -> list[str]:
    """$pw: the stored password, generated when there is none (never printed)."""
    user = cfg.provision.deploy_user
    return [f"f={q(database.password_file(cfg))}",
            'if ! [ -s "$f" ]; then (umask 077; head -c 18 /dev/urandom | od -An -tx1 | tr -d " \\n" > "$f.tmp") '
            '&& mv -f "$f.tmp" "$f"; fi',
            f'chown {q(user)}:"$(id -gn {q(user)})" "$f"', 'chmod 600 "$f"', 'pw=$(cat "$f")']
