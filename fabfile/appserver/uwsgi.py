"""uWSGI, the first app server: its ini, its socket, start or graceful reload, and the wait until every
worker runs the new release (a reload is not done when the master says so: uwsgi#706)."""
from __future__ import annotations

import re

from fabdeploy import manager
from fabdeploy.appserver import beside, warm
from fabdeploy.appserver.base import AppServer, common_keys
from fabdeploy.config import Config
from fabdeploy.config.checks import _int
from fabdeploy.config.schema import Key
from fabdeploy.hosts.layout import SETTINGS_MODULE, Layout
from fabdeploy.hosts.roles import Server, balanced
from fabdeploy.local.render import render
from fabdeploy.model import Release
from fabdeploy.remote.markers import note
from fabdeploy.remote.shell import AS_APP, q


class UWSGI(AppServer):
    name = "uwsgi"
    title = "uWSGI"
    section = "uwsgi"
    process = "uwsgi"
    protocol = "uwsgi"
    config_name = "uwsgi.ini"
    stop_signal = "INT"  # (`uwsgi --stop` sends it; die-on-term makes TERM stop it too)
    system_packages = ("build-essential", "python3-dev")  # (pip builds uWSGI unless pip.wheelhouse)
    # a GET straight to its TCP socket in the uwsgi protocol, for the health check (steps/health.py)
    probe_client_py = r"""
import socket, struct
def app_get(addr, port, host, path):
    p, _, qs = path.partition("?")
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": p, "QUERY_STRING": qs, "REQUEST_URI": path,
           "SERVER_NAME": host, "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": host,
           "HTTP_USER_AGENT": "fabdeploy-health", "REMOTE_ADDR": "127.0.0.1"}
    body = b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v
                    for k, v in ((k.encode(), v.encode()) for k, v in env.items()))
    with socket.create_connection((addr, port), timeout=5) as s:
        s.sendall(struct.pack("<BHB", 0, len(body), 0) + body)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split(" ", 2)[1]), headers
"""
    # the user's [django] env in the ini (masked in --plan's diff; not the two fabdeploy sets)
    env_line = re.compile(r"^(env\s*=\s*)(?!DJANGO_SETTINGS_MODULE=|FABDEPLOY_)([A-Za-z_][A-Za-z0-9_]*)=(.*)$")

    keys = {  # [uwsgi]
        "processes": Key(4, _int(1, 1024)),
        "threads": Key(2, _int(1, 1024)),
        "max_requests": Key(5000, _int(0, 10_000_000)),
        "harakiri": Key(30, _int(0, 86400)),
        "buffer_size": Key(32768, _int(4096, 65535)),
        "listen": Key(1024, _int(16, 65535)),
        **common_keys("uwsgi"),
    }

    def render_config(self, cfg: Config, rel: Release, server: Server | None = None) -> str:
        lay = Layout(cfg.paths.deploy_to)
        p = self.paths(lay)
        mgr = manager.of(cfg)
        return render(
            "uwsgi.ini.j2", daemonize=mgr.daemon, journal=mgr.journal, name=cfg.project.name, release_path=lay.release(rel.id), venv=lay.venv(rel.venv_hash),
            wsgi=cfg.project.wsgi, settings_module=SETTINGS_MODULE, release_id=rel.id, env=cfg.django.env,
            processes=cfg.uwsgi.processes, threads=cfg.uwsgi.threads, socket=self.listen(cfg, server),
            static_maps=static_maps(cfg, server), pidfile=p.pidfile,
            logfile=p.log, max_requests=cfg.uwsgi.max_requests, harakiri=cfg.uwsgi.harakiri,
            buffer_size=cfg.uwsgi.buffer_size, listen=cfg.uwsgi.listen, options=cfg.uwsgi.options,
            warm=warm.import_name(cfg))

    def foreground_argv(self, cfg: Config) -> list[str]:
        lay = Layout(cfg.paths.deploy_to)
        return [q(self.venv_link(lay) + "/bin/uwsgi"), "--ini", q(self.paths(lay).config)]

    def daemon_start_lines(self, cfg: Config, venv_word: str) -> list[str]:
        p = self.paths(Layout(cfg.paths.deploy_to))
        return [f"{AS_APP} rm -f {q(p.socket)}", f"{AS_APP} {venv_word}/bin/uwsgi --ini {q(p.config)}"]

    def reload_command(self, cfg: Config) -> list[str]:
        """`uwsgi --reload <pidfile>` (SIGHUP to the master: a graceful reload)."""
        lay = Layout(cfg.paths.deploy_to)
        return [f"{AS_APP} {q(self.venv_link(lay) + '/bin/uwsgi')} --reload {q(self.paths(lay).pidfile)} >/dev/null"]

    def reload_lines(self, cfg: Config, release_word: str, venv_word: str, label: str) -> list[str]:
        """Start or gracefully reload uWSGI (through the process manager), then wait until every worker's cwd
        is the release.

        release_word/venv_word are shell words (quoted paths, or "$R" in a rollback that picks on the host).
        """
        if beside.applies(cfg, self):
            return beside.swap_lines(cfg, self, release_word, venv_word, label)
        p = self.paths(Layout(cfg.paths.deploy_to))
        return [
            *self.managed_reload_lines(cfg, venv_word),
            # ready means every worker the ini asks for is up (processes, or the cheaper subsystem's start count)
            *expected_workers_lines(p.config),
            *self.ready_lines(cfg, release_word, label),
            note(f"uwsgi $action (master $pid, $n workers on {label})"),
        ]

    def want_lines(self, cfg: Config) -> list[str]:
        """Set $want: the workers the live ini starts with."""
        return expected_workers_lines(self.paths(Layout(cfg.paths.deploy_to)).config)

    def slot_start_lines(self, cfg: Config, venv_word: str, s: str, sl) -> list[str]:
        """Start a master in slot s (appserver/beside.py): the live ini copied with the slot's socket and
        pidfile; SIGTERM stops it gracefully (its workers finish their requests)."""
        p = self.paths(Layout(cfg.paths.deploy_to))
        ini = sl.conf(self, s)
        return [f"cp -p {q(p.config)} {ini}",
                f'sed -i -e "s|^socket = .*|socket = {p.socket}.{s}|" -e "s|^pidfile = .*|pidfile = {p.pidfile}.{s}|" '
                f"{ini}",
                f"{AS_APP} {venv_word}/bin/uwsgi --ini {ini} --hook-master-start "
                f"{q('unix_signal:15 gracefully_kill_them_all')}"]

    def slot_config(self, cfg: Config, rel: Release, server: Server | None, s: str) -> tuple[str, str]:
        """(path, text) of slot s's own ini for the release, written before the switch (appserver/beside.py
        early): the ini the config phase stages, with the slot's socket and pidfile; in shared/config
        like every slot's copy (sl.conf)."""
        p = self.paths(Layout(cfg.paths.deploy_to))
        text = "\n".join(f"socket = {p.socket}.{s}" if ln.startswith("socket = ")
                         else f"pidfile = {p.pidfile}.{s}" if ln.startswith("pidfile = ") else ln
                         for ln in self.render_config(cfg, rel, server).splitlines())
        return self.slot_config_path(cfg, s), text

    def slot_config_path(self, cfg: Config, s: str) -> str:
        """Where slot s's own ini is (sl.conf, unquoted)."""
        return f"{Layout(cfg.paths.deploy_to).config}/{self.config_name}.{s}"

    def early_argv(self, cfg: Config, rel: Release, s: str) -> list[str]:
        """The command that starts the release's master in slot s from its slot_config: uWSGI daemonizes
        before it loads the app, so it returns at once; SIGTERM stops it gracefully."""
        return [Layout(cfg.paths.deploy_to).venv(rel.venv_hash) + "/bin/uwsgi", "--ini",
                self.slot_config_path(cfg, s),
                "--hook-master-start", "unix_signal:15 gracefully_kill_them_all"]

    def socket_ready(self, cfg: Config) -> str:
        """Its unix socket exists (uWSGI creates it after the workers), unless the live ini binds address:port
        (the master binds a TCP socket itself)."""
        p = self.paths(Layout(cfg.paths.deploy_to))
        return f'{{ {AS_APP} test -S {q(p.socket)} || ! grep -q "^socket = /" {q(p.config)}; }}'

    def stop_command(self, cfg: Config) -> list[str]:
        """`uwsgi --stop <pidfile>` by the master's own binary (SIGINT when that is gone)."""
        p = self.paths(Layout(cfg.paths.deploy_to))
        return [f'exe=$({AS_APP} readlink "/proc/$pid/exe" 2>/dev/null || true)',
                'case "$exe" in',
                f'  */uwsgi) {AS_APP} "$exe" --stop {q(p.pidfile)} >/dev/null 2>&1 || {AS_APP} kill -INT "$pid" 2>/dev/null || true;;',
                f'  *) {AS_APP} kill -INT "$pid" 2>/dev/null || true;;',
                "esac"]


# (one process for the three keys, where a sed and a tail each took six)
WANT_AWK = r"""
function value(line) { sub(/^[a-z-]+ *= */, "", line); sub(/ *$/, "", line); return line }
/^processes *= *[0-9]+ *$/ { procs = value($0) }
/^cheaper-initial *= *[0-9]+ *$/ { ci = value($0) }
/^cheaper *= *[0-9]+ *$/ { ch = value($0) }
END { print (ci != "" ? ci : ch != "" ? ch : procs) }
"""


def expected_workers_lines(ini: str) -> list[str]:
    """Set $want to the number of workers the uWSGI ini starts with: cheaper-initial, else cheaper, else
    processes (the last value of each key wins, as in uWSGI), else 1."""
    return [f"want=$(awk {q(WANT_AWK)} {q(ini)} 2>/dev/null || true); want=${{want:-1}}"]


def static_maps(cfg: Config, server: Server | None) -> list[tuple[str, str]]:
    """uWSGI static-map entries: app hosts behind a balancer serve media themselves (balancer.media = "app")."""
    if server is None or not balanced(cfg) or server.role != "app" or cfg.balancer.media != "app":
        return []
    return [(cfg.django.media_url.rstrip("/"), Layout(cfg.paths.deploy_to).shared + "/media")]
