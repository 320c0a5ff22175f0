"""Value checks of deploy.toml: each returns None for a good value or the end of a one-line message.

SCHEMA (fabdeploy.config.schema) is built from these; parse_config adds " (got ...)" and the key's name.
The cross-key checks of [roles] (_check_roles) raise ConfigError themselves.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Callable

from fabdeploy.errors import ConfigError

_LISTEN = re.compile(r"^([0-9]{1,5}|[A-Za-z0-9.\-]+:[0-9]{1,5}|\[[0-9A-Fa-f:]+\]:[0-9]{1,5})$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9_.*~^$\\()|:\[\]?+-]+$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOST = re.compile(r"^([A-Za-z0-9._-]+@)?([A-Za-z0-9._-]+|\[[0-9A-Fa-f:]+\])(:[0-9]{1,5})?$")


def _str(pattern=None, what="", empty_ok=True):
    def check(value):
        if not isinstance(value, str):
            return "must be a string"
        if value == "" and empty_ok:
            return None
        if pattern is not None and not pattern.match(value):
            return f"must be {what}"
        return None
    return check


def _int(lo, hi):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be an integer"
        if not lo <= value <= hi:
            return f"must be between {lo} and {hi}"
        return None
    return check


def _bool(value):
    return None if isinstance(value, bool) else "must be true or false"


def _list(item_check, what="strings"):
    def check(value):
        if not isinstance(value, list):
            return f"must be a list of {what}"
        for i, item in enumerate(value):
            problem = item_check(item)
            if problem:
                return f"item {i + 1} ({item!r}) {problem}"
        return None
    return check


# Environment names fabdeploy sets itself (the production settings module, the release) or that would
# change which Python code runs (manage.py and uWSGI read the same file).
RESERVED_ENV = ("DJANGO_SETTINGS_MODULE", "FABDEPLOY_RELEASE", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
                "VIRTUAL_ENV", "PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "SECRET_KEY", "DJANGO_SECRET_KEY")


def _env(value):
    if not isinstance(value, dict):
        return "must be a table of NAME = \"value\""
    for key, item in value.items():
        if not _ENV_KEY.match(key):
            return f"has an invalid variable name {key!r}"
        if key in RESERVED_ENV or key.startswith("FABDEPLOY_"):
            why = ("fabdeploy sets it to its production settings module (put your settings in "
                   "project.django_settings)" if key == "DJANGO_SETTINGS_MODULE" else
                   "the production settings always take SECRET_KEY from shared/secret_key, one key for every "
                   "app host (an env value would be ignored, or half-used by project code)"
                   if key in ("SECRET_KEY", "DJANGO_SECRET_KEY") else
                   "fabdeploy sets it" if key.startswith("FABDEPLOY_") else
                   "it changes which Python code the app and manage.py run")
            return f"must not set {key}: {why}"
        if not isinstance(item, str):
            return f"{key} must be a string"
        if "\n" in item or "\r" in item or "\0" in item:
            return f"{key} must be a single line"
        for bad in ("$(", "@(", "%("):
            if bad in item:
                return f"{key} must not contain {bad!r} (uWSGI would expand it)"
        if item != item.rstrip(" \t"):
            return f"{key} must not end with whitespace (uWSGI strips it)"
    return None


def _hook_commands(value):
    """A hook: shell commands for every host where the phase runs, or a table of them per role."""
    commands = _list(_str(None, empty_ok=False), "shell commands")
    if isinstance(value, dict):
        for role, item in value.items():
            if role not in ("app", "lb"):
                return f"has an unknown role {role!r} (roles are: app, lb)"
            problem = commands(item)
            if problem:
                return f"{role} {problem}"
        return None
    problem = commands(value)
    return problem and problem.replace("must be a list of shell commands",
                                       "must be a list of shell commands, or a table of them per role (app, lb)")


def _app_server(value):
    """[app] server: one of the app servers registered in fabdeploy.appserver (imported when checked: the
    app servers' modules import this package)."""
    from fabdeploy.appserver import SERVERS
    if value in SERVERS:
        return None
    return "must be " + " or ".join(f'"{name}"' for name in SERVERS)


def _app_manager(value):
    """[app] manager: one of the process managers registered in fabdeploy.manager."""
    from fabdeploy.manager import MANAGERS
    if value in MANAGERS:
        return None
    return "must be " + " or ".join(f'"{name}"' for name in MANAGERS)


def check_app(data: dict, where: str) -> None:
    """[app]: the chosen server's interface agrees with app.asgi (required by the ASGI-only servers, refused
    by the WSGI-only ones)."""
    from fabdeploy.appserver import SERVERS
    server = SERVERS[data["app"]["server"]]
    if server.interface == "asgi" and not data["app"]["asgi"]:
        raise ConfigError(f'{where}app.asgi is required with app.server = "{server.name}" ({server.title} runs '
                          'ASGI applications: app.asgi = "mysite.asgi:application")')
    if server.interface == "wsgi" and data["app"]["asgi"]:
        asgi = " or ".join(f'"{s.name}"' for s in SERVERS.values() if s.interface != "wsgi")
        raise ConfigError(f'{where}app.asgi is set but app.server = "{server.name}" runs WSGI only (project.wsgi); '
                          f"choose app.server = {asgi}")


def check_cache(data: dict, where: str) -> None:
    """[cache]: sessions need the Redis cache; one app host (each app host runs its own Redis, bound to
    127.0.0.1: a cache per host, so sessions would be lost between the hosts of a fleet). With redis on, the
    `redis` package joins pip.packages (the virtualenv and its hash) unless listed already."""
    cache = data["cache"]
    if cache["sessions"] and not cache["redis"]:
        raise ConfigError(f"{where}cache.sessions = true needs cache.redis = true (sessions are kept in the cache)")
    if not cache["redis"]:
        return
    apps = data["roles"]["app"] or data["project"]["hosts"]
    if len(apps) > 1 and not data["roles"]["db"]:  # (roles.db: one Redis on the db host, shared)
        raise ConfigError(f"{where}cache.redis = true with {len(apps)} app hosts: each would have its own Redis "
                          "on 127.0.0.1 (not shared); add the fleet's db host (roles.db), which runs one Redis for all")
    packages = data["pip"]["packages"]
    if not any(re.match(r"^redis\b(?![-_.])", p.strip(), re.I) for p in packages):
        data["pip"]["packages"] = [*packages, "redis"]


def _listen(value):
    if isinstance(value, bool):
        return "must be a port number or \"address:port\""
    if isinstance(value, int):
        return None if 1 <= value <= 65535 else "must be a port between 1 and 65535"
    if isinstance(value, str) and _LISTEN.match(value):
        return None
    return "must be a port number or \"address:port\""


def _server_names(value):
    if isinstance(value, str) and value.split() and all(_SERVER_NAME.match(p) for p in value.split()):
        if any(p.endswith("\\") for p in value.split()):
            return "must not end a name with a backslash (it would escape nginx's ';')"
        return None
    return "must be server names separated by spaces"


def _options(value):
    if not isinstance(value, dict):
        return "must be a table of option = value"
    for key, item in value.items():
        if not re.match(r"^[a-z0-9-]+$", key):
            return f"has an invalid option name {key!r}"
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            return f"{key} must be a string or an integer"
        if isinstance(item, str) and ("\n" in item or "\r" in item):
            return f"{key} must be a single line"
    return None


def _statuses(value):
    """health.status: a list of HTTP codes; the old single integer (0 = the default rule, N = [N]) still works."""
    if isinstance(value, int) and not isinstance(value, bool):
        return None if value == 0 or 100 <= value <= 599 else "must be a list of HTTP status codes like [200, 302]"
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599
                                       for v in value):
        return None
    return "must be a list of HTTP status codes like [200, 302]"


def check_rolling(value):
    if isinstance(value, bool):
        return "must be a number of hosts or a percentage like \"30%\""
    if isinstance(value, int):
        return None if 0 <= value <= 10000 else "must be between 0 and 10000"
    if isinstance(value, str) and re.fullmatch(r"([1-9][0-9]?|100)%", value):
        return None
    return "must be a number of hosts or a percentage like \"30%\""


# Per-host settings of a role entry: { host = "deploy@web1", weight = 2, ... }
SERVER_KEYS: dict[str, Callable[[Any], str | None]] = {
    "host": _str(_HOST, "[user@]host[:port]", empty_ok=False),
    "address": _str(re.compile(r"^([A-Za-z0-9._-]+|\[[0-9A-Fa-f:]+\]|[0-9A-Fa-f:]*:[0-9A-Fa-f:]*)$"),
                    "a host name or IP address"),
    "weight": _int(1, 1000),
    "backup": _bool,
    "max_fails": _int(0, 1000),
    "fail_timeout": _int(1, 3600),
}


def _servers(value):
    if not isinstance(value, list):
        return "must be a list of \"user@host\" or { host = \"user@host\", weight = 2, ... }"
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {"host": item}
        if not isinstance(item, dict):
            return f"item {i + 1} must be \"user@host\" or an inline table {{ host = ... }}"
        if "host" not in item:
            return f"item {i + 1} has no host"
        for key, val in item.items():
            if key not in SERVER_KEYS:
                return f"item {i + 1} has an unknown key {key!r}{_suggest(key, SERVER_KEYS)}"
            problem = SERVER_KEYS[key](val)
            if problem:
                return f"item {i + 1} ({item['host']}) {key} {problem} (got {val!r})"
    return None


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def host_name(target: str) -> str:
    """The host of "[user@]host[:port]" ("[::1]" -> "::1")."""
    host = target.rsplit("@", 1)[-1]
    if host.startswith("["):
        return host[1:host.index("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _check_roles(data: dict, where: str) -> None:
    roles, hosts = data["roles"], data["project"]["hosts"]
    if (roles["app"] or roles["lb"]) and hosts:
        raise ConfigError(f"{where}project.hosts and [roles] both list hosts: use one (project.hosts = app hosts "
                          "that each serve themselves with their own nginx)")
    if roles["lb"] and not roles["app"]:
        raise ConfigError(f"{where}roles.lb needs app hosts to balance: roles.app is empty")
    seen = {}
    for role in ("app", "lb", "db"):
        for item in roles[role]:
            host = item if isinstance(item, str) else item["host"]
            name = host_name(host)
            if name in seen:
                raise ConfigError(f"{where}host {name} is listed twice (roles.{seen[name]} and roles.{role}); "
                                  "a host has one role")
            seen[name] = role
            if role != "app" and isinstance(item, dict) and set(item) - {"host", "address"}:
                raise ConfigError(f"{where}roles.{role} {host}: weight, backup, max_fails, fail_timeout are settings "
                                  "of app hosts")
    port = data["balancer"]["port"]
    ssh_ports = {22} | {int(t.rsplit(":", 1)[1]) for t in _role_targets(roles) if re.search(r":[0-9]+$", t)}
    if roles["lb"] and port in ssh_ports:
        raise ConfigError(f"{where}balancer.port = {port} is an SSH port of these hosts: the app hosts' firewall "
                          "would cut SSH off; pick another port for uWSGI")
    method = data["balancer"]["method"]
    if method in ("ip_hash", "hash") and any(isinstance(i, dict) and i.get("backup") for i in roles["app"]):
        raise ConfigError(f"{where}roles.app: backup servers cannot be used with balancer.method = \"{method}\" "
                          "(nginx refuses it)")


def _role_targets(roles: dict) -> list[str]:
    return [item if isinstance(item, str) else item["host"] for role in ("app", "lb") for item in roles[role]]


def check_database(data: dict, where: str) -> None:
    """[database]: host = "url" needs a server engine and [secrets] DATABASE_URL; with host = "local",
    DATABASE_URL is the deploy's (built on the host from its stored password): neither [django] env nor
    [secrets] may set it too (a literal [django] env one never)."""
    engine, host = data["database"]["engine"], data["database"]["host"]
    if host == "url":
        if engine == "sqlite":
            raise ConfigError(f'{where}database.host = "url" needs database.engine = "postgresql" or "mysql"')
        if "DATABASE_URL" not in data.get("secrets", {}):
            raise ConfigError(f'{where}database.host = "url" needs [secrets] DATABASE_URL = {{ env = "DATABASE_URL" }} '
                              "(the server's URL with its password: never in deploy.toml)")
    if engine == "sqlite":
        return
    for section in ("django", "secrets") if host == "local" else ("django",):
        names = data[section]["env"] if section == "django" else data.get("secrets", {})
        if "DATABASE_URL" in names:
            what = "django.env" if section == "django" else "secrets"
            raise ConfigError(f'{where}{what}.DATABASE_URL: database.engine = "{engine}" makes the deploy set '
                              "DATABASE_URL from the password fab provision stored on the host; remove it here")
