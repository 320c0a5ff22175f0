"""The app-server interface: everything the pipeline, the front end, the health check, `fab status` and
`fab logs` need to know about the program that runs the Django project, and nothing else about it."""
from __future__ import annotations

import re
from dataclasses import dataclass

from fabdeploy.appserver import beside
from fabdeploy.appserver.control import Control
from fabdeploy.config import Config
from fabdeploy.config.checks import _int, _options, _str
from fabdeploy.config.schema import Key
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.roles import Server, balanced, bind_address
from fabdeploy.model import Release
from fabdeploy.remote.markers import fail_expanded, note
from fabdeploy.remote.root import best_effort
from fabdeploy.remote.shell import ALIVE_FN, AS_APP, CHILDREN_FN, as_app_lines, q

# (a master of another user, from before the app user: signalled as root when sudo allows it; a pid is no
# fixed argument, so a drop-in never lists it: README, "Limiting the deploy user's sudo")
KILL = best_effort("kill")


def common_keys(package: str) -> dict[str, Key]:
    """The keys every app server's section has: its pip requirement, how long a start or reload may take,
    and extra options for its config."""
    return {"package": Key(package, _str(re.compile(r"^[A-Za-z0-9._\-\[\]<>=!~,]+$"), "a pip requirement", False)),
            "reload_timeout": Key(60, _int(1, 3600)),
            "options": Key({}, _options)}


def app_user(cfg: Config) -> str:
    """The user the app server runs as ([app] user; default: the project name made a user name: lower case,
    characters other than letters, digits, "_" and "-" as "-", at most 32). The SSH user itself keeps the old
    behaviour (no sudo -u at all)."""
    if cfg.app.user:
        return cfg.app.user
    name = re.sub(r"[^a-z0-9_-]", "-", cfg.project.name.lower())
    return (name if re.match(r"[a-z_]", name) else "app-" + name)[:32]


@dataclass(frozen=True)
class AppPaths:
    """Where an app server's files live on a host (under shared/, the same for every release)."""

    socket: str  # its unix socket (nginx on the same host connects to it)
    pidfile: str  # its master's pid
    log: str  # what it writes
    config: str  # the live config (the release's own copy installed at the switch)


class AppServer(Control):
    """One app server. Subclasses set the class attributes and implement the methods that raise.

    The app user ([app] user, app_user()): the server runs as it, so a subclass's reload_lines starts with
    `*self.as_app_lines(cfg)` (pid_lines and stop_lines here do already) and puts AS_APP ("${ASAPP-}", from
    remote/shell.py) before every command that reads its socket (`test -S`), its log (`tail`), its workers'
    `/proc/<pid>/cwd` or `exe` (`readlink`), or signals its master (`kill`); daemon_start_lines run the server
    itself as `{AS_APP} <argv>`; a daemonized one also runs `*self.foreign_lines(cfg)` right after it finds its
    master (a master of another user is restarted as the app user). ALIVE_FN reads a pidfile as the app user by
    itself. Process managers start it as the app user (user=, User=, the vassal's owner)."""

    name = ""  # as in `[app] server`
    title = ""  # as people write it, for messages ("uWSGI")
    section = ""  # its own deploy.toml section ("uwsgi")
    keys: dict = {}  # that section's keys (config.schema.Key), checked like every other section
    process = ""  # its master's process name (/proc/<pid>/comm)
    protocol = ""  # what it speaks on its socket: "uwsgi" (nginx uwsgi_pass) or "http" (proxy_pass)
    config_name = ""  # its config file, staged in <release>/.fabdeploy/ and installed under shared/config
    system_packages: tuple[str, ...] = ()  # Debian packages it needs on the host (beyond python3-venv)
    probe_client_py = ""  # Python defining app_get(addr, port, host, path) -> (status, headers), if not HTTP
    managed = True  # a process manager (supervisor, systemd) can run it in the foreground (manager_argv)
    notify = True  # it tells systemd when it is ready (sd_notify: a Type=notify unit)
    env_line = None  # a compiled pattern: (text before the value, name, value) of an env line in its config
    interface = "wsgi"  # what it runs: "wsgi" (project.wsgi), "asgi" (app.asgi, required), "both" (asgi when set)

    def requirement(self, cfg: Config) -> str:
        """The pip requirement installed into every release's virtualenv (its section's package)."""
        return getattr(cfg, self.section).package

    def stop_timeout(self, cfg: Config) -> int:
        """Seconds a stop waits for the master and its workers before SIGKILL (reload_timeout by default)."""
        return self.reload_timeout(cfg)

    def requirements(self, cfg: Config) -> list[str]:
        """Every pip requirement it adds to the virtualenv (its own, and what its configured worker needs)."""
        return [self.requirement(cfg)]

    def as_app_lines(self, cfg: Config) -> list[str]:
        """Set $ASAPP (remote/shell.py): the prefix every line that reads the app server's pidfile, socket,
        log or processes, or signals it, puts before its command. Every reload_lines, pid_lines and
        stop_lines starts with these lines, so the readiness waits of every app server can use $ASAPP."""
        return as_app_lines(app_user(cfg))

    def foreign_lines(self, cfg: Config, var: str = "pid") -> list[str]:
        """(a daemonized master, no process manager) A master in $var that runs as another user than the app
        user (a host deployed before [app] user existed, or since it changed) is stopped (sudo: it is not the
        app user's to signal) and $var emptied, so that it is started again as the app user: a brief outage,
        once. Managers of their own restart it themselves: their definition names the new user."""
        user = q(app_user(cfg))
        p = self.paths(Layout(cfg.paths.deploy_to))
        gone = f'{{ [ ! -d "/proc/${var}" ] || grep -qs "^State:[[:space:]]*Z" "/proc/${var}/status"; }}'
        return [
            f'if [ -n "${var}" ] && [ "$(stat -c %U "/proc/${var}" 2>/dev/null)" != {user} ]; then',
            # (the deploy user's own master: a plain kill; another user's: root's, where sudo allows it)
            f'  was=$(stat -c %U "/proc/${var}" 2>/dev/null); kill -{self.stop_signal} "${var}" 2>/dev/null || '
            f'{KILL} -{self.stop_signal} "${var}" 2>/dev/null || true',
            f"  i=0; while ! {gone} && [ $i -lt {self.reload_timeout(cfg) * 10} ]; do sleep 0.1; i=$((i + 1)); done",
            f'  {gone} || kill -KILL "${var}" 2>/dev/null || {KILL} -KILL "${var}" 2>/dev/null || true',
            f"  i=0; while ! {gone} && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done",
            f"  {gone} || " + fail_expanded(f"{self.title} (master ${var}) runs as $was, not as the app user "
                                            f"{app_user(cfg)}, and sudo may not stop it (fab sudoers does not "
                                            "list kill): stop it once by hand"),
            f"  {AS_APP} rm -f {q(p.pidfile)} {q(p.socket)} 2>/dev/null || rm -f {q(p.pidfile)} {q(p.socket)} || true",
            "  " + note(f"{self.name} (master ${var}) ran as $was: stopped, to start again as the app user "
                        f"{app_user(cfg)}"),
            f"  {var}=",
            "fi",
        ]

    def reload_timeout(self, cfg: Config) -> int:
        """Seconds a start or reload may take before the deploy calls it failed."""
        return getattr(cfg, self.section).reload_timeout

    def paths(self, lay: Layout) -> AppPaths:
        return AppPaths(f"{lay.run}/{self.name}.sock", f"{lay.run}/{self.name}.pid", f"{lay.log}/{self.name}.log",
                        f"{lay.config}/{self.config_name}")

    def venv_link(self, lay: Layout) -> str:
        """The link to the virtualenv of the release being started: process managers run the app server
        through it, so their definitions stay the same from one release to the next."""
        return f"{lay.config}/{self.name}-venv"

    def link_lines(self, cfg: Config, venv_word: str) -> list[str]:
        """Point venv_link at a release's virtualenv (atomically)."""
        link = q(self.venv_link(Layout(cfg.paths.deploy_to)))
        return [f"ln -sfn {venv_word} {link}.tmp && mv -Tf {link}.tmp {link}"]

    def foreground_argv(self, cfg: Config) -> list[str]:
        """The shell words that run it in the foreground on its live config, through venv_link (what a
        process manager runs)."""
        raise NotImplementedError

    def manager_argv(self, cfg: Config) -> list[str]:
        """What a process manager runs (its definition's command): foreground_argv by default."""
        return self.foreground_argv(cfg)

    def daemon_start_lines(self, cfg: Config, venv_word: str) -> list[str]:
        """Start it as a daemon that writes its pidfile (no process manager)."""
        raise NotImplementedError

    def early_argv(self, cfg: Config, rel, s: str) -> list[str]:
        """The command that starts the release's master in slot s before the switch, from its slot_config
        (appserver/beside.py early); [] where the restart starts it (the default)."""
        return []

    def slot_config(self, cfg: Config, rel, server, s: str) -> tuple[str, str]:
        """(path, text) of the config slot s's master starts from, written before the switch."""
        raise NotImplementedError

    reload_signal = "HUP"  # what asks its running master for a graceful reload

    def reload_command(self, cfg: Config) -> list[str]:
        """Lines that ask the running master ($pid) to reload gracefully (no process manager)."""
        return [f'{AS_APP} kill -{self.reload_signal} "$pid"']

    def staged_config(self, release_word: str) -> str:
        """The release's own copy of the config (release_word: a shell word naming the release directory)."""
        return f"{release_word}/.fabdeploy/{self.config_name}"

    def listen(self, cfg: Config, server: Server | None) -> str:
        """The socket it serves: its unix socket for nginx on the same host, or address:port for the load
        balancers (app hosts of a balanced fleet)."""
        if server is None or not balanced(cfg) or server.role != "app":
            return self.paths(Layout(cfg.paths.deploy_to)).socket
        addr = bind_address(cfg, server)
        return f"[{addr}]:{cfg.balancer.port}" if ":" in addr else f"{addr}:{cfg.balancer.port}"

    def upstream(self, cfg: Config, server: Server | None) -> str:
        """What nginx on the same host passes requests to ("unix:/path" or "address:port")."""
        sock = self.listen(cfg, server)
        if sock.startswith("/"):
            return "unix:" + sock
        addr = bind_address(cfg, server)
        return sock if addr not in ("0.0.0.0", "::") else f"127.0.0.1:{cfg.balancer.port}"

    def render_config(self, cfg: Config, rel: Release, server: Server | None) -> str:
        """Its config for a release (staged in the release by the config phase)."""
        raise NotImplementedError

    def install_lines(self, cfg: Config, release_word: str) -> list[str]:
        """Make a release's own config the live one, atomically (a temp copy renamed over)."""
        live = self.paths(Layout(cfg.paths.deploy_to)).config
        return [f"cp -p {self.staged_config(release_word)} {q(live + '.fabdeploy-tmp')}",
                f"mv -f {q(live + '.fabdeploy-tmp')} {q(live)}"]

    def reload_lines(self, cfg: Config, release_word: str, venv_word: str, label: str) -> list[str]:
        """Start it, or reload it gracefully, then wait until every worker runs the release (release_word and
        venv_word: shell words; label: the release as messages name it). Sets $action and $pid."""
        raise NotImplementedError

    def pid_lines(self, cfg: Config) -> list[str]:
        """Set $pid to its running master's pid, "" when it is not running (a daemonized, manager-less server:
        a live process of its name whose pid is in its pidfile; never the file merely existing)."""
        pidfile = self.paths(Layout(cfg.paths.deploy_to)).pidfile
        return [*self.as_app_lines(cfg), ALIVE_FN, f"pid=$(alive {q(pidfile)} {q(self.process)} || true)"]

    def workers_fn(self) -> str:
        """A shell function `workers <master pid>` printing the pids of its workers (by default every child of
        the master; needs CHILDREN_FN)."""
        return 'workers() { children "$1"; }'

    stop_signal = "TERM"  # what asks its master to stop gracefully (see stop_command)

    def stop_command(self, cfg: Config) -> list[str]:
        """Lines that ask the running master ($pid) to stop gracefully."""
        return [f'{AS_APP} kill -{self.stop_signal} "$pid" 2>/dev/null || true']

    def stop_lines(self, cfg: Config, mgr=None) -> list[str]:
        """Stop it and wait until its master and every worker it had are gone (killed with SIGKILL after
        reload_timeout seconds); one that is not running is "already stopped" (a note either way). Sets
        $action ("stopped" or "already stopped"). mgr: the process manager that runs it (default: the
        configured one)."""
        from fabdeploy import manager
        mgr = mgr or manager.of(cfg)
        p = self.paths(Layout(cfg.paths.deploy_to))
        name, timeout = q(self.process), self.stop_timeout(cfg)
        return [
            *self.pid_lines(cfg),
            CHILDREN_FN,
            'if [ -z "$pid" ]; then',
            '  action="already stopped"; ' + note(f"{self.name} already stopped"),
            *["  " + ln for ln in mgr.stopped_lines(cfg, self)],
            "else",
            f'  kids=$(for c in $(children "$pid"); do grep -qs {name} "/proc/$c/comm" && printf "%s " "$c"; '
            'done; true)',
            '  n=$(echo $kids | wc -w)',
            # a process counts while it lives under its name and is no zombie (a pid reused meanwhile does not)
            f'  up() {{ for p in "$@"; do grep -qs {name} "/proc/$p/comm" && '
            '! grep -qs "^State:[[:space:]]*Z" "/proc/$p/status" && return 0; done; return 1; }',
            *["  " + ln for ln in mgr.stop_lines(cfg, self)],
            # (a daemonized master of another user, from before the app user: not the app user's to signal)
            *([f'  [ "$(stat -c %U "/proc/$pid" 2>/dev/null)" = {q(app_user(cfg))} ] || '
               f'kill -{self.stop_signal} "$pid" 2>/dev/null || {KILL} -{self.stop_signal} "$pid" 2>/dev/null || true']
              if mgr.daemon else []),
            "  i=0; how=",
            f'  while up $pid $kids && [ $i -lt {timeout * 10} ]; do sleep 0.1; i=$((i + 1)); done',
            "  if up $pid $kids; then",
            f"    {AS_APP} kill -KILL $pid $kids 2>/dev/null || kill -KILL $pid $kids 2>/dev/null || "
            f"{KILL} -KILL $pid $kids 2>/dev/null || true",
            # (a killed process can take seconds to exit on a loaded host: its threads leave the kernel first)
            "    i=0; while up $pid $kids && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done",
            "    if up $pid $kids; then st=$(sed -n 's/^State:[[:space:]]*//p' \"/proc/$pid/status\" 2>/dev/null); "
            + fail_expanded(f"{self.title} (master $pid, state $st) is still running 30 s after SIGKILL") + "; fi",
            f'    how=", killed after {timeout}s"',
            "  fi",
            f"  {AS_APP} rm -f {q(p.pidfile)} {q(p.socket)}",
            '  action=stopped; ' + note(f"{self.name} stopped (master $pid and $n workers gone$how)"),
            "fi",
            # (the warm master and the slots' files: appserver/beside.py)
            *(beside.stop_slots_lines(cfg, self) if mgr.name == "pidfile" and self.name in beside.SERVERS else []),
        ]

