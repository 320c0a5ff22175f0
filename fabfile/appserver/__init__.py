"""App servers: what runs the Django project on an app host, one module each, chosen by `[app] server`.

An app server module provides an AppServer (base.py): the config files it renders into each release, the
line that installs them, start-or-reload and stop lines with its readiness wait, the pid it runs as, its
log, its pip requirement, the system packages it needs, its config section, and how nginx talks to it. The
pipeline's steps only talk to `of(cfg)`; adding one is a new module here and a line in SERVERS.
"""
from __future__ import annotations

from fabdeploy.appserver.base import AppServer
from fabdeploy.appserver.control import present_lines
from fabdeploy.appserver.daphne import Daphne
from fabdeploy.appserver.gunicorn import Gunicorn
from fabdeploy.appserver.hypercorn import Hypercorn
from fabdeploy.appserver.uvicorn import Uvicorn
from fabdeploy.appserver.uwsgi import UWSGI
from fabdeploy.hosts.layout import Layout
from fabdeploy.remote.shell import q, read_word

SERVERS: dict[str, AppServer] = {
    "uwsgi": UWSGI(),
    "gunicorn": Gunicorn(),
    "uvicorn": Uvicorn(),  # the three ASGI servers: appserver/asgi.py
    "daphne": Daphne(),
    "hypercorn": Hypercorn(),
}


def of(cfg) -> AppServer:
    """The app server a config chose ([app] server)."""
    return SERVERS[cfg.app.server]


def retire_lines(cfg) -> list[str]:
    """Lines that stop every other registered app server this deploy_to still runs (a host whose
    `[app] server` changed): its master and workers gone, its pidfile and socket removed, before the chosen
    one starts (behind load balancers they would share address:port). shared/run is the app user's: its
    files are looked at (once, one sudo for all) and removed as it ($ASAPP). Once done, shared/config/server
    (the deploy user's) names the server, and while it does nothing is looked at."""
    lay = Layout(cfg.paths.deploy_to)
    mine = of(cfg).paths(lay).pidfile
    others = [s for s in SERVERS.values() if s.paths(lay).pidfile != mine]
    # (skipped, and its sudo, while shared/config/server, written once it ran, names this server)
    record, name = q(f"{lay.config}/server"), q(cfg.app.server)  # (the deploy user's)
    return [*of(cfg).as_app_lines(cfg),
            read_word("srv_was", f"{lay.config}/server"),
            f'if [ "$srv_was" != {name} ]; then',
            *["  " + ln for ln in present_lines(cfg, others)],
            *["  " + ln for server in others for ln in server.stop_if_present_lines(cfg)],
            f"  {{ echo {name} > {record}; }} 2>/dev/null || true",
            "fi"]
