"""hypercorn as an app server of its own (`[app] server = "hypercorn"`, `[hypercorn]`): `hypercorn --workers N`
runs `[app] asgi` through the config module (appserver/asgi.py), on a unix socket in shared/run (660, nginx
group) or address:port behind load balancers.

Reload: SIGHUP. hypercorn's master (hypercorn/run.py) then asks every worker to shut down gracefully (each
finishes its requests, within graceful_timeout), waits for them, and starts new ones on the socket it keeps:
new connections wait in the socket's backlog meanwhile (none is refused), and the new workers import the live
config module, so the new release. A worker that cannot load the app ends the master: the start or reload
fails and the deploy reverts.
"""
from __future__ import annotations

from fabdeploy.appserver.asgi import AsgiServer, option_words, pool_keys
from fabdeploy.appserver.base import common_keys
from fabdeploy.config import Config
from fabdeploy.config.checks import _int
from fabdeploy.config.schema import Key
from fabdeploy.hosts.roles import Server
from fabdeploy.remote.shell import q


class Hypercorn(AsgiServer):
    name = "hypercorn"  # (title, section, process and config module named after it: AsgiServer)
    graceful_signal = "HUP"

    keys = {  # [hypercorn]
        **pool_keys(),  # (keepalive: --keep-alive)
        "read_timeout": Key(0, _int(0, 86400)),  # 0: none
        **common_keys("hypercorn"),
    }

    def foreground_argv(self, cfg: Config, venv_word: str, server: Server | None = None) -> list[str]:
        h = cfg.hypercorn
        listen = self.listen(cfg, server)
        bind = "unix:" + listen if listen.startswith("/") else listen
        return [f"{venv_word}/bin/hypercorn", "--bind", q(bind), "--workers", str(h.workers),
                "--graceful-timeout", str(h.graceful_timeout), "--keep-alive", str(h.keepalive),
                *(["--read-timeout", str(h.read_timeout)] if h.read_timeout else []),
                *(["--max-requests", str(h.max_requests)] if h.max_requests else []),
                "--backlog", str(h.backlog), "--error-logfile", "-", *option_words(h.options),
                # (a path: hypercorn imports the module from its directory)
                q(f"{self.app_dir(cfg)}/{self.module}:application")]
