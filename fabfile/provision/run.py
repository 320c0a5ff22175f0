"""Provisioning hosts: per host, one round trip reads the system (/etc/os-release) and whether we are root or
may sudo; a second runs every step as root in one script. Output: per host and step `ok`, `changed: <what>`
(with --plan: `would change: <what>`, and nothing changed), and a summary table."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from fabdeploy.config import Config
from fabdeploy.errors import FabdeployError
from fabdeploy.hosts.connect import host_label
from fabdeploy.hosts.fleet import on_each_host
from fabdeploy.hosts.roles import server_of
from fabdeploy.output import Printer
from fabdeploy.provision import database, layout, packages, services, steps, system, users
from fabdeploy.provision import db_host, manager_service, redis, sudoers
from fabdeploy.remote.markers import as_markers, fact, fail, prefix
from fabdeploy.remote.runner import run_script
from fabdeploy.remote.script import Phase, Script
from fabdeploy.remote.shell import sh_command

OSR = "osr"


class RootScript(Script):
    """A Script run as root: as is when connected as root, else through `sudo -n`."""
    as_root: bool = False

    def command(self) -> str:
        return super().command() if self.as_root else sh_command(self.text(), "sudo -n sh -c")


def detect_script() -> Script:
    """/etc/os-release (each line marked), the user and whether it is root or may sudo without a password."""
    return Script([Phase("detect", [
        "[ -r /etc/os-release ] || " + fail("cannot read /etc/os-release: unsupported system, nothing was changed"),
        f"{as_markers(OSR)} /etc/os-release",
        fact("user", "$(id -un)"), fact("uid", "$(id -u)"),
        'if [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then root=yes; else root=no; fi',
        fact("root", "$root"),
    ])])


def host_steps(cfg: Config, sysinfo: system.System, keys: list[str], role: str) -> list[steps.Step]:
    """Every step for one host, in order (the database and the cache on app hosts, or on the fleet's db
    host: roles.db)."""
    if role == "db":
        return db_host_steps(cfg, sysinfo, keys)
    names = ["sudo", *packages.plan(cfg, sysinfo, role)]  # sudo: the deploy runs `sudo -n`
    if role == "app":
        names += database.packages(cfg, sysinfo.family, role)
    return [services.packages_step(sysinfo.family, list(dict.fromkeys(names))),
            services.nginx_step(),
            *manager_service.manager_steps(cfg, sysinfo, role),
            *users.deploy_user_steps(cfg, keys),
            *users.app_user_step(cfg),
            layout.layout_step(cfg),
            *layout.pip_step(cfg),
            *database.steps(cfg, sysinfo.family, role),
            *redis.redis_steps(cfg, sysinfo, role),
            *sudoers.sudoers_steps(cfg)]


def db_host_steps(cfg: Config, sysinfo: system.System, keys: list[str]) -> list[steps.Step]:
    """The fleet's db host: the server (and Redis), the deploy user and deploy_to (the password files live
    in shared/config); no nginx, app server or sudoers drop-in."""
    names = ["sudo", *database.packages(cfg, sysinfo.family, "db")]
    if cfg.cache.redis:
        names.append(redis.package(sysinfo))
    if db_host.firewall_steps(cfg):
        names.append("nftables")
    return [services.packages_step(sysinfo.family, list(dict.fromkeys(names))),
            *users.deploy_user_steps(cfg, keys),
            *users.app_user_step(cfg),
            layout.layout_step(cfg),
            *database.steps(cfg, sysinfo.family, "db"),
            *redis.redis_steps(cfg, sysinfo, "db"),
            *db_host.firewall_steps(cfg)]


def provision_script(cfg: Config, sysinfo: system.System, keys: list[str], role: str, plan: bool,
                     as_root: bool) -> RootScript:
    lines = [ln for st in host_steps(cfg, sysinfo, keys, role) for ln in steps.step_lines(st, plan)]
    script = RootScript([Phase("provision", lines)])
    script.as_root = as_root
    return script


@dataclass
class Outcome:
    host: str
    system: str = ""
    results: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""
    duration: float = 0.0

    @property
    def changed(self) -> int:
        return sum(1 for _, r in self.results if not r.startswith(("ok", "skipped")))


def provision_host(conn, cfg: Config, keys: list[str], plan: bool, printer: Printer) -> Outcome:
    host, started = host_label(conn), time.monotonic()
    res = run_script(conn, detect_script(), host=host, timeout=60)
    start = prefix(OSR)
    osr = "\n".join(ln[len(start):] for ln in res.stdout.splitlines() if ln.startswith(start))
    sysinfo = system.detect(system.parse_os_release(osr), host)
    facts = res.facts
    if facts.get("root") != "yes":
        raise FabdeployError(f"{host}: provision needs root or passwordless sudo (connected as "
                             f"{facts.get('user', '?')}, `sudo -n true` failed); nothing was changed")
    out = Outcome(host, sysinfo.pretty)
    script = provision_script(cfg, sysinfo, keys, server_of(conn).role, plan, facts.get("uid") == "0")
    printer.debug(host, script.display())
    try:
        res = run_script(conn, script, host=host, timeout=cfg.pip.timeout + 600)
    finally:
        out.duration = time.monotonic() - started
    out.results = steps.parse(res.stdout)
    for name, result in out.results:
        printer.line(host, f"{name}: {result}")
    return out


def provision_all(conns: list, cfg: Config, keys: list[str], plan: bool, printer: Printer,
                  parallel: int) -> list[Outcome]:
    """provision_host on every host in parallel; a host that fails is an Outcome with its error."""
    printer.width = max(len(host_label(c)) for c in conns)
    return on_each_host(conns, lambda conn, cancel: provision_host(conn, cfg, keys, plan, printer), parallel,
                        failed=lambda conn, exc: Outcome(host_label(conn), error=str(exc)))


def summary(outcomes: list[Outcome], plan: bool) -> str:
    """HOST, SYSTEM, CHANGED (or WOULD CHANGE), RESULT, ERROR: one row per host."""
    rows = [("HOST", "SYSTEM", "WOULD CHANGE" if plan else "CHANGED", "RESULT", "ERROR")]
    for o in outcomes:
        rows.append((o.host, o.system, str(o.changed), "FAILED" if o.error else "ok",
                     o.error.splitlines()[0][:90] if o.error else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
