"""No process manager: the app server daemonizes itself and writes its pidfile (the classic setup); fabdeploy
starts, reloads and stops it with the app server's own commands, and an @reboot line of cron starts it at
boot (boot_cron.py)."""
from __future__ import annotations

from fabdeploy.config import Config
from fabdeploy.manager import boot_cron
from fabdeploy.manager.base import Manager


class Pidfile(Manager):
    name = "pidfile"
    title = "pidfile"
    daemon = True

    def start_lines(self, cfg: Config, app, venv_word: str) -> list[str]:
        return app.daemon_start_lines(cfg, venv_word)

    def reload_lines(self, cfg: Config, app) -> list[str]:
        return app.reload_command(cfg)

    def stop_lines(self, cfg: Config, app) -> list[str]:
        return app.stop_command(cfg)

    def boot_lines(self, cfg: Config, app) -> list[str]:
        return boot_cron.install_lines(cfg, app)

    def remove_lines(self, cfg: Config, app) -> list[str]:
        return boot_cron.remove_lines(cfg)
