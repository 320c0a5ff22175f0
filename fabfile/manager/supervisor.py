"""supervisor: a program per project in /etc/supervisor/conf.d/<name>.conf, run in the foreground by
supervisord (which the distribution starts at boot), driven with supervisorctl (reread, update, start,
stop, signal). supervisord's control socket is root's: every supervisorctl goes through `sudo -n`.

A reload is the app server's reload signal sent through supervisorctl (`signal HUP`): the master keeps its
pid, so supervisor keeps tracking it (gunicorn's USR2 re-exec would leave supervisor a dead master).
"""
from __future__ import annotations

from fabdeploy.config import Config
from fabdeploy.hosts.layout import Layout
from fabdeploy.appserver.base import app_user
from fabdeploy.manager.base import Manager
from fabdeploy.remote import root
from fabdeploy.remote.markers import fail, fail_expanded, note
from fabdeploy.remote.shell import q

CONF_DIR = "/etc/supervisor/conf.d"
CTL = root.root("supervisorctl")
SUPERVISORD_CONF = "/etc/supervisor/supervisord.conf"
START = (root.root("service", "supervisor", "start"), root.root("supervisord", "-c", SUPERVISORD_CONF))


class Supervisor(Manager):
    name = "supervisor"
    title = "supervisor"
    system_packages = ("supervisor",)

    def program(self, cfg: Config) -> str:
        return cfg.project.name

    def definition_path(self, cfg: Config) -> str:
        return f"{CONF_DIR}/{self.program(cfg)}.conf"

    def definition(self, cfg: Config, app) -> str:
        lay = Layout(cfg.paths.deploy_to)
        p = app.paths(lay)
        return "\n".join([
            f"; Managed by fabdeploy for {cfg.project.name} ({app.title}); rewritten by every deploy.",
            f"[program:{self.program(cfg)}]",
            "command=" + " ".join(app.manager_argv(cfg)),
            f"directory={lay.deploy_to}",
            f"user={app_user(cfg)}",  # the app user ([app] user), never the deploy user's sudo
            "umask=027",
            "autostart=true",
            "autorestart=true",
            "startsecs=1",
            f"stopsignal={app.stop_signal}",
            f"stopwaitsecs={app.reload_timeout(cfg)}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={p.log}.out",
            "stdout_logfile_maxbytes=10MB",
            "stdout_logfile_backups=3",
            "",
        ])

    def running_lines(self) -> list[str]:
        """supervisord answers (started with the distribution's service when it does not: a host where
        it was installed but never started), or one line saying what is missing."""
        return [
            "command -v supervisorctl >/dev/null 2>&1 || "
            + fail('supervisor is not installed on the host (app.manager = "supervisor"; apt-get install supervisor)'),
            f"if ! {CTL} pid >/dev/null 2>&1; then",
            f"  {START[0]} >/dev/null 2>&1 || {START[1]}",
            f"  i=0; while ! {CTL} pid >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done",
            f"  {CTL} pid >/dev/null 2>&1 || {fail('supervisord does not answer (supervisorctl pid)')}",
            "  " + note("supervisord started"),
            "fi",
        ]

    def install_lines(self, cfg: Config, app) -> list[str]:
        name = q(self.program(cfg))
        return [
            *self.running_lines(),
            *super().install_lines(cfg, app),
            # reread + update: a new program is added (and started: autostart), a changed one restarted
            f'if [ -n "$defined" ] || {CTL} status {name} 2>&1 | grep -q "no such process"; then',
            f'  if ! out=$({CTL} reread 2>&1 && {CTL} update {name} 2>&1); then '
            + fail_expanded("supervisorctl update failed: $out") + "; fi",
            "  defined=changed",
            "fi",
        ]

    def start_lines(self, cfg: Config, app, venv_word: str) -> list[str]:
        name = q(self.program(cfg))
        return [f'out=$({CTL} start {name} 2>&1) || case "$out" in *"already started"*) ;; '
                f'*) {fail_expanded("supervisorctl start failed: $out")};; esac']

    def reload_lines(self, cfg: Config, app) -> list[str]:
        return [f"{CTL} signal {app.reload_signal} {q(self.program(cfg))} >/dev/null"]

    def restart_lines(self, cfg: Config, app) -> list[str]:
        name = q(self.program(cfg))
        return [f'out=$({CTL} restart {name} 2>&1) || {fail_expanded("supervisorctl restart failed: $out")}']

    def stop_lines(self, cfg: Config, app) -> list[str]:
        return [f"{CTL} stop {q(self.program(cfg))} >/dev/null 2>&1 || true"]

    def remove_lines(self, cfg: Config, app) -> list[str]:
        name = q(self.program(cfg))
        return [root.rm(self.definition_path(cfg)),
                f"if {CTL} pid >/dev/null 2>&1; then {CTL} reread >/dev/null; {CTL} update {name} >/dev/null; fi"]

    def log_files(self, cfg: Config, app) -> dict[str, str]:
        """The program's stdout and stderr (stdout_logfile): what the app server prints before (or instead
        of) writing its own log."""
        return {"supervisor": app.paths(Layout(cfg.paths.deploy_to)).log + ".out"}

    def state_argv(self, cfg: Config) -> list[str] | None:
        return ["sudo", "-n", root.BINARIES["supervisorctl"], "status", self.program(cfg)]

    def root_lines(self, cfg: Config) -> list[str]:
        from fabdeploy import appserver
        name = self.program(cfg)
        return [*super().root_lines(cfg), *START, *[root.root("supervisorctl", *a) for a in (
            ("status", name), ("start", name), ("restart", name),
            ("signal", appserver.of(cfg).reload_signal, name))]]

    def switch_root_lines(self, cfg: Config) -> list[str]:
        name = self.program(cfg)
        return [*super().switch_root_lines(cfg), *[root.root("supervisorctl", *a) for a in (
            ("pid",), ("reread",), ("update", name), ("stop", name))]]
