"""daphne (Django Channels' server) as an app server of its own (`[app] server = "daphne"`, `[daphne]`): one
process (Twisted) runs `[app] asgi` through the config module (appserver/asgi.py), on a unix socket in
shared/run (a Twisted endpoint with mode 660; its group the nginx group) or address:port behind load balancers.

daphne has no workers and no graceful reload: a reload is a stop and a start (connections are refused or
fail in between; the README says so). Under traffic it does not exit on SIGTERM (it keeps accepting while it
waits for its applications): a stop kills it after application_close_timeout + 5 seconds (stop_timeout). Run several hosts behind load balancers, or another server, when that
matters.
"""
from __future__ import annotations

from fabdeploy.appserver.asgi import AsgiServer, option_words, tcp_parts
from fabdeploy.appserver.base import common_keys
from fabdeploy.config import Config
from fabdeploy.config.checks import _int
from fabdeploy.config.schema import Key
from fabdeploy.hosts.roles import Server
from fabdeploy.remote.shell import q


class Daphne(AsgiServer):
    name = "daphne"  # (title, section, process and config module named after it: AsgiServer)
    single_process = True

    keys = {  # [daphne]
        "http_timeout": Key(0, _int(0, 86400)),  # 0: none
        "application_close_timeout": Key(10, _int(1, 3600)),
        "websocket_timeout": Key(86400, _int(-1, 7 * 86400)),
        **common_keys("daphne"),
    }

    def stop_timeout(self, cfg: Config) -> int:
        """SIGTERM, then SIGKILL after application_close_timeout + 5 s: under steady traffic daphne keeps
        accepting while it waits for its applications and never exits on its own (seen in the lab: killed
        after 30 s, every time)."""
        return cfg.daphne.application_close_timeout + 5

    def foreground_argv(self, cfg: Config, venv_word: str, server: Server | None = None) -> list[str]:
        d = cfg.daphne
        listen = self.listen(cfg, server)
        if listen.startswith("/"):
            endpoint = f"unix:{listen}:mode=660:lockfile=0"
        else:
            addr, port = tcp_parts(listen)
            endpoint = f"tcp:port={port}:interface={addr.replace(':', chr(92) + ':')}"
        return [f"{venv_word}/bin/daphne", "-e", q(endpoint), "--proxy-headers",
                *(["--http-timeout", str(d.http_timeout)] if d.http_timeout else []),
                "--application-close-timeout", str(d.application_close_timeout),
                "--websocket_timeout", str(d.websocket_timeout), *option_words(d.options),
                f"{self.module}:application"]
