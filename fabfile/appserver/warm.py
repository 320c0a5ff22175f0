"""Warm workers (`[app] warm_workers`, issue 16): a new uWSGI or gunicorn master answers one GET of
health.path, in process, after it has loaded the app and before it forks its workers (templates/warm.py.j2,
written into every release as fabdeploy_warm.py); its workers inherit what the GET loaded.

A new process's first request loads what Django loads lazily (the URLconf and the views' modules, templates,
translation catalogs, the database connection): measured 118-194 ms on the benchmark's lab hosts under a
deploy's load, 2-4 ms for the next. Each worker answered its own GET until the ninth session; one GET in
the master (its database connections and caches closed after it, as Django's request_finished does) costs a
worker's share of that at ten hosts on two cores, and the workers share the loaded pages copy-on-write.
Started early (appserver/beside.py), the new master loads the app while the deploy still runs collectstatic
and check --deploy; its GET waits for the end of the django phase (DONE: a GET before the static files are
collected would leave ManifestStaticFilesStorage's manifest empty), then it forks. uWSGI imports the module
(`import = fabdeploy_warm`, before the app), which watches for the import of the WSGI module and warms up once
that has run (the module's own errors stay uWSGI's); gunicorn's config calls it from when_ready when it
preloads the app (its daemon mode), else from post_worker_init in each worker. A master forks only once its
GET has ended (past TIMEOUT: one line on stderr, and it waits on). Workers of a master that did not answer it
(lazy-apps, no preload) answer their own. ASGI servers (and gunicorn running app.asgi) are
not warmed. Under uWSGI the ini also sets skip-atexit-teardown with the module, whose uwsgi.atexit does what an
app needs of a worker's exit (its own uwsgi.atexit, Python's atexit functions, connections closed, output
flushed) without the interpreter's teardown (README: the tenth session's speed section).
"""
from __future__ import annotations

from fabdeploy.config import Config
from fabdeploy.hosts.layout import Layout
from fabdeploy.local.render import render
from fabdeploy.remote.shell import new_file, q

MODULE = "fabdeploy_warm"  # the module's name in each release (on the app server's Python path)
TIMEOUT = 10  # seconds a worker waits for its own warm-up at most before it serves anyway (a master: then it says so)
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
