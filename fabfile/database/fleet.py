"""A fleet's shared database host (issue 14): `[roles] db = [{ host = "deploy@db1", address = "10.0.0.5" }]`.

One host, which `fab provision` makes the fleet's database server ([database] engine) and, with
[cache] redis, its Redis: bound to `address` (the private address the app hosts reach; default the SSH
host name) besides 127.0.0.1, and open only to the app hosts' addresses (their `address =`, else their
host names): pg_hba.conf lines per app host (scram-sha-256), MariaDB users @ each app host, Redis with its
password. The passwords are generated on the db host (shared/config/*.password, deploy user, 0600).

Each deploy reads them once from the db host over SSH (read_script; held in memory only, masked in every
output like [secrets]) and writes them into every app host's shared/config (0600), from which the code
phase composes DATABASE_URL / REDIS_URL pointing at the db host (database.url_lines, redis.env_lines).
Migrations (and the dump before them) run on one app host per deploy; `fab db backup|backups` act on the
first app host; `fab db restore` and `fab rollback --restore-db` stop every app host and restore once
(ops/db_fleet.py). The passwords are read before the app hosts' setup: their digest() is part of the
"already live" fingerprint.
"""
from __future__ import annotations

import ipaddress

from fabdeploy.config import Config
from fabdeploy.errors import ConfigError, FabdeployError
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.roles import Server, servers
from fabdeploy.remote.markers import fact, fail
from fabdeploy.remote.script import Phase, Script
from fabdeploy.remote.shell import q

ROLE = "db"
FILES = {"database": "database.password", "redis": "redis.password"}  # in shared/config, on every host


def db_server(cfg: Config) -> Server | None:
    """The fleet's database host (roles.db), or None."""
    return next((s for s in servers(cfg) if s.role == ROLE), None)


def has_db_host(cfg: Config) -> bool:
    return bool(cfg.roles.db)


def shared(cfg: Config) -> bool:
    """Do the app hosts share one database (a db host, or an existing server's URL)? Then migrations and
    their dump run once per deploy, and `fab db` acts once."""
    return has_db_host(cfg) or (cfg.database.engine != "sqlite" and cfg.database.host == "url")


def address(cfg: Config) -> str:
    """The db host's address as the app hosts reach it (its `address =`, else its SSH host name)."""
    s = db_server(cfg)
    return s.upstream_address.strip("[]") if s else "127.0.0.1"


def app_addresses(cfg: Config) -> list[str]:
    """The app hosts' addresses as the db host sees them (their `address =`, else their host names)."""
    return list(dict.fromkeys(s.upstream_address.strip("[]") for s in servers(cfg) if s.role == "app"))


def cidr(addr: str) -> str:
    """An app address as a pg_hba.conf address field: an IP as a one-host network, a host name as is."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    return f"{ip}/{32 if ip.version == 4 else 128}"


def check(data: dict, where: str) -> None:
    """[roles] db (raw config): one host; something for it to serve; not together with host = "url"."""
    dbs = data["roles"]["db"]
    if not dbs:
        return
    if len(dbs) > 1:
        raise ConfigError(f"{where}roles.db lists {len(dbs)} hosts: a fleet has one database host")
    engine, host = data["database"]["engine"], data["database"]["host"]
    if host == "url":
        raise ConfigError(f'{where}roles.db and database.host = "url" both name the database server: use one')
    if engine == "sqlite" and not data["cache"]["redis"]:
        raise ConfigError(f'{where}roles.db needs database.engine = "postgresql" or "mysql" (or cache.redis = '
                          'true): an SQLite file cannot be shared between hosts')
    if not (data["roles"]["app"] or data["project"]["hosts"]):
        raise ConfigError(f"{where}roles.db needs app hosts (roles.app or project.hosts)")


def wanted(cfg: Config) -> dict[str, str]:
    """kind -> password file (in shared/config) a deploy copies from the db host to the app hosts."""
    out = {}
    if cfg.database.engine != "sqlite":
        out["database"] = FILES["database"]
    if cfg.cache.redis:
        out["redis"] = FILES["redis"]
    return out


def read_script(cfg: Config) -> Script:
    """One invocation on the db host printing its password files as facts (the caller never displays them);
    a missing one stops with one line: run fab provision."""
    conf = Layout(cfg.paths.deploy_to).config
    lines = []
    for kind, name in wanted(cfg).items():
        path = f"{conf}/{name}"
        lines += [f"pw=$(cat {q(path)} 2>/dev/null) && [ -n \"$pw\" ] || "
                  + fail(f"{path} is missing on the db host: run `fab provision` first"),
                  fact(kind, "$pw")]
    return Script([Phase("fleet_passwords", lines or ["true"])])


def parse(facts: dict, cfg: Config, host: str) -> dict[str, str]:
    """password file name -> value, checked (one line of hex-ish text each)."""
    out = {}
    for kind, name in wanted(cfg).items():
        value = facts.get(kind, "").strip()
        if not value or any(c.isspace() or c in "'\"\\$`" for c in value):
            raise FabdeployError(f"{host}: shared/config/{name} on the db host is empty or not one word")
        out[name] = value
    return out


def digest(cfg: Config, passwords: dict[str, str]) -> str:
    """A salted hash of the db host's passwords for the "already live" fingerprint (steps/live_check.py): a
    password rotated on the db host makes the next deploy a real one; "" without any."""
    import hashlib
    import json
    if not passwords:
        return ""
    text = json.dumps(sorted(passwords.items()))
    return hashlib.sha256(f"fabdeploy-db-passwords:{cfg.project.name}:{text}".encode()).hexdigest()


def read_passwords(cfg: Config, fabric_config, printer) -> dict[str, str]:
    """(deploy, before the app hosts' setup) The db host's password files, read over SSH in one invocation,
    registered for masking in everything printed; {} without a db host."""
    from fabdeploy.hosts.connect import host_label, make_connection, open_connection
    from fabdeploy.output import add_secrets
    from fabdeploy.remote.runner import run_script
    server = db_server(cfg)
    if server is None or not wanted(cfg):
        return {}
    conn = make_connection(server.target, cfg, fabric_config)
    host = host_label(conn)
    try:
        open_connection(conn)
        res = run_script(conn, read_script(cfg), host=host, timeout=60)
    finally:
        conn.close()
    out = parse(res.facts, cfg, host)
    add_secrets(out.values())
    printer.info(f"db host {host}: {', '.join(sorted(out))} read for the app hosts (never shown)")
    return out
