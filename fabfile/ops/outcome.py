"""What a host's deploy ends with (Outcome), what the host threads of one deploy share, and the best-effort
cleanup run that every host kind uses when a deploy stops."""
from __future__ import annotations

import threading
from dataclasses import dataclass

from fabdeploy.config import Config
from fabdeploy.errors import FabdeployError
from fabdeploy.hosts.connect import reconnect
from fabdeploy.remote.runner import run_script
from fabdeploy.remote.script import Script


@dataclass
class Outcome:
    host: str
    release: str = ""
    ok: bool = False
    error: str = ""
    duration: float = 0.0
    url: str = ""
    unchanged: bool = False  # the live release already was this revision with these configs


class Shared:
    """State shared by the host threads of one deploy: one wheel build and one bundle per variant."""

    def __init__(self):
        self.lock = threading.Lock()
        self.wheels: dict[tuple, list] = {}
        self.bundles: dict[tuple, bytes] = {}


def site_url(cfg: Config, host: str) -> str:
    names = [n for n in cfg.server_names if n != "_" and not n.startswith(("~", "*", ".")) and "*" not in n]
    name = names[0] if names else host
    listen = str(cfg.nginx.listen)
    port = listen.rsplit(":", 1)[-1]
    return f"http://{name}/" if port == "80" else f"http://{name}:{port}/"


def run_cleanup(hd, script: Script, timeout: float = 60):
    """Run a cleanup script on a host, best effort, over a fresh connection when the old one died: its
    RunResult, or None (and a line saying the lock stays) when the host cannot be reached."""
    try:
        conn = hd.conn if hd.conn.is_connected else reconnect(hd.conn, hd.cfg)
        return run_script(conn, script, host=hd.host, timeout=timeout)
    except FabdeployError:
        hd.printer.line(hd.host, "could not clean up (host unreachable): the lock stays until `fab unlock`")
        return None
