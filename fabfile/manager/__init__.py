"""Process managers: what runs the app server on an app host, one module each, chosen by `[app] manager`
(base.py: the interface). The app server's lines call the manager for start, reload and stop; everything
else (readiness, pids, logs) stays the app server's."""
from __future__ import annotations

from fabdeploy.manager.base import Manager
from fabdeploy.manager.emperor import Emperor
from fabdeploy.manager.pidfile import Pidfile
from fabdeploy.manager.supervisor import Supervisor
from fabdeploy.manager.systemd import Systemd

MANAGERS: dict[str, Manager] = {
    "pidfile": Pidfile(),
    "supervisor": Supervisor(),
    "systemd": Systemd(),
    "emperor": Emperor(),
}


def of(cfg) -> Manager:
    """The process manager a config chose ([app] manager)."""
    return MANAGERS[cfg.app.manager]


def switch_lines(cfg, app) -> list[str]:
    """Lines run before a start or reload: when the manager that last ran an app server of this deploy_to
    (shared/config/manager; none recorded: pidfile, the only one before managers existed) is not the
    configured one, stop every app server it runs here through it (waiting until each is gone; a host may
    switch [app] server at the same time), remove its definition, and record the new one. A brief outage:
    two managers never fight over the socket. (shared/run is the app user's: its pidfiles and sockets are
    looked at as it, $ASAPP.)"""
    from fabdeploy.appserver import SERVERS
    from fabdeploy.appserver.control import present_lines
    from fabdeploy.hosts.layout import Layout
    from fabdeploy.remote.markers import note
    from fabdeploy.remote.shell import ALIVE_FN, q, read_word
    lay = Layout(cfg.paths.deploy_to)
    record = q(lay.config + "/manager")
    new = of(cfg)
    servers = list(dict.fromkeys(SERVERS.values()))
    running = " || ".join(f"alive {q(s.paths(lay).pidfile)} {q(s.process)} >/dev/null" for s in servers)
    lines = [*app.as_app_lines(cfg), ALIVE_FN,
             read_word("was", lay.config + "/manager"),
             # nothing recorded: a master running now was started without a manager; none running: a first start
             'if [ -z "$was" ]; then',
             f"  if {running}; then was=pidfile; else was={q(new.name)}; echo {q(new.name)} > {record}; fi",
             "fi",
             f'if [ "$was" != {q(new.name)} ]; then',
             *["  " + ln for ln in present_lines(cfg, servers)],
             '  case "$was" in']
    for name, old in MANAGERS.items():
        if name == new.name:
            continue
        lines.append(f"  {q(name)})")
        for server in servers:
            if not old.refuse(server):  # (one that refuses this app server never ran it)
                lines += ["    " + ln for ln in server.stop_if_present_lines(cfg, old)]
        lines += [*["    " + ln for ln in old.remove_lines(cfg, app)], "    ;;"]
    lines += ["  esac",
              f"  echo {q(new.name)} > {record}",
              "  " + note(f"process manager: $was -> {new.name}"),
              "fi"]
    return lines
