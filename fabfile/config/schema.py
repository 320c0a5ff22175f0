"""The keys of deploy.toml: SCHEMA maps each [section] to its keys, each a Key (default, check, required).

deploy.example.toml documents the same keys (tests/test_example_config.py checks it is complete).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from fabdeploy.config.checks import (_HOST, _app_manager, _app_server, _bool, _env, _hook_commands, _int, _list, _listen,
                                     _server_names, _servers, _statuses, _str, check_rolling)
from fabdeploy.config.tls import _ca_bundle, _tls_file

PHASES = ("setup", "code", "venv", "django", "config", "switch", "restart", "cleanup")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")  # [app] user (useradd's NAME_REGEX)
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_WSGI = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*)?$")
# Paths and names that end up in nginx/uWSGI config files, which have no quoting: keep them plain.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/@+-]*$")
_REL_PATH = re.compile(r"^[A-Za-z0-9._@+-][A-Za-z0-9._/@+-]*$")
_DB_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")  # [database] name/user: never needs quoting
_SIZE = re.compile(r"^[0-9]+[kKmMgG]?$")
_URL_PATH = re.compile(r"^/[A-Za-z0-9._/-]*/$")
BALANCE_METHODS = ("round_robin", "least_conn", "ip_hash", "hash")


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
        "server": Key("uwsgi", _app_server),
        "manager": Key("pidfile", _app_manager),
        # the ASGI application ("mysite.asgi:application") for gunicorn (with uvicorn's worker), uvicorn,
        # daphne and hypercorn; project.wsgi stays what uWSGI and plain gunicorn run
        "asgi": Key("", _str(_WSGI, "\"module.path:callable\"")),
        "user": Key("", _str(_USER, "a user name (lower-case letters, digits, '_' or '-', at most 32)")),
        # uWSGI/gunicorn without a process manager: the previous release's master stays up, idle, after a
        # switch (appserver/beside.py), so a rollback to it is a socket rename
        "keep_warm": Key(True, _bool),
        # uWSGI/gunicorn (WSGI): every new worker GETs health.path from itself, in process, before its first
        # request (appserver/warm.py)
        "warm_workers": Key(True, _bool),
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
        "pipelined_auth": Key(True, _bool),
        "persist": Key(0, _int(0, 86400)),
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
        "db": Key([], _servers),  # one host: the fleet's database (and Redis) server (fabdeploy/database/fleet.py)
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
        "websocket_timeout": Key(3600, _int(1, 604800)),
        "firewall": Key("auto", lambda v: None if v in ("auto", "nftables", "off") else
                        "must be \"auto\", \"nftables\" or \"off\""),
    },
    "tls": {  # HTTPS (fabdeploy/front/tls.py; acme: fabdeploy/front/acme.py)
        "mode": Key("off", lambda v: None if v in ("off", "files", "acme") else
                    "must be \"off\", \"files\" or \"acme\""),
        "certificate": Key("", _tls_file),  # the chain: a local path, or "host:/path" already on the host
        "key": Key("", _tls_file),
        "port": Key(443, _int(1, 65535)),
        "hsts": Key(0, _int(0, 63072000)),
        "hsts_include_subdomains": Key(False, _bool),  # "; includeSubDomains" (SECURE_HSTS_INCLUDE_SUBDOMAINS)
        "hsts_preload": Key(False, _bool),  # "; preload" (SECURE_HSTS_PRELOAD)
        "email": Key("", _str(re.compile(r"^[^@\s]+@[^@\s]+$"), "an email address")),
        "server": Key("", _str(re.compile(r"^https://\S+$"), "an https URL (an ACME directory)")),
        "ca_bundle": Key("", _ca_bundle),  # acme: the CA bundle (on the host) certbot trusts for `server`
    },
    "provision": {  # fab provision (fabdeploy/provision/)
        "deploy_user": Key("deploy", _str(_USER, "a user name (lower-case letters, digits, '_' or '-')", False)),
        "authorized_keys": Key([], _list(_str(re.compile(r"^(ssh|ecdsa|sk)-[A-Za-z0-9@.-]+ [A-Za-z0-9+/=]+( [^\n]*)?$"),
                                              "a public key line like \"ssh-ed25519 AAAA... me@laptop\"", False))),
        "sudoers": Key(True, _bool),  # the `fab sudoers` drop-in installed (provision/sudoers.py)
        "sudoers_file": Key("", _str(None)),  # your own drop-in instead (relative to the config file)
    },
    "cache": {  # [cache] redis: provision/redis.py installs it, the deploy wires CACHES (settings.py.j2)
        "redis": Key(False, _bool),
        "sessions": Key(False, _bool),
    },
    "database": {  # fabdeploy/database/: the app's database, provisioned by fab provision
        "engine": Key("sqlite", lambda v: None if v in ("sqlite", "postgresql", "mysql") else
                      'must be "sqlite", "postgresql" or "mysql"'),
        "host": Key("local", lambda v: None if v in ("local", "url") else
                    'must be "local" (the server on the app host) or "url" (an existing server: [secrets] '
                    'DATABASE_URL); a fleet shares a db host: roles.db'),
        "name": Key("", _str(_DB_IDENT, "letters, digits or '_' (not starting with a digit, at most 63)")),
        "user": Key("", _str(_DB_IDENT, "letters, digits or '_' (not starting with a digit, at most 63)")),
        "keep_backups": Key(5, _int(1, 1000)),
    },
    "hooks": {
        f"{when}_{phase}": Key([], _hook_commands)
        for phase in PHASES for when in ("before", "after")
    },
}


def all_sections() -> dict[str, dict[str, Key]]:
    """SCHEMA and the section of every registered app server (fabdeploy.appserver.SERVERS: each declares
    its own keys), in SCHEMA's order with the app servers' sections after [app]. Imported when a config is
    parsed: the app servers' modules import this package."""
    from fabdeploy.appserver import SERVERS
    out: dict[str, dict[str, Key]] = {}
    for name, keys in SCHEMA.items():
        out[name] = keys
        if name == "app":
            for server in SERVERS.values():
                if server.section and server.section not in out:
                    out[server.section] = server.keys
    return out
