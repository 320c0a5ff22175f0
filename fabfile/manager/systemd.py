"""systemd: a unit per project (/etc/systemd/system/<project>.service), enabled so it starts at boot, driven
with systemctl (daemon-reload when the unit changed, enable, start, reload, stop). The app server runs in
the foreground as the app user ([app] user) and tells systemd when it is ready (Type=notify: uWSGI and gunicorn both
speak sd_notify); its output goes to the journal (`fab logs` reads it with journalctl).

A reload is `systemctl reload` (ExecReload: the app server's reload signal to $MAINPID): the master keeps
its pid, which systemd tracks (gunicorn's USR2 re-exec would leave systemd a dead main process).
"""
from __future__ import annotations

from fabdeploy.config import Config
from fabdeploy.hosts.layout import Layout
from fabdeploy.appserver.base import app_user
from fabdeploy.manager.base import Manager
from fabdeploy.remote import root
from fabdeploy.remote.markers import fail_expanded, note
from fabdeploy.remote.shell import q

UNIT_DIR = "/etc/systemd/system"
CTL = root.root("systemctl")


class Systemd(Manager):
    name = "systemd"
    title = "systemd"
    journal = True

    def unit(self, cfg: Config) -> str:
        return f"{cfg.project.name}.service"

    def definition_path(self, cfg: Config) -> str:
        return f"{UNIT_DIR}/{self.unit(cfg)}"

    def definition(self, cfg: Config, app) -> str:
        lay = Layout(cfg.paths.deploy_to)
        return "\n".join([
            f"# Managed by fabdeploy for {cfg.project.name} ({app.title}); rewritten by every deploy.",
            "[Unit]",
            f"Description={cfg.project.name} ({app.title}, deployed by fabdeploy)",
            "After=network.target",
            "",
            "[Service]",
            *(["Type=notify", "NotifyAccess=all"] if app.notify else ["Type=exec"]),
            f"User={app_user(cfg)}",
            f"WorkingDirectory={lay.deploy_to}",
            "ExecStart=" + " ".join(app.manager_argv(cfg)),
            f"ExecReload=/bin/kill -{app.reload_signal} $MAINPID",
            f"KillSignal=SIG{app.stop_signal}",
            "KillMode=mixed",
            f"TimeoutStartSec={app.reload_timeout(cfg)}",
            f"TimeoutStopSec={app.reload_timeout(cfg)}",
            "Restart=always",
            "RestartSec=1",
            "UMask=0027",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ])

    def running_lines(self) -> list[str]:
        return ["[ -d /run/systemd/system ] || "
                + fail_expanded("systemd is not running on this host (app.manager = \"systemd\"): "
                                "choose another manager")]

    def install_lines(self, cfg: Config, app) -> list[str]:
        unit = q(self.unit(cfg))
        return [
            *self.running_lines(),
            *super().install_lines(cfg, app),
            f'if [ -n "$defined" ]; then {CTL} daemon-reload || {fail_expanded("systemctl daemon-reload failed")}; fi',
            f"{CTL} is-enabled --quiet {unit} 2>/dev/null || {{ {CTL} enable --quiet {unit} && "
            + note(f"{self.unit(cfg)} enabled (started at boot)") + "; }",
            # (a changed unit applies at the next start: a running master is restarted below, not reloaded)
            f'if [ -n "$defined" ] && {CTL} is-active --quiet {unit}; then {CTL} restart {unit} || '
            + fail_expanded(f"systemctl restart {self.unit(cfg)} failed") + "; fi",
        ]

    def start_lines(self, cfg: Config, app, venv_word: str) -> list[str]:
        unit = q(self.unit(cfg))
        return [f"{CTL} start {unit} || {fail_expanded(f'systemctl start {self.unit(cfg)} failed')}"]

    def reload_lines(self, cfg: Config, app) -> list[str]:
        return [f"{CTL} reload {q(self.unit(cfg))}"]

    def restart_lines(self, cfg: Config, app) -> list[str]:
        unit = q(self.unit(cfg))
        return [f"{CTL} restart {unit} || {fail_expanded(f'systemctl restart {self.unit(cfg)} failed')}"]

    def stop_lines(self, cfg: Config, app) -> list[str]:
        return [f"{CTL} stop {q(self.unit(cfg))} 2>/dev/null || true"]

    def remove_lines(self, cfg: Config, app) -> list[str]:
        unit = q(self.unit(cfg))
        return [f"{CTL} disable --quiet {unit} 2>/dev/null || true",
                root.rm(self.definition_path(cfg)),
                f"{CTL} daemon-reload 2>/dev/null || true"]

    def root_lines(self, cfg: Config) -> list[str]:
        unit = self.unit(cfg)
        return [*super().root_lines(cfg), *[root.root("systemctl", *a) for a in (
            ("is-enabled", "--quiet", unit), ("enable", "--quiet", unit), ("is-active", "--quiet", unit),
            ("restart", unit), ("start", unit), ("reload", unit))]]

    def switch_root_lines(self, cfg: Config) -> list[str]:
        unit = self.unit(cfg)
        return [*super().switch_root_lines(cfg), *[root.root("systemctl", *a) for a in (
            ("disable", "--quiet", unit), ("daemon-reload",), ("stop", unit))]]

    def state_argv(self, cfg: Config) -> list[str] | None:
        return ["systemctl", "is-active", self.unit(cfg)]

    def journal_argv(self, cfg: Config) -> list[str]:
        """journalctl's words for the app server's output (fab logs)."""
        return ["sudo", "-n", "journalctl", "--no-pager", "-o", "short-iso", "-u", self.unit(cfg)]
