"""[database] (issue 14): which database the app uses and how the deploy connects it.

engine = "sqlite" (the default: the project's own DATABASES, its SQLite file kept in shared/db) or
"postgresql" / "mysql" (MariaDB or MySQL) on the app host itself (host = "local"): `fab provision` installs
the server and creates the database and its user with a generated password, stored on the host only in
shared/config/database.password (deploy user, 0600). Each deploy writes DATABASE_URL, built on the host from
that file, into shared/config/app.env; the generated settings overlay turns it into DATABASES['default'].
The password never reaches the deploying machine, deploy.toml or any output.

The driver goes into the virtualenv (and so into its hash): psycopg[binary] for PostgreSQL, PyMySQL for
MySQL (pure Python, no compiler or client headers; the overlay calls pymysql.install_as_MySQLdb()).

host = "url": an existing server, its URL with the password from [secrets] DATABASE_URL (checked once
resolved: scheme, user, host, name, a password); provision installs only the client (pg_dump / mariadb-dump).

Fleets: a `db` role host (roles.db) runs the one server the app hosts share (database/fleet.py);
`server_address()` names it (else the app host itself, 127.0.0.1).
"""
from __future__ import annotations

import re

from fabdeploy.config import Config
from fabdeploy.hosts.layout import Layout
from fabdeploy.remote.markers import fail
from fabdeploy.remote.shell import q

ENGINES = ("sqlite", "postgresql", "mysql")
SERVER_ENGINES = ("postgresql", "mysql")
PORTS = {"postgresql": 5432, "mysql": 3306}
DRIVERS = {"postgresql": ["psycopg[binary]"], "mysql": ["PyMySQL"]}
URL_NAME = "DATABASE_URL"  # the environment variable the app gets
PASSWORD_FILE = "database.password"  # in shared/config
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")  # database and user names: no quoting needed anywhere


def engine(cfg: Config) -> str:
    return cfg.database.engine


def external(cfg: Config) -> bool:
    """host = "url": an existing server; its URL, password included, is [secrets] DATABASE_URL (nothing of
    it in deploy.toml); provision installs only the client (for the dumps) and creates nothing."""
    return cfg.database.host == "url"


def check_url(cfg: Config, url: str) -> str | None:
    """The end of a one-line message when [secrets] DATABASE_URL does not fit the engine (never quoting the
    value: it holds the password), else None."""
    from urllib.parse import urlsplit
    schemes = {"postgresql": ("postgresql", "postgres"), "mysql": ("mysql",)}[engine(cfg)]
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        return "is not a URL like " + _EXAMPLE[engine(cfg)]
    if parts.scheme not in schemes:
        return f"must start with {schemes[0]}:// (database.engine = \"{engine(cfg)}\")"
    if not parts.username or not parts.hostname or not parts.path.strip("/"):
        return "needs a user, a host and a database name: " + _EXAMPLE[engine(cfg)]
    if not parts.password:
        return f"has no password (the user {parts.username} needs one): " + _EXAMPLE[engine(cfg)]
    return None


_EXAMPLE = {"postgresql": "postgresql://USER:PASSWORD@HOST:5432/NAME", "mysql": "mysql://USER:PASSWORD@HOST:3306/NAME"}


def uses_server(cfg: Config) -> bool:
    """postgresql or mysql: a server, a password, DATABASE_URL (sqlite: none of it)."""
    return engine(cfg) in SERVER_ENGINES


def default_ident(project: str) -> str:
    """The project name as a database identifier ("my-app.v2" -> "my_app_v2")."""
    out = re.sub(r"[^A-Za-z0-9_]", "_", project)[:63]
    return out if re.match(r"^[A-Za-z_]", out) else ("db_" + out)[:63]


def db_name(cfg: Config) -> str:
    return cfg.database.name or default_ident(cfg.project.name)


def db_user(cfg: Config) -> str:
    return cfg.database.user or default_ident(cfg.project.name)


def server_address(cfg: Config) -> str:
    """Where the app reaches the server: host = "local" is the app host itself; a fleet's db host (roles.db)
    its address (database/fleet.py)."""
    from fabdeploy.database import fleet
    return fleet.address(cfg)


def password_file(cfg: Config) -> str:
    return f"{Layout(cfg.paths.deploy_to).config}/{PASSWORD_FILE}"


def requirements(cfg: Config) -> list[str]:
    """The driver the engine needs in the virtualenv (part of its hash); none for sqlite."""
    return list(DRIVERS.get(engine(cfg), []))


def env_names(cfg: Config) -> set[str]:
    """Names of app.env the deploy writes from the host's own files (not from [django] env or [secrets])."""
    return {URL_NAME} if uses_server(cfg) and not external(cfg) else set()


def url_lines(cfg: Config, env: str) -> list[str]:
    """(code phase) DATABASE_URL appended to `env` (app.env's temporary file), the password read on the host
    from shared/config/database.password: the script holds `$dbpw`, never the value. A missing file stops the
    deploy with one line."""
    if not uses_server(cfg) or external(cfg):  # (host = "url": DATABASE_URL comes from [secrets])
        return []
    pw = password_file(cfg)
    url = (f"{engine(cfg)}://{db_user(cfg)}:$dbpw@{server_address(cfg)}:{PORTS[engine(cfg)]}/{db_name(cfg)}")
    return [
        f"dbpw=$(cat {q(pw)} 2>/dev/null) && [ -n \"$dbpw\" ] || "
        + fail(f"{pw} is missing: run `fab provision` first (database.engine = \"{engine(cfg)}\" creates the "
               "database, its user and that password file)"),
        f'printf "%s\\n" "{URL_NAME}={url}" >> {q(env)}',
        "unset dbpw",
    ]
