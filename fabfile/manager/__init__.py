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
    """Lines run before a start or reload: when the manager that last ran the app server on this host (shared/
    config/manager; none recorded: pidfile, the only one before managers existed) is not the configured one,
    stop the app server through the old manager (waiting until it is gone), remove the old manager's
    definition, and record the new one. A brief outage: two managers never fight over the socket."""
    from fabdeploy.hosts.layout import Layout
    from fabdeploy.remote.markers import note
    from fabdeploy.remote.shell import q
    record = q(Layout(cfg.paths.deploy_to).config + "/manager")
    new = of(cfg)
    lines = [f"was=$(cat {record} 2>/dev/null || true)",
             # nothing recorded: a master running now was started without a manager; none running: a first start
             'if [ -z "$was" ]; then',
             *["  " + ln for ln in app.pid_lines(cfg)],
             f'  if [ -n "$pid" ]; then was=pidfile; else was={q(new.name)}; echo {q(new.name)} > {record}; fi',
             "fi",
             f'if [ "$was" != {q(new.name)} ]; then',
             '  case "$was" in']
    for name, old in MANAGERS.items():
        if name == new.name or old.refuse(app):  # (one that refuses this app server never ran it)
            continue
        lines += [f"  {q(name)})",
                  *["    " + ln for ln in app.stop_lines(cfg, old)],
                  *["    " + ln for ln in old.remove_lines(cfg, app)],
                  "    ;;"]
    lines += ["  esac",
              f"  echo {q(new.name)} > {record}",
              "  " + note(f"process manager: $was -> {new.name}"),
              "fi"]
    return lines
