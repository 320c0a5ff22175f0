"""The process manager's service ([app] manager), on app hosts: supervisor's supervisord enabled and running,
cron running for the pidfile manager's @reboot line, systemd running as PID 1 for "systemd"; the uWSGI emperor
is installed and started by the deploy itself (nothing here).

Where systemd runs: `systemctl enable --now <unit>` (Debian: supervisor, cron; RHEL family: supervisord,
crond). Elsewhere (a container, the test lab): the distribution's init script through `service`, else the
daemon itself; "running" is decided by the daemon answering (supervisorctl pid) or a live pid, never by a
file merely existing.
"""
from __future__ import annotations

from fabdeploy.config import Config
from fabdeploy.manager.supervisor import SUPERVISORD_CONF
from fabdeploy.provision.services import SYSTEMD
from fabdeploy.provision.steps import Step
from fabdeploy.provision.system import System
from fabdeploy.remote.shell import ALIVE_FN, q

# family -> (supervisor's unit, its config file, cron's unit, cron's daemon)
UNITS = {"apt": ("supervisor", SUPERVISORD_CONF, "cron", "cron"),
         "dnf": ("supervisord", "/etc/supervisord.conf", "crond", "crond"),
         "yum": ("supervisord", "/etc/supervisord.conf", "crond", "crond")}
CRON_PID = "/run/crond.pid"


def _enabled_running(unit: str) -> str:
    return f"systemctl is-enabled --quiet {q(unit)} && systemctl is-active --quiet {q(unit)}"


def _wait(test: str, what: str) -> list[str]:
    """Wait up to 10 s for `test` to pass, else one line naming `what`."""
    return [f"i=0; while ! {test} && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done",
            f"{test} || {{ echo {q(what + ' did not start')}; exit 1; }}"]


def supervisor_step(system: System) -> Step:
    unit, conf = UNITS[system.family][:2]
    answers = "supervisorctl pid >/dev/null 2>&1"
    check = [f"if {SYSTEMD}; then {_enabled_running(unit)}; else {answers}; fi"]
    apply = [f"if {SYSTEMD}; then systemctl enable --now {q(unit)}; "
             f"else service {q(unit)} start >/dev/null 2>&1 || supervisord -c {q(conf)}; fi",
             *_wait(answers, "supervisord")]
    return Step("manager", check, apply, what=f"{unit} enabled and started (app.manager = supervisor)")


def cron_step(system: System) -> Step:
    unit, daemon = UNITS[system.family][2:]
    running = f"alive {q(CRON_PID)} cron >/dev/null"  # (cron or crond: both write /run/crond.pid)
    check = [ALIVE_FN, f"if {SYSTEMD}; then {_enabled_running(unit)}; else {running}; fi"]
    apply = [ALIVE_FN, f"if {SYSTEMD}; then systemctl enable --now {q(unit)}; "
             f"else service {q(unit)} start >/dev/null 2>&1 || "
             f"{{ d=$(command -v {daemon} || command -v cron) && \"$d\"; }}; fi",
             f"if ! {SYSTEMD}; then", *["  " + ln for ln in _wait(running, daemon)], "fi"]
    return Step("manager", check, apply, what=f"{unit} enabled and started (the pidfile manager's @reboot line)")


def systemd_step() -> Step:
    """systemd must be the host's init: provision cannot install it; one line when it is not."""
    why = 'app.manager = "systemd" needs systemd running as the host\'s init (/run/systemd/system is missing)'
    return Step("manager", [SYSTEMD], [f"echo {q(why)}", "exit 1"], what="systemd is not running")


def manager_steps(cfg: Config, system: System, role: str) -> list[Step]:
    """The step of [app] manager on an app host (none on balancers, none for the emperor)."""
    if role != "app":
        return []
    manager = cfg.app.manager
    if manager == "supervisor":
        return [supervisor_step(system)]
    if manager == "pidfile":
        return [cron_step(system)]
    if manager == "systemd":
        return [systemd_step()]
    return []
