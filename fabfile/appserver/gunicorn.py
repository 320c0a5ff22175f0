"""gunicorn, the second app server: its config (a Python file), a unix socket in shared/run (660, nginx
group) or address:port behind balancers, nginx in front with proxy_pass, and the graceful reload that really
loads the new release.

The reload is gunicorn's USR2 upgrade: the master re-execs itself (python + bin/gunicorn, read again from
disk, with the live config) and hands the new master its listening socket, so no connection is refused;
once every new worker runs the release, the old master gets TERM (its workers finish their requests). HUP
would keep the old interpreter, its virtualenv and whatever the master imported (gunicorn#394). The master
runs `python bin/gunicorn` through a link to the release's virtualenv (shared/config/gunicorn-venv), so the
re-exec starts the new release's virtualenv, not the one the first start resolved.

With `[app] asgi` it runs that ASGI application with uvicorn's gunicorn worker (`uvicorn_worker.UvicornWorker`,
from the uvicorn-worker package: uvicorn's own `uvicorn.workers` is deprecated), installed with it; the same
reload, socket and readiness wait apply.
"""
from __future__ import annotations

import re

from fabdeploy import manager
from fabdeploy.appserver import beside, warm
from fabdeploy.appserver.base import AppServer, common_keys
from fabdeploy.config import Config
from fabdeploy.config.checks import _int, _str
from fabdeploy.config.schema import Key
from fabdeploy.hosts.layout import SETTINGS_MODULE, Layout
from fabdeploy.hosts.roles import Server
from fabdeploy.local.render import render
from fabdeploy.model import Release
from fabdeploy.remote.markers import fail_expanded, note
from fabdeploy.remote.shell import ALIVE_FN, AS_APP, CHILDREN_FN, q


UVICORN_WORKER = "uvicorn_worker.UvicornWorker"
# the pip requirements a worker class's top package needs beside gunicorn
WORKER_PACKAGES = {"uvicorn_worker": ("uvicorn-worker",), "uvicorn": ("uvicorn",)}


class Gunicorn(AppServer):
    name = "gunicorn"
    title = "gunicorn"
    section = "gunicorn"
    process = "gunicorn"  # the config names the master so (/proc/<pid>/comm); workers inherit it
    protocol = "http"
    interface = "both"  # project.wsgi, or app.asgi when set (with UVICORN_WORKER)
    config_name = "gunicorn.conf.py"
    # the user's [django] env in the config's raw_env (masked in --plan's diff; not the two fabdeploy sets)
    env_line = re.compile(r"""^(\s+['"])(?!DJANGO_SETTINGS_MODULE=|FABDEPLOY_)([A-Za-z_][A-Za-z0-9_]*)=(.*)$""")

    keys = {  # [gunicorn]
        "workers": Key(4, _int(1, 1024)),
        "threads": Key(1, _int(1, 1024)),  # > 1: the gthread worker, else sync
        "timeout": Key(30, _int(0, 86400)),
        "graceful_timeout": Key(30, _int(1, 3600)),
        "max_requests": Key(5000, _int(0, 10_000_000)),
        "max_requests_jitter": Key(500, _int(0, 10_000_000)),
        "backlog": Key(1024, _int(16, 65535)),
        # "" = sync (gthread with threads > 1), or UVICORN_WORKER with app.asgi; any dotted worker class
        "worker_class": Key("", _str(re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"),
                                     "a worker class like \"gthread\" or \"uvicorn_worker.UvicornWorker\"")),
        **common_keys("gunicorn"),
    }

    def worker_class(self, cfg: Config) -> str:
        """The worker class it runs: [gunicorn] worker_class, else uvicorn's worker for app.asgi, else gthread
        (threads > 1) or sync."""
        if cfg.gunicorn.worker_class:
            return cfg.gunicorn.worker_class
        if cfg.app.asgi:
            return UVICORN_WORKER
        return "gthread" if cfg.gunicorn.threads > 1 else "sync"

    def requirements(self, cfg: Config) -> list[str]:
        """gunicorn, and the package of uvicorn's worker when that is the worker class."""
        top = self.worker_class(cfg).split(".")[0]
        return [self.requirement(cfg), *WORKER_PACKAGES.get(top, ())]

    def render_config(self, cfg: Config, rel: Release, server: Server | None = None) -> str:
        lay = Layout(cfg.paths.deploy_to)
        p = self.paths(lay)
        g = cfg.gunicorn
        mgr = manager.of(cfg)
        return render(
            "gunicorn.conf.py.j2", daemon=mgr.daemon, journal=mgr.journal, name=cfg.project.name,
            release_path=lay.release(rel.id), wsgi=cfg.app.asgi or cfg.project.wsgi, worker_class=self.worker_class(cfg),
            settings_module=SETTINGS_MODULE, release_id=rel.id, env=cfg.django.env, socket=self.bind(cfg, server),
            backlog=g.backlog, workers=g.workers, threads=g.threads, timeout=g.timeout,
            graceful_timeout=g.graceful_timeout, max_requests=g.max_requests,
            max_requests_jitter=g.max_requests_jitter if g.max_requests else 0, pidfile=p.pidfile, logfile=p.log,
            options=g.options, warm=warm.import_name(cfg))

    def bind(self, cfg: Config, server: Server | None) -> str:
        """gunicorn's bind: "unix:/path" for nginx on the same host, else address:port."""
        sock = self.listen(cfg, server)
        return "unix:" + sock if sock.startswith("/") else sock

    def foreground_argv(self, cfg: Config) -> list[str]:
        lay = Layout(cfg.paths.deploy_to)
        link = self.venv_link(lay)
        return [q(link + "/bin/python"), q(link + "/bin/gunicorn"), "-c", q(self.paths(lay).config)]

    def daemon_start_lines(self, cfg: Config, venv_word: str) -> list[str]:
        lay = Layout(cfg.paths.deploy_to)
        p = self.paths(lay)
        return [f"{AS_APP} rm -f {q(p.socket)} {q(p.pidfile + '.2')}",
                # (from a directory that outlives releases: the re-exec goes back to it first)
                f"(cd {q(lay.deploy_to)} && {AS_APP} {' '.join(self.foreground_argv(cfg))})"]

    def reload_lines(self, cfg: Config, release_word: str, venv_word: str, label: str) -> list[str]:
        """Start gunicorn or reload it gracefully, and wait until the master serving the socket has all its
        workers on the release: without a process manager the USR2 upgrade (upgrade_lines), under one a HUP
        (managed_lines)."""
        if beside.applies(cfg, self):
            return beside.swap_lines(cfg, self, release_word, venv_word, label)
        if manager.of(cfg).daemon:
            return self.upgrade_lines(cfg, release_word, venv_word, label)
        return self.managed_lines(cfg, release_word, venv_word, label)

    def want_lines(self, cfg: Config) -> list[str]:
        """Set $want: the workers the live config starts."""
        p = self.paths(Layout(cfg.paths.deploy_to))
        return [f"want=$(sed -n 's/^workers = \\([0-9][0-9]*\\)$/\\1/p' {q(p.config)} | tail -n 1); want=${{want:-1}}"]

    def slot_start_lines(self, cfg: Config, venv_word: str, s: str, sl) -> list[str]:
        """Start a master in slot s (appserver/beside.py): the live config with the slot's socket and pidfile
        on the command line (which wins over the file), run by the release's own virtualenv; SIGTERM is its
        graceful stop."""
        lay = Layout(cfg.paths.deploy_to)
        p = self.paths(lay)
        return [f"(cd {q(lay.deploy_to)} && {AS_APP} {venv_word}/bin/python {venv_word}/bin/gunicorn -c {q(p.config)} "
                f'--bind unix:{sl.sock(s)} --pid {sl.pid(s)})']

    def managed_lines(self, cfg: Config, release_word: str, venv_word: str, label: str) -> list[str]:
        """Under a process manager: start it, or HUP the master, which reads its config again (chdir: the new
        release) and replaces every worker; the workers load the app (no preload under a manager) from the
        new release, and its virtualenv through venv_link (the master's sys.prefix is the link)."""
        p = self.paths(Layout(cfg.paths.deploy_to))
        return [
            *self.managed_reload_lines(cfg, venv_word),
            f"want=$(sed -n 's/^workers = \\([0-9][0-9]*\\)$/\\1/p' {q(p.config)} | tail -n 1); want=${{want:-1}}",
            *self.ready_lines(cfg, release_word, label),
            note(f"gunicorn $action (master $pid, $n workers on {label})"),
        ]

    def upgrade_lines(self, cfg: Config, release_word: str, venv_word: str, label: str) -> list[str]:
        """Start gunicorn, or upgrade it in place (USR2, then TERM to the old master), and wait until the
        master serving the socket has all its workers on the release.

        release_word/venv_word are shell words (quoted paths, or "$R"/"$V" in a rollback that picks on the
        host).
        """
        lay = Layout(cfg.paths.deploy_to)
        p = self.paths(lay)
        new_pid = q(p.pidfile + ".2")  # the upgraded master's pidfile until the old one is gone
        stop_steps = (cfg.gunicorn.graceful_timeout + 10) * 10
        return [
            *self.as_app_lines(cfg),
            ALIVE_FN,
            CHILDREN_FN,
            *self.link_lines(cfg, venv_word),
            *manager.switch_lines(cfg, self),
            f"oldm=$(alive {q(p.pidfile)} gunicorn || true)",
            *self.foreign_lines(cfg, "oldm"),
            f"want=$(sed -n 's/^workers = \\([0-9][0-9]*\\)$/\\1/p' {q(p.config)} | tail -n 1); want=${{want:-1}}",
            'old=" "',  # (no worker of the new master is one being replaced)
            'if [ -n "$oldm" ]; then',
            f'  {AS_APP} kill -USR2 "$oldm"',
            "  action=reloaded",
            "else",
            *["  " + ln for ln in self.daemon_start_lines(cfg, venv_word)],
            "  action=started",
            "fi",
            # the new master: the upgraded one (pidfile.2, or pidfile once promoted), or the one just started
            *self.ready_lines(cfg, release_word, label, gone_limit=None, hint="${oldm:+ (the old master $oldm still serves)}",
                              pid=[f'pid=$(alive {new_pid} gunicorn || alive {q(p.pidfile)} gunicorn || true)',
                                   '[ "$pid" != "$oldm" ] || pid=']),
            # the old master: stop it gracefully (its workers finish their requests), and wait until it is
            # gone and the new one has taken over the pidfile
            'if [ -n "$oldm" ]; then',
            f'  {AS_APP} kill -TERM "$oldm" 2>/dev/null || true',
            "  i=0",
            f'  while {{ [ -d "/proc/$oldm" ] || [ "$(alive {q(p.pidfile)} gunicorn)" != "$pid" ]; }} '
            f"&& [ $i -lt {stop_steps} ]; do i=$((i + 1)); sleep 0.1; done",
            '  if [ -d "/proc/$oldm" ]; then '
            + fail_expanded(f"the old gunicorn master $oldm did not stop within {cfg.gunicorn.graceful_timeout + 10}s")
            + "; fi",
            "fi",
            note(f"gunicorn $action (master $pid, $n workers on {label})"),
        ]
