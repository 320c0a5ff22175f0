"""Roles: which hosts run the app (the app server) and which balance them (nginx in front), with per-host
settings.

Without [roles], every host of project.hosts (or -H) is an app host that serves itself through its own nginx.
With roles.lb, app hosts serve the app on a TCP socket and the lb hosts' nginx balances them (an `upstream`).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import math
from dataclasses import dataclass

from fabdeploy.config import Config, host_name
from fabdeploy.errors import ConfigError

ROLES = ("app", "lb")
ALL_ROLES = (*ROLES, "db")  # db: the fleet's database host (database/fleet.py), worked on by fab provision only


@dataclass(frozen=True)
class Server:
    target: str  # the SSH target, "[user@]host[:port]"
    role: str = "app"
    address: str = ""  # how the lb reaches it (default: the SSH host name)
    weight: int = 1
    backup: bool = False
    max_fails: int = 1
    fail_timeout: int = 10

    @property
    def hostname(self) -> str:
        return host_name(self.target)

    @property
    def upstream_address(self) -> str:
        return self.address or self.hostname


def balanced(cfg: Config) -> bool:
    """True when the fleet has load balancer hosts (app hosts then serve the app over TCP)."""
    return bool(cfg.roles.lb)


def runs_nginx(cfg: Config, server: Server | None) -> bool:
    """Does this host get fabdeploy's nginx site? App hosts of a balanced fleet only with balancer.app_nginx."""
    return server is None or not balanced(cfg) or server.role == "lb" or cfg.balancer.app_nginx


def servers(cfg: Config) -> list[Server]:
    """Every host of the config with its role: [roles] entries, else project.hosts as app hosts."""
    out = []
    b = cfg.balancer
    for role in ALL_ROLES:
        for item in getattr(cfg.roles, role):
            item = {"host": item} if isinstance(item, str) else dict(item)
            out.append(Server(item.pop("host"), role, item.get("address", ""), item.get("weight", 1),
                              item.get("backup", False), item.get("max_fails", b.max_fails),
                              item.get("fail_timeout", b.fail_timeout)))
    if not any(s.role != "db" for s in out):
        out += [Server(h, "app", max_fails=b.max_fails, fail_timeout=b.fail_timeout) for h in cfg.project.hosts]
    return out


def parse_roles(value: str | None, allowed: tuple[str, ...] = ROLES) -> tuple[str, ...]:
    """--roles app,lb -> ("app", "lb"); one line naming the bad word otherwise."""
    if not value:
        return allowed
    words = tuple(w.strip() for w in value.split(",") if w.strip())
    for w in words:
        if w not in allowed:
            raise ConfigError(f"--roles: unknown role {w!r} (roles are: {', '.join(allowed)})")
    return words


def select(cfg: Config, cli_hosts: list[str], roles: tuple[str, ...] = ROLES) -> list[Server]:
    """The servers to work on: the -H hosts (with their roles and settings when the config names them),
    else every configured host; then only those of `roles`."""
    known = servers(cfg)
    if cli_hosts:
        by_target = {s.target: s for s in known}
        by_name = {}
        for s in known:
            by_name.setdefault(s.hostname, s)
        chosen = []
        for h in cli_hosts:
            s = by_target.get(h) or by_name.get(Server(h).hostname)
            if s is None and balanced(cfg):
                raise ConfigError(f"host {h} (-H) is in no role of [roles]; add it to roles.app or roles.lb")
            chosen.append(dataclasses.replace(s, target=h) if s else Server(h, "app"))
    elif known:
        chosen = known
    else:
        raise ConfigError("no hosts: pass -H user@host, or set project.hosts or [roles] in deploy.toml")
    picked = [s for s in chosen if s.role in roles]
    if not picked:
        raise ConfigError(f"no hosts with role {', '.join(roles)} among the selected hosts")
    return picked


def attach(conn, server: Server):
    """Remember which Server a Connection is for. (A plain attribute set on an invoke Context becomes a
    config update, and the Connections of one run share their config: set it on the instance itself.)"""
    object.__setattr__(conn, "fabdeploy_server", server)
    return conn


def server_of(conn) -> Server:
    """The Server a connection was made for (see tasks.target_connections); a plain app host otherwise."""
    return conn.__dict__.get("fabdeploy_server") or Server(conn.host, "app")


def bind_address(cfg: Config, server: Server) -> str:
    """Where the app server listens on an app host of a balanced fleet: balancer.bind, else the address the lb uses
    when it is an IP (so uWSGI is not reachable on other interfaces), else all interfaces."""
    if cfg.balancer.bind:
        return cfg.balancer.bind.strip("[]")
    try:
        return str(ipaddress.ip_address(server.upstream_address.strip("[]")))
    except ValueError:
        return "0.0.0.0"


def batches(items: list, rolling) -> list[list]:
    """Split hosts into rolling batches: rolling = 0 -> one batch; N -> N at a time; "30%" -> that share
    (rounded up, at least one)."""
    if not items:
        return []
    if isinstance(rolling, str):
        size = max(1, math.ceil(len(items) * int(rolling.rstrip("%")) / 100))
    else:
        size = rolling or len(items)
    return [items[i:i + size] for i in range(0, len(items), size)]
