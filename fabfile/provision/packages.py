"""The packages a host needs for the configured stack, per family of system (apt, dnf, yum). Only names the
system's own repositories carry (CentOS 7, RHEL 8/9 and rebuilds: nginx and supervisor come from EPEL, which
the administrator enables; provision never adds a repository).

    need            apt (Debian/Ubuntu)           dnf/yum (Fedora, RHEL 8/9 & rebuilds, CentOS 7)
    python + venv   python3 python3-venv          python3 (Fedora, CentOS 7); python3.11 on RHEL 8/9
                    ([project] python = "python3.N": pythonN-ish names of that version on every family)
    compiler        build-essential python3-dev   gcc python3-devel (python3.11-devel)  -- not with pip.wheelhouse
    web server      nginx                         nginx
    [app] manager   supervisor | cron (pidfile)   supervisor | cronie (pidfile); systemd and emperor: nothing
    firewall        nftables (app hosts behind balancers, balancer.firewall not "off")
    [cache] redis   redis-server                  redis
    [tls] acme      certbot (on the hosts that terminate TLS: lb hosts of a fleet, else the app hosts;
                    EPEL carries it on RHEL)
"""
from __future__ import annotations

import re

from fabdeploy.config import Config
from fabdeploy.hosts.roles import balanced
from fabdeploy.provision.system import System

_VERSIONED = re.compile(r"^python(3\.[0-9]+)$")


def python_packages(cfg: Config, system: System) -> tuple[list[str], list[str]]:
    """(the interpreter with venv, its headers) for [project] python on this system."""
    m = _VERSIONED.match(cfg.project.python.rsplit("/", 1)[-1])
    if system.family == "apt":
        name = f"python{m.group(1)}" if m else "python3"
        return [name, f"{name}-venv"], [f"{name}-dev"]
    if m:
        name = f"python{m.group(1)}"
    elif system.rhel and system.major in (8, 9):
        name = "python3.11"  # python3 is 3.6 (RHEL 8) / 3.9 (RHEL 9); set [project] python = "python3.11"
    else:
        name = "python3"
    return [name], [f"{name}-devel"]


def firewall_used(cfg: Config, role: str) -> bool:
    """nftables restricts the app server's port on app hosts behind load balancers (front/firewall.py)."""
    return cfg.balancer.firewall != "off" and role == "app" and balanced(cfg)


def plan(cfg: Config, system: System, role: str = "app") -> list[str]:
    """The package names this host needs, in install order, without duplicates."""
    python, headers = python_packages(cfg, system)
    out = list(python)
    if not cfg.pip.wheelhouse and role == "app":
        out += (["build-essential"] if system.family == "apt" else ["gcc"]) + headers
    out.append("nginx")
    if role == "app":
        manager = cfg.app.manager
        if manager == "supervisor":
            out.append("supervisor")
        elif manager == "pidfile":  # its @reboot line
            out.append("cron" if system.family == "apt" else "cronie")
    if firewall_used(cfg, role):
        out.append("nftables")
    if cfg.cache.redis and role == "app" and not cfg.roles.db:  # [cache] redis (provision/redis.py; roles.db: there)
        out.append("redis-server" if system.family == "apt" else "redis")
    if cfg.tls.mode == "acme" and (role == "lb" or not balanced(cfg)):
        out.append("certbot")
    return list(dict.fromkeys(out))


def installed_check(family: str) -> str:
    """A shell function `installed NAME` (status 0: the package is installed)."""
    if family == "apt":
        return ("installed() { [ \"$(dpkg-query -W -f='${db:Status-Status}' \"$1\" 2>/dev/null)\" = installed ]; }")
    return 'installed() { rpm -q --quiet "$1" 2>/dev/null; }'


def install_lines(family: str) -> list[str]:
    """Install the packages named in $missing with the system's own tool (never another source)."""
    if family == "apt":
        return ["export DEBIAN_FRONTEND=noninteractive",
                "apt-get update -q",
                "apt-get install -y -q --no-install-recommends $missing"]
    return [f"{family} install -y $missing"]
