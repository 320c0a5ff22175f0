"""Where things live on a host: the release layout under deploy_to."""
from __future__ import annotations

import re
from dataclasses import dataclass

SETTINGS_MODULE = "fabdeploy_settings"  # the production settings module written into each release
RELEASE_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{7,12}$")
RELEASE_GLOB_ERE = "^[0-9]{8}T[0-9]{6}Z-[0-9a-f]+$"


@dataclass(frozen=True)
class Layout:
    deploy_to: str

    @property
    def releases(self) -> str:
        return f"{self.deploy_to}/releases"

    @property
    def shared(self) -> str:
        return f"{self.deploy_to}/shared"

    @property
    def current(self) -> str:
        return f"{self.deploy_to}/current"

    @property
    def venvs(self) -> str:
        return f"{self.deploy_to}/venvs"

    @property
    def tmp(self) -> str:
        return f"{self.deploy_to}/tmp"

    @property
    def bin(self) -> str:
        """Commands for people on the host: bin/manage runs manage.py in the live release (production settings)."""
        return f"{self.deploy_to}/bin"

    @property
    def manage(self) -> str:
        return f"{self.bin}/manage"

    @property
    def run(self) -> str:
        return f"{self.shared}/run"

    @property
    def log(self) -> str:
        return f"{self.shared}/log"

    @property
    def config(self) -> str:
        return f"{self.shared}/config"

    @property
    def static(self) -> str:
        """Per-release static roots (static/<release-id>) and the `current` link nginx serves."""
        return f"{self.shared}/static"

    @property
    def env_file(self) -> str:
        return f"{self.config}/app.env"

    @property
    def secret_key(self) -> str:
        return f"{self.shared}/secret_key"

    def release(self, release_id: str) -> str:
        return f"{self.releases}/{release_id}"

    def venv(self, venv_hash: str) -> str:
        return f"{self.venvs}/{venv_hash}"

    def staging(self, release_id: str) -> str:
        return f"{self.tmp}/{release_id}"

    @property
    def trash(self) -> str:
        """What cleanup removes, renamed here first and removed in the background (steps/cleanup.py)."""
        return f"{self.deploy_to}/.fabdeploy-trash"


NGINX_CONF = "/etc/nginx/nginx.conf"  # the host's main nginx config (its user, pid and includes)
NGINX_PID = "/run/nginx.pid"  # where nginx keeps its pid when its config does not say
VENV_COMPLETE = ".fabdeploy-complete"  # in a virtualenv: built completely (a half-built one is never used)


def nginx_site_paths(layout_kind: str, name: str) -> tuple[str, str | None]:
    """(site file, enabled link or None) for the host's nginx layout."""
    if layout_kind == "sites":
        return f"/etc/nginx/sites-available/{name}", f"/etc/nginx/sites-enabled/{name}"
    return f"/etc/nginx/conf.d/{name}.conf", None
