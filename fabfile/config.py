"""Load and validate deploy.toml.

Every key lives in SCHEMA with its type, default and check; deploy.example.toml documents the same keys.
Validation happens before any SSH connection and fails with one line naming the key.
"""
from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote

from fabdeploy.errors import ConfigError

CONFIG_ENV = "FABDEPLOY_CONFIG"
DEFAULT_CONFIG = "deploy.toml"

PHASES = ("setup", "code", "venv", "django", "config", "switch", "restart", "cleanup")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_WSGI = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*)?$")
# Paths and names that end up in nginx/uWSGI config files, which have no quoting: keep them plain.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/@+-]*$")
_REL_PATH = re.compile(r"^[A-Za-z0-9._@+-][A-Za-z0-9._/@+-]*$")
_SIZE = re.compile(r"^[0-9]+[kKmMgG]?$")
_LISTEN = re.compile(r"^([0-9]{1,5}|[A-Za-z0-9.\-]+:[0-9]{1,5}|\[[0-9A-Fa-f:]+\]:[0-9]{1,5})$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9_.*~^$\\()|:\[\]?+-]+$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_URL_PATH = re.compile(r"^/[A-Za-z0-9._/-]*/$")
_HOST = re.compile(r"^([A-Za-z0-9._-]+@)?([A-Za-z0-9._-]+|\[[0-9A-Fa-f:]+\])(:[0-9]{1,5})?$")
BALANCE_METHODS = ("round_robin", "least_conn", "ip_hash", "hash")
MIN_SECRET_LEN = 4  # [django] env values this long or longer are masked in everything printed ...
NEVER_SECRET = ("true", "false", "none", "null")  # ... except these words (masking them hides unrelated text)


def url_userinfo(url: str) -> str:
    """The "user:password" (or token) part of scheme://userinfo@host/..., or ""."""
    m = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/@]+)@", url or "")
    return m.group(1) if m else ""


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
    app servers' modules import this one)."""
    from fabdeploy.appserver import SERVERS
    if value in SERVERS:
        return None
    return "must be " + " or ".join(f'"{name}"' for name in SERVERS)


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


@dataclass(frozen=True)
class Key:
    default: Any
    check: Callable[[Any], str | None]
    required: bool = False


SCHEMA: dict[str, dict[str, Key]] = {
    "project": {
        "name": Key(None, _str(_NAME, "letters, digits, '.', '_' or '-'", empty_ok=False), required=True),
        "source": Key(".", _str(None)),
        "revision": Key("HEAD", _str(re.compile(r"^[^\s;`$]+$"), "a git revision")),
        "django_settings": Key(None, _str(_DOTTED, "a dotted module path", empty_ok=False), required=True),
        "wsgi": Key(None, _str(_WSGI, "\"module.path:callable\"", empty_ok=False), required=True),
        "requirements": Key("requirements.txt", _str(_REL_PATH, "a relative path inside source")),
        "manage": Key("manage.py", _str(_REL_PATH, "a relative path inside source", False)),
        "hosts": Key([], _list(_str(_HOST, "[user@]host[:port]", empty_ok=False))),
        "python": Key("python3", _str(re.compile(r"^[A-Za-z0-9._/+-]+$"), "an interpreter name or path", False)),
        "exclude": Key([], _list(_str(None, empty_ok=False))),
    },
    "django": {
        "allowed_hosts": Key([], _list(_str(re.compile(r"^[^\s'\"\\]+$"), "a host name", False))),
        "env": Key({}, _env),
        "static_url": Key("/static/", _str(_URL_PATH, "a URL path like /static/", False)),
        "media_url": Key("/media/", _str(_URL_PATH, "a URL path like /media/", False)),
        "migrate": Key(True, _bool),
        "collectstatic": Key(True, _bool),
        "check_deploy": Key(True, _bool),
    },
    "paths": {
        "deploy_to": Key(None, _str(_SAFE_PATH, "an absolute path of plain characters", False), required=True),
        "keep_releases": Key(5, _int(1, 1000)),
        "shared_dirs": Key(["media"], _list(_str(_REL_PATH, "a relative path", False))),
    },
    "app": {
        "server": Key("uwsgi", lambda v: _app_server(v)),
    },
    "uwsgi": {
        "processes": Key(4, _int(1, 1024)),
        "threads": Key(2, _int(1, 1024)),
        "max_requests": Key(5000, _int(0, 10_000_000)),
        "harakiri": Key(30, _int(0, 86400)),
        "buffer_size": Key(32768, _int(4096, 65535)),
        "package": Key("uwsgi", _str(re.compile(r"^[A-Za-z0-9._\-\[\]<>=!~,]+$"), "a pip requirement", False)),
        "reload_timeout": Key(60, _int(1, 3600)),
        "listen": Key(1024, _int(16, 65535)),
        "options": Key({}, _options),
    },
    "nginx": {
        "server_name": Key("_", _server_names),
        "listen": Key(80, _listen),
        "client_max_body_size": Key("75M", _str(_SIZE, "a size like 75M", False)),
        "user": Key("", _str(re.compile(r"^[a-z_][a-z0-9_-]*$"), "a user name")),
        "layout": Key("auto", lambda v: None if v in ("auto", "sites", "conf.d") else
                      "must be \"auto\", \"sites\" or \"conf.d\""),
        "template": Key("", _str(None)),
        "static_expires": Key("30d", _str(re.compile(r"^(off|max|[0-9]+[smhdwMy]?)$"), "like 30d, max or off", False)),
    },
    "pip": {
        "index_url": Key("", _str(re.compile(r"^(https?|file)://\S+$"), "an http(s) or file URL")),
        "wheelhouse": Key(False, _bool),
        "packages": Key([], _list(_str(re.compile(r"^[A-Za-z0-9._\-\[\]<>=!~,;: ]+$"), "a pip requirement", False))),
        "wheel_python": Key("", _str(re.compile(r"^\S+$"), "an interpreter name or path")),
        "timeout": Key(1800, _int(10, 86400)),
    },
    "ssh": {
        "strict_host_keys": Key(True, _bool),
        "known_hosts": Key("", _str(None)),
        "identity_file": Key("", _str(None)),
        "connect_timeout": Key(15, _int(1, 600)),
    },
    "health": {
        "path": Key("/", _str(re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@/?%-]*$"), "a URL path like /health", False)),
        "status": Key([], _statuses),
        "timeout": Key(15, _int(1, 600)),
        "revert": Key(True, _bool),
    },
    "lock": {
        "ttl": Key(3600, _int(10, 7 * 86400)),
        "wait": Key(0, _int(0, 86400)),
    },
    "fleet": {
        "parallel": Key(10, _int(1, 1000)),
        "rolling": Key(0, check_rolling),
    },
    "roles": {
        "app": Key([], _servers),
        "lb": Key([], _servers),
    },
    "balancer": {
        "method": Key("round_robin", lambda v: None if v in BALANCE_METHODS else
                      "must be one of " + ", ".join(f'"{m}"' for m in BALANCE_METHODS)),
        "hash_key": Key("$request_uri", _str(re.compile(r"^[$A-Za-z0-9_]+$"), "an nginx variable like $request_uri", False)),
        "hash_consistent": Key(True, _bool),
        "keepalive": Key(0, _int(0, 10000)),
        "port": Key(8001, _int(1, 65535)),
        "bind": Key("", _str(re.compile(r"^([0-9.]+|\[[0-9A-Fa-f:]+\])$"), "an IP address")),
        "app_nginx": Key(False, _bool),
        "media": Key("app", lambda v: None if v in ("app", "lb") else "must be \"app\" or \"lb\""),
        "max_fails": Key(1, _int(0, 1000)),
        "fail_timeout": Key(10, _int(1, 3600)),
        "firewall": Key("auto", lambda v: None if v in ("auto", "nftables", "off") else
                        "must be \"auto\", \"nftables\" or \"off\""),
    },
    "hooks": {
        f"{when}_{phase}": Key([], _hook_commands)
        for phase in PHASES for when in ("before", "after")
    },
}


class Config:
    """Validated configuration: cfg.section.key, plus resolved local paths."""

    def __init__(self, data: dict[str, dict[str, Any]], path: Path | None):
        self.path = path
        self.data = data
        base = path.parent if path else Path.cwd()
        self.source_dir = (base / data["project"]["source"]).resolve()

    def __getattr__(self, section: str) -> "_Section":
        try:
            return _Section(self.__dict__["data"][section])
        except KeyError:
            raise AttributeError(section) from None

    @property
    def nginx_template(self) -> Path | None:
        """The user's nginx site template (relative to the config file), or None for the built-in one."""
        if not self.nginx.template:
            return None
        return ((self.path.parent if self.path else Path.cwd()) / self.nginx.template).resolve()

    @property
    def shared(self) -> str:
        return self.paths.deploy_to.rstrip("/") + "/shared"

    @property
    def server_names(self) -> list[str]:
        return self.nginx.server_name.split()

    @property
    def allowed_hosts(self) -> list[str]:
        if self.django.allowed_hosts:
            return list(self.django.allowed_hosts)
        names = []
        for n in self.server_names:
            if n in ("_", "") or n.startswith("~"):
                continue
            if n.startswith("*."):
                n = n[1:]
            if "*" not in n:
                names.append(n)
        return names or ["localhost"]

    def secret_values(self) -> list[str]:
        """Values to mask in anything printed: every [django] env value of MIN_SECRET_LEN characters or more
        (whatever its name; shorter ones such as "1" or "on", and true/false/none/null, would mask unrelated
        text), and the userinfo (user:password, and the password alone) of pip.index_url."""
        values = [v for v in self.django.env.values() if len(v) >= MIN_SECRET_LEN and v.lower() not in NEVER_SECRET]
        userinfo = url_userinfo(self.pip.index_url)
        if userinfo:
            values.append(userinfo)
            password = userinfo.partition(":")[2]
            values += [p for p in (password, unquote(password)) if len(p) >= MIN_SECRET_LEN]
        return values


class _Section:
    def __init__(self, values: dict[str, Any]):
        self.__dict__.update(values)


def find_config_path(explicit: str | None = None) -> Path:
    """The config file: the task option, else $FABDEPLOY_CONFIG, else ./deploy.toml."""
    name = explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    path = Path(name).expanduser()
    if not path.is_file():
        how = "--config" if explicit else (CONFIG_ENV if os.environ.get(CONFIG_ENV) else "default")
        raise ConfigError(f"config file {name} not found ({how}); write one with `fabdeploy init` "
                          "(or `fabdeploy example-config`: the deploy.example.toml reference)")
    return path


def load_config(explicit: str | None = None) -> Config:
    path = find_config_path(explicit)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(raw, path)


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
    for role in ("app", "lb"):
        for item in roles[role]:
            host = item if isinstance(item, str) else item["host"]
            name = host_name(host)
            if name in seen:
                raise ConfigError(f"{where}host {name} is listed twice (roles.{seen[name]} and roles.{role}); "
                                  "a host has one role")
            seen[name] = role
            if role == "lb" and isinstance(item, dict) and set(item) - {"host", "address"}:
                raise ConfigError(f"{where}roles.lb {host}: weight, backup, max_fails, fail_timeout are settings "
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


def ident(name: str) -> str:
    """An nft/nginx identifier for a project name, one-to-one ("my-app" and "my.app" stay distinct):
    letters and digits kept, "_" -> "__", "-" -> "_h", "." -> "_d"."""
    return "".join(c if c.isalnum() else {"_": "__", "-": "_h", ".": "_d"}[c] for c in name)


def parse_config(raw: dict[str, Any], path: Path | None = None) -> Config:
    where = f"{path}: " if path else ""
    data: dict[str, dict[str, Any]] = {}
    for section, value in raw.items():
        if section not in SCHEMA:
            raise ConfigError(f"{where}unknown section [{section}]{_suggest(section, SCHEMA)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}{section} must be a table [{section}]")
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        for key in given:
            if key not in keys:
                shown = key if key.isprintable() else repr(key)
                raise ConfigError(f"{where}unknown key {section}.{shown}{_suggest(key, keys)}")
        values = {}
        for key, spec in keys.items():
            if key not in given:
                if spec.required:
                    raise ConfigError(f"{where}missing required key {section}.{key}")
                values[key] = spec.default if not isinstance(spec.default, (list, dict)) else type(spec.default)(
                    spec.default)
                continue
            problem = spec.check(given[key])
            if problem:
                got = "" if (section, key) == ("django", "env") or section == "roles" else f" (got {given[key]!r})"
                raise ConfigError(f"{where}{section}.{key} {problem}{got}")
            values[key] = given[key]
        data[section] = values
    deploy_to = data["paths"]["deploy_to"]
    if deploy_to.rstrip("/") in ("", "/") or "//" in deploy_to.rstrip("/") or "/../" in deploy_to + "/" \
            or "/./" in deploy_to + "/":
        raise ConfigError(f"{where}paths.deploy_to must be a real directory below / (got {deploy_to!r})")
    if not data["project"]["requirements"] and not data["pip"]["packages"]:
        raise ConfigError(f"{where}project.requirements is empty and pip.packages lists nothing to install")
    data["paths"]["deploy_to"] = deploy_to.rstrip("/")
    for rel in data["paths"]["shared_dirs"] + [data["project"]["requirements"], data["project"]["manage"]]:
        if ".." in rel.split("/"):
            raise ConfigError(f"{where}path {rel!r} must stay inside its directory (no '..')")
    _check_roles(data, where)
    cfg = Config(data, path)
    if cfg.nginx_template and not cfg.nginx_template.is_file():
        raise ConfigError(f"{where}nginx.template {cfg.nginx_template} does not exist")
    return cfg
