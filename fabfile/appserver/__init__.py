"""App servers: what runs the Django project on an app host, one module each, chosen by `[app] server`.

An app server module provides an AppServer (base.py): the config files it renders into each release, the
line that installs them, start-or-reload and stop lines with its readiness wait, the pid it runs as, its
log, its pip requirement, the system packages it needs, its config section, and how nginx talks to it. The
pipeline's steps only talk to `of(cfg)`; adding one is a new module here and a line in SERVERS.
"""
from __future__ import annotations

from fabdeploy.appserver.base import AppServer
from fabdeploy.appserver.gunicorn import Gunicorn
from fabdeploy.appserver.uwsgi import UWSGI

SERVERS: dict[str, AppServer] = {
    "uwsgi": UWSGI(),
    "gunicorn": Gunicorn(),
}


def of(cfg) -> AppServer:
    """The app server a config chose ([app] server)."""
    return SERVERS[cfg.app.server]
