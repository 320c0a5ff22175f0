"""What the ASGI app servers uvicorn, daphne and hypercorn share (one module each beside this one).

None of them has a daemon mode, and they have no config file fabdeploy could hand over per release. So each
release stages one small Python module, its config (`fabdeploy_<server>.py`, installed in shared/config at
the switch like every app server's config): the server imports it in each worker as its application. It
moves the worker into its release (its cwd: what the readiness wait checks), sets the production
environment, names the worker after the server (/proc/<pid>/comm) and loads `[app] asgi`. Its `# run:` line
is the server's command line in the foreground (`foreground_argv`, "$V" its virtualenv): a start runs exactly
that line of the live config, detached, with a pidfile it writes itself (`daemon_lines`); a process manager
can run the same words in the foreground.

A reload is the server's own graceful mechanism when it has one (`graceful_signal`: the master replaces its
workers on the socket it keeps, and each new worker imports the live module, so the new release), else, and
whenever the command line itself changed (another virtualenv, other options), a stop and a start.
"""
from __future__ import annotations

import re

from fabdeploy import manager
from fabdeploy.appserver.base import AppServer
from fabdeploy.config import Config
from fabdeploy.config.checks import _int
from fabdeploy.config.schema import Key
from fabdeploy.hosts.layout import SETTINGS_MODULE, Layout
from fabdeploy.hosts.roles import Server, balanced
from fabdeploy.local.render import render
from fabdeploy.model import Release
from fabdeploy.remote.markers import fail_expanded, note
from fabdeploy.remote.shell import ALIVE_FN, AS_APP, CHILDREN_FN, q, write_file

RUN_PREFIX = "# run: "


class AsgiServer(AppServer):
    protocol = "http"
    interface = "asgi"
    graceful_signal = ""  # the master's signal that replaces every worker on the kept socket ("": none)
    single_process = False  # the master is its only worker (daphne)
    notify = False  # (no sd_notify: under systemd a Type=exec unit; readiness is fabdeploy's own wait)
    # the user's [django] env in the module's ENV list (masked in --plan's diff; not the two fabdeploy sets)
    env_line = re.compile(r"""^(\s+['"])(?!DJANGO_SETTINGS_MODULE=|FABDEPLOY_)([A-Za-z_][A-Za-z0-9_]*)=(.*)$""")

    def __init_subclass__(cls, **kwargs):
        """A server named N (its `name`) is titled N, configured in [N], runs as processes named N, and
        stages its config module as fabdeploy_N.py, unless the class says otherwise."""
        super().__init_subclass__(**kwargs)
        for attr in ("title", "section", "process"):
            if not getattr(cls, attr):
                setattr(cls, attr, cls.name)
        cls.config_name = cls.config_name or f"fabdeploy_{cls.name}.py"

    @property
    def module(self) -> str:
        """The config module's import name (its file: config_name in shared/config)."""
        return self.config_name[:-3]

    def foreground_argv(self, cfg: Config, venv_word: str, server: Server | None = None) -> list[str]:
        """The shell words that run the server in the foreground on the live config (venv_word: a shell word
        naming the virtualenv; server: the host, for its listen address behind load balancers)."""
        raise NotImplementedError

    def expected_workers(self, cfg: Config) -> int:
        """How many workers a ready server has."""
        return 1 if self.single_process else getattr(cfg, self.section).workers

    def workers_fn(self) -> str:
        """`workers <master pid>`: its children named like it (not multiprocessing's helpers), or the master
        itself for a single-process server."""
        if self.single_process:
            return 'workers() { echo "$1"; }'
        return ('workers() { for c in $(children "$1"); do grep -qsx ' + q(self.process)
                + ' "/proc/$c/comm" && echo "$c"; done; true; }')

    def render_config(self, cfg: Config, rel: Release, server: Server | None = None) -> str:
        lay = Layout(cfg.paths.deploy_to)
        module, _, attr = cfg.app.asgi.partition(":")
        return render(
            "asgi_app.py.j2", name=cfg.project.name, title=self.title,
            argv=" ".join(self.foreground_argv(cfg, '"$V"', server)), release_path=lay.release(rel.id),
            settings_module=SETTINGS_MODULE, release_id=rel.id, env=cfg.django.env, process=self.process,
            module=module, attr=attr or "application", workers=self.expected_workers(cfg),
            run_prefix=RUN_PREFIX)

    def app_dir(self, cfg: Config) -> str:
        """Where the config module is imported from (shared/config, the masters' working directory)."""
        return Layout(cfg.paths.deploy_to).config

    def run_fns(self, cfg: Config) -> list[str]:
        """Shell functions: `argv_of V` prints the live config's command line word by word (V: the
        virtualenv), `start_detached V` runs it in its own session with the pidfile and the log."""
        p = self.paths(Layout(cfg.paths.deploy_to))
        read = f"sed -n {q('s/^' + RUN_PREFIX + '//p')} {q(p.config)} | tail -n 1"
        return [f'argv_of() {{ V=$1; eval "set -- $({read})"; printf "%s\\n" "$@"; }}',
                f'start_detached() {{ V=$1; eval "set -- $({read})"; {" ".join(self.daemon_lines(cfg))}; }}']

    def daemon_lines(self, cfg: Config) -> list[str]:
        """The daemon-only part (a process manager does not need it): run "$@" as the app user ($ASAPP),
        detached from the script's session, from shared/config, writing its own pid (exec keeps it) to the
        pidfile in the app user's shared/run, output to the log, which the app user opens (it is the app
        user's: the setup phase gives it to it). umask 117, set after sudo (which applies its own): a unix
        socket the server creates is 660 (its group the nginx group of the setgid shared/run), and so are the
        pidfile and the log; the config module sets the workers' own umask."""
        p = self.paths(Layout(cfg.paths.deploy_to))
        inner = q('umask 117 && exec >> "$1" 2>&1 && echo $$ > "$0" && shift && exec "$@"')
        return [f"(cd {q(self.app_dir(cfg))} && exec setsid nohup {AS_APP} sh -c {inner} "
                f'{q(p.pidfile)} {q(p.log)} "$@" < /dev/null > /dev/null 2>&1 &)']

    def reload_lines(self, cfg: Config, release_word: str, venv_word: str, label: str) -> list[str]:
        """Start the server, or reload it (graceful_signal when the running master has the live command line,
        else stop and start), then wait until every worker runs the release: detached with its own pidfile
        (the pidfile manager: daemon_reload_lines), or through supervisor or systemd (managed_lines)."""
        if manager.of(cfg).daemon:
            return self.daemon_reload_lines(cfg, release_word, venv_word, label)
        return self.managed_lines(cfg, release_word, venv_word, label)

    def same_argv(self, venv_word: str) -> str:
        """A shell condition: the running master ($pid) runs the live config's command line (argv_of)."""
        return (f'[ -n "$pid" ] && [ "$(tr "\\000" "\\n" < "/proc/$pid/cmdline" | tail -n +2)" = '
                f'"$(argv_of {venv_word})" ]')

    def runner_path(self, cfg: Config) -> str:
        """The script a process manager runs (shared/config/<server>-run.sh, runner_text)."""
        return f"{Layout(cfg.paths.deploy_to).config}/{self.name}-run.sh"

    def manager_argv(self, cfg: Config) -> list[str]:
        return ["/bin/sh", q(self.runner_path(cfg))]

    def runner_text(self, cfg: Config) -> str:
        """What a process manager runs, as the app user: the live config's command line with "$V" the
        virtualenv venv_link points at (resolved, so a reload can tell a new one), from shared/config, its
        own pid (exec keeps it: the manager's main pid) in the pidfile, umask 117 (the socket 660), output
        appended to the log unless the manager keeps it (systemd's journal)."""
        lay = Layout(cfg.paths.deploy_to)
        p = self.paths(lay)
        return "\n".join([
            f"# Managed by fabdeploy: runs {self.title} for {cfg.project.name} in the foreground ({manager.of(cfg).title}).",
            "umask 117",
            f"V=$(readlink -f {q(self.venv_link(lay))}) || exit 1",
            f"cd {q(self.app_dir(cfg))} || exit 1",
            f"echo $$ > {q(p.pidfile)} || exit 1",
            *([] if manager.of(cfg).journal else [f"exec >> {q(p.log)} 2>&1"]),
            f'eval "set -- $(sed -n {q("s/^" + RUN_PREFIX + "//p")} {q(p.config)} | tail -n 1)"',
            'exec "$@"',
        ])

    def managed_lines(self, cfg: Config, release_word: str, venv_word: str, label: str) -> list[str]:
        """Under supervisor or systemd: the runner script written, the link to the release's virtualenv set,
        then a start through the manager, or its reload (graceful_signal through the manager: the same master,
        new workers on the release) when the running master has the live command line and the server has
        one, else its restart (daphne; a new virtualenv or other options: a brief outage)."""
        p = self.paths(Layout(cfg.paths.deploy_to))
        graceful = self.same_argv(venv_word) if self.graceful_signal else "false"
        return [
            *write_file(self.runner_path(cfg), self.runner_text(cfg)),
            *self.run_fns(cfg),
            *self.managed_reload_lines(cfg, venv_word, graceful=graceful),
            f"want=$(sed -n 's/^# workers: \\([0-9][0-9]*\\)$/\\1/p' {q(p.config)} | tail -n 1); want=${{want:-1}}",
            *self.ready_lines(cfg, release_word, label),
            *self.socket_mode_lines(cfg),
            note(f"{self.name} $action (master $pid, $n workers on {label})"),
        ]

    def socket_mode_lines(self, cfg: Config) -> list[str]:
        """(uvicorn makes its socket 666: the nginx group's 660, as for every app server)"""
        sock = q(self.paths(Layout(cfg.paths.deploy_to)).socket)
        return [] if balanced(cfg) else [f"! {AS_APP} test -S {sock} || {AS_APP} chmod 660 {sock}"]

    def daemon_reload_lines(self, cfg: Config, release_word: str, venv_word: str, label: str) -> list[str]:
        """The pidfile manager: the server detached (start_detached), a reload its own signal. Everything that touches the
        running server (its pidfile, socket, log, workers' cwd, signals, the start) runs as the app user
        ($ASAPP); a master of another user (from before [app] user) is stopped and started again as it."""
        lay = Layout(cfg.paths.deploy_to)
        p = self.paths(lay)
        graceful = [
            f"if {self.same_argv(venv_word)}; then",
            '  old=" $(workers "$pid" | tr "\\n" " ") "',
            f'  {AS_APP} kill -{self.graceful_signal} "$pid"',
            "  action=reloaded",
            "else",
        ] if self.graceful_signal else ["if true; then"]
        return [
            *self.as_app_lines(cfg),
            ALIVE_FN,
            CHILDREN_FN,
            *manager.switch_lines(cfg, self),
            self.workers_fn(),
            *self.run_fns(cfg),
            f"grep -q {q('^' + RUN_PREFIX)} {q(p.config)} || "
            + fail_expanded(f"{p.config} has no command line (deploy again)"),
            f"want=$(sed -n 's/^# workers: \\([0-9][0-9]*\\)$/\\1/p' {q(p.config)} | tail -n 1); want=${{want:-1}}",
            *self.pid_lines(cfg),
            *self.foreign_lines(cfg),
            'old=" "; how=',
            *graceful,
            '  if [ -n "$pid" ]; then',
            *["    " + ln for ln in self.stop_lines(cfg)],
            "    how=restarted",
            "  fi",
            f"  {AS_APP} rm -f {q(p.socket)} {q(p.pidfile)}",
            f"  start_detached {venv_word}",
            "  action=${how:-started}",
            "fi",
            *self.ready_lines(cfg, release_word, label),
            *self.socket_mode_lines(cfg),
            note(f"{self.name} $action (master $pid, $n workers on {label})"),
        ]


def pool_keys(min_workers: int = 1) -> dict[str, Key]:
    """The keys of a server with a master and a pool of workers (uvicorn, hypercorn): how many workers, how
    long a stopping worker may finish its requests, keep-alive, recycling after max_requests (0: never) and
    the socket's backlog."""
    return {"workers": Key(4, _int(min_workers, 1024)),
            "graceful_timeout": Key(30, _int(1, 3600)),
            "keepalive": Key(5, _int(1, 3600)),
            "max_requests": Key(0, _int(0, 10_000_000)),
            "backlog": Key(1024, _int(16, 65535))}


def tcp_parts(listen: str) -> tuple[str, str]:
    """("address", "port") of "address:port" or "[v6]:port" (the address without brackets)."""
    addr, _, port = listen.rpartition(":")
    return addr.strip("[]"), port


def option_words(options: dict) -> list[str]:
    """[<server>] options as command-line words: --name value."""
    return [w for key, value in options.items() for w in (q("--" + key), q(value))]
