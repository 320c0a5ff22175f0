"""Warm workers (`[app] warm_workers`, issue 16): each new uWSGI or gunicorn worker answers one GET of
health.path to itself, in process, before its first request (templates/warm.py.j2, written into every
release as fabdeploy_warm.py).

A new worker's first request loads what Django loads lazily (the URLconf and the views' modules, templates,
translation catalogs, the database connection): measured 118-194 ms on the benchmark's lab hosts under a
deploy's load, 2-4 ms for the next. Started early (appserver/beside.py), the new master forks its workers
while the deploy still runs collectstatic and check --deploy: their warm-up waits for the end of the django
phase (DONE: a GET before the static files are collected would leave ManifestStaticFilesStorage's manifest
empty in that worker), then runs while the config phase and the switch do. uWSGI imports the module (`import = fabdeploy_warm`: before the app;
it only registers a postfork hook); gunicorn's config calls it from post_worker_init. ASGI servers (and
gunicorn running app.asgi) are not warmed.
"""
from __future__ import annotations

from fabdeploy.config import Config
from fabdeploy.hosts.layout import Layout
from fabdeploy.local.render import render
from fabdeploy.remote.shell import new_file, q

MODULE = "fabdeploy_warm"  # the module's name in each release (on the app server's Python path)
TIMEOUT = 10  # seconds a new worker waits for its warm-up at most before it serves anyway
# (in the release) written at the end of the django phase: the release is complete; the warm-up of a master
# started early (before collectstatic) waits for it
DONE = ".fabdeploy/django-done"
SERVERS = ("uwsgi", "gunicorn")


def applies(cfg: Config) -> bool:
    """Whether the app server's new workers warm up: [app] warm_workers, uWSGI or gunicorn running
    project.wsgi (not app.asgi)."""
    return bool(cfg.app.warm_workers) and cfg.app.server in SERVERS and not (cfg.app.server == "gunicorn"
                                                                            and cfg.app.asgi)


def import_name(cfg: Config) -> str:
    """The module the app server's config imports or calls (MODULE), "" when workers do not warm up."""
    return MODULE if applies(cfg) else ""


def module_text(cfg: Config) -> str:
    """fabdeploy_warm.py for this config."""
    from fabdeploy import appserver
    app = appserver.of(cfg)
    return render("warm.py.j2", server=app.name, title=app.title, path=cfg.health.path, wsgi=cfg.project.wsgi,
                  timeout=TIMEOUT, done=DONE)


def done_lines(cfg: Config, release_id: str) -> list[str]:
    """(the end of the django phase) Mark the release complete: warm-ups waiting in a master started early go."""
    if not applies(cfg):
        return []
    return [f": > {q(Layout(cfg.paths.deploy_to).release(release_id) + '/' + DONE)}"]


def release_lines(cfg: Config, release_id: str) -> list[str]:
    """(the code phase) Write fabdeploy_warm.py into the release when workers warm up."""
    if not applies(cfg):
        return []
    return [new_file(f"{Layout(cfg.paths.deploy_to).release(release_id)}/{MODULE}.py", module_text(cfg))]
