"""The process-manager interface: what starts the app server, asks it to reload or stop, and brings it back
after a reboot. The app server (appserver/) knows its config, its signals and when its workers are ready;
the manager only knows how to run a program. `[app] manager` chooses one (manager/__init__.py).

Every manager runs the app server through the stable link `<shared/config>/<server>-venv` (set to the
release's virtualenv before each start or reload), so its definition (a supervisor program, a systemd unit,
an emperor vassal) does not change from one release to the next and installing it again is a no-op.
"""
from __future__ import annotations

from dataclasses import dataclass

from fabdeploy.config import Config
from fabdeploy.hosts.layout import Layout
from fabdeploy.remote.markers import fail, note
from fabdeploy.remote import root
from fabdeploy.remote.shell import q, write_file

USER_PLACEHOLDER = "@fabdeploy-user@"  # in a definition: the deploy user, filled in on the host
MANAGED = "Managed by fabdeploy"  # the first line of every definition fabdeploy writes


@dataclass(frozen=True)
class LogFilter:
    """The lines of a shared log that are about one project (`fab logs`): from the journal of `unit` where
    systemd runs (the manager started it with systemctl there), else from `path`; `pattern`, an extended
    regular expression (grep -E), picks the lines."""

    label: str
    path: str
    unit: str
    pattern: str


class Manager:
    """One process manager. Subclasses set the attributes and implement what raises."""

    name = ""  # as in `[app] manager`
    title = ""  # for messages
    daemon = False  # the app server daemonizes itself (its config says so); else it runs in the foreground
    journal = False  # its output goes to the manager's log (journald), not the app server's own log file
    system_packages: tuple[str, ...] = ()  # Debian packages it needs on the host

    def refuse(self, server) -> str | None:
        """Why this manager cannot run that app server (a config error), or None."""
        if not self.daemon and not server.managed:
            return (f'"{self.name}" cannot run {server.title} yet (app.server = "{server.name}" runs detached '
                    'with its own pidfile): choose app.manager = "pidfile"')
        return None

    def definition_path(self, cfg: Config) -> str:
        """Where its definition of this project lives on the host ("" when it has none)."""
        return ""

    def definition(self, cfg: Config, app) -> str:
        """Its definition of this project (the file at definition_path)."""
        return ""

    def install_lines(self, cfg: Config, app) -> list[str]:
        """Before a start or reload: the manager itself is up and its definition of the project is the one
        this config gives (written as root only when it differs; $defined is "changed" or "")."""
        path = self.definition_path(cfg)
        if not path:
            return ["defined="]
        staged = f"{Layout(cfg.paths.deploy_to).config}/{self.name}.definition"
        return [
            # never over a file someone else wrote (another program, a system unit of the same name)
            f"if [ -e {q(path)} ] && ! grep -qs {q(MANAGED)} {q(path)}; then "
            + fail(f"{path} exists and was not written by fabdeploy: rename the project (project.name) or "
                   "remove that file") + "; fi",
            *write_file(staged, self.definition(cfg, app), mode="0644"),
            f'sed -i "s/{USER_PLACEHOLDER}/$(id -un)/" {q(staged)}',
            f"if cmp -s {q(staged)} {q(path)}; then defined=; else",
            f"  {self.install_command(cfg)} && defined=changed && "
            + note(f"{self.title}: {path} written"),
            "fi",
        ]

    def start_lines(self, cfg: Config, app, venv_word: str) -> list[str]:
        """Start the app server (not running now)."""
        raise NotImplementedError

    def reload_lines(self, cfg: Config, app) -> list[str]:
        """Ask the running master ($pid) to reload gracefully (the app server's reload signal)."""
        raise NotImplementedError

    def restart_lines(self, cfg: Config, app) -> list[str]:
        """Stop the running master and start it again (an app server without a graceful reload, or whose
        command line changed)."""
        raise NotImplementedError

    def stop_lines(self, cfg: Config, app) -> list[str]:
        """Ask the running master ($pid) to stop, for good (the manager must not start it again)."""
        raise NotImplementedError

    def stopped_lines(self, cfg: Config, app) -> list[str]:
        """A stop that finds the app server not running: keep the manager from starting it again (e.g. a
        crashed master it is about to restart)."""
        return []

    def remove_lines(self, cfg: Config, app) -> list[str]:
        """When a host switches to another manager: its definition of the project removed (the caller has
        stopped the app server already)."""
        path = self.definition_path(cfg)
        return [root.rm(path)] if path else []

    def install_command(self, cfg: Config) -> str:
        """root installs the definition the deploy user staged (a fixed path per project)."""
        staged = f"{Layout(cfg.paths.deploy_to).config}/{self.name}.definition"
        return root.install(staged, self.definition_path(cfg), parents=True)

    def root_lines(self, cfg: Config) -> list[str]:
        """Every root command this manager runs for the project (the drop-in of fab sudoers lists them)."""
        return [self.install_command(cfg), *self.switch_root_lines(cfg)] if self.definition_path(cfg) else []

    def switch_root_lines(self, cfg: Config) -> list[str]:
        """The root commands a host switching away from this manager runs (its stop and remove lines)."""
        return [root.rm(self.definition_path(cfg))] if self.definition_path(cfg) else []

    def boot_lines(self, cfg: Config, app) -> list[str]:
        """What brings the app server back after a reboot, where the manager itself does not (supervisord's
        autostart and an enabled systemd unit do: nothing to add). Run after a deploy's restart and after
        `fab start|restart` (steps/activate.restart, steps/control.phases)."""
        return []

    def log_files(self, cfg: Config, app) -> dict[str, str]:
        """What it writes about this project in files of its own beyond the app server's log ({label: path},
        shown by `fab logs`)."""
        return {}

    def log_filter(self, cfg: Config) -> LogFilter | None:
        """A log it shares with other projects, of which `fab logs` shows the lines about this one."""
        return None

    def journal_argv(self, cfg: Config) -> list[str]:
        """(journal managers) the command whose output is the app server's log, for `fab logs`."""
        raise NotImplementedError

    def state_argv(self, cfg: Config) -> list[str] | None:
        """A command (argv, run on the host by `fab status`) whose output's second word is the manager's state
        of the program (RUNNING, STOPPED, active...), or None."""
        return None
