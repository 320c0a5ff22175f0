"""uvicorn as an app server of its own (`[app] server = "uvicorn"`, `[uvicorn]`): `uvicorn --workers N` runs
`[app] asgi` through the config module (appserver/asgi.py), on a unix socket in shared/run (660, nginx
group) or address:port behind load balancers.

Reload: SIGHUP. uvicorn's master (its multiprocess supervisor, uvicorn >= 0.30) then replaces its workers one
by one on the socket it keeps: each new worker must be ready before the old one gets SIGTERM (a worker that
is not ready in time aborts the restart and the old ones keep serving). New workers are spawned fresh and
import the live config module, so they run the new release. At least two workers: with one, uvicorn runs
without a master and SIGHUP would end it.
"""
from __future__ import annotations

from fabdeploy.appserver.asgi import AsgiServer, option_words, pool_keys, tcp_parts
from fabdeploy.appserver.base import common_keys
from fabdeploy.config import Config
from fabdeploy.config.checks import _int
from fabdeploy.config.schema import Key
from fabdeploy.hosts.roles import Server
from fabdeploy.remote.shell import q


class Uvicorn(AsgiServer):
    name = "uvicorn"  # (title, section, process and config module named after it: AsgiServer)
    graceful_signal = "HUP"

    keys = {  # [uvicorn]
        # (at least two workers; graceful_timeout: --timeout-graceful-shutdown, keepalive: --timeout-keep-alive,
        # max_requests: --limit-max-requests)
        **pool_keys(min_workers=2),
        "worker_healthcheck": Key(30, _int(1, 3600)),  # --timeout-worker-healthcheck: a new worker's boot
        **common_keys("uvicorn"),
    }

    def foreground_argv(self, cfg: Config, venv_word: str, server: Server | None = None) -> list[str]:
        u = cfg.uvicorn
        listen = self.listen(cfg, server)
        if listen.startswith("/"):
            # only nginx (the socket's group) can connect: trust its X-Forwarded-* headers
            bind = ["--uds", q(listen), "--forwarded-allow-ips", q("*")]
        else:
            addr, port = tcp_parts(listen)
            bind = ["--host", q(addr), "--port", q(port)]
        return [f"{venv_word}/bin/uvicorn", "--app-dir", q(self.app_dir(cfg)), *bind,
                "--workers", str(u.workers), "--timeout-graceful-shutdown", str(u.graceful_timeout),
                "--timeout-keep-alive", str(u.keepalive), "--timeout-worker-healthcheck", str(u.worker_healthcheck),
                "--backlog", str(u.backlog), *(["--limit-max-requests", str(u.max_requests)] if u.max_requests else []),
                "--proxy-headers", *option_words(u.options), f"{self.module}:application"]
