"""uWSGI, the app server: its ini, its socket, start or graceful reload and the wait for every worker."""
from __future__ import annotations

from fabdeploy.config import Config
from fabdeploy.hosts.layout import SETTINGS_MODULE, Layout
from fabdeploy.hosts.roles import Server, balanced, bind_address, uwsgi_socket
from fabdeploy.local.render import render
from fabdeploy.model import Release
from fabdeploy.remote.markers import note
from fabdeploy.remote.shell import ALIVE_FN, CHILDREN_FN, q


def install_ini(cfg: Config, release_word: str) -> list[str]:
    """Make a release's own uWSGI ini (release_word: a shell word naming the release directory) the live
    one, atomically (a temp copy renamed over)."""
    ini = Layout(cfg.paths.deploy_to).uwsgi_ini
    return [f"cp -p {release_word}/.fabdeploy/uwsgi.ini {q(ini + '.fabdeploy-tmp')}",
            f"mv -f {q(ini + '.fabdeploy-tmp')} {q(ini)}"]



def uwsgi_restart_lines(cfg: Config, release_word: str, venv_word: str, label: str) -> list[str]:
    """Start or gracefully reload uWSGI, then wait until every worker's cwd is the release.

    release_word/venv_word are shell words (quoted paths, or "$R" in a rollback that picks on the host).
    """
    lay = Layout(cfg.paths.deploy_to)
    uwsgi = f"{venv_word}/bin/uwsgi"
    steps = cfg.uwsgi.reload_timeout * 10
    return [
        ALIVE_FN,
        CHILDREN_FN,
        f"pid=$(alive {q(lay.pidfile)} uwsgi || true)",
        'if [ -n "$pid" ]; then',
        f"  {uwsgi} --reload {q(lay.pidfile)} >/dev/null",
        "  action=reloaded",
        "else",
        f"  rm -f {q(lay.socket)}",
        f"  {uwsgi} --ini {q(lay.uwsgi_ini)}",
        "  action=started",
        "fi",
        # ready means every worker the ini asks for is up (processes, or the cheaper subsystem's start count)
        *expected_workers_lines(lay.uwsgi_ini),
        "i=0; ready=; gone=0",
        f"while [ $i -lt {steps} ]; do",
        f"  pid=$(alive {q(lay.pidfile)} uwsgi || true)",
        # a master that stays gone (need-app: the app failed to load) is a failure, not something to wait for
        '  if [ -z "$pid" ]; then gone=$((gone + 1)); [ "$gone" -lt 30 ] || break; fi',
        '  if [ -n "$pid" ]; then',
        "    n=0; stale=0",
        '    for c in $(children "$pid"); do',
        "      n=$((n + 1))",
        f'      [ "$(readlink "/proc/$c/cwd" 2>/dev/null)" = {release_word} ] || stale=$((stale + 1))',
        "    done",
        # a unix socket must exist (uWSGI creates it after the workers); a TCP socket is bound by the master
        f'    if [ "$n" -gt 0 ] && [ "$n" -ge "$want" ] && [ "$stale" -eq 0 ] && {{ [ -S {q(lay.socket)} ] || '
        f'! grep -q "^socket = /" {q(lay.uwsgi_ini)}; }}; then ready=1; break; fi',
        "  fi",
        "  i=$((i + 1)); sleep 0.1",
        "done",
        'if [ -z "$ready" ]; then',
        f'  echo "uWSGI did not come up serving {label} within {cfg.uwsgi.reload_timeout}s; '
        f'last lines of {lay.uwsgi_log}:" >&2',
        f"  tail -n 20 {q(lay.uwsgi_log)} >&2 || true",
        "  exit 1",
        "fi",
        note(f"uwsgi $action (master $pid, $n workers on {label})"),
    ]



def expected_workers_lines(ini: str) -> list[str]:
    """Set $want to the number of workers the uWSGI ini starts with: cheaper-initial, else cheaper, else
    processes (the last value of each key wins, as in uWSGI), else 1."""
    return [
        f"procs=$(sed -n 's/^processes *= *\\([0-9][0-9]*\\) *$/\\1/p' {q(ini)} | tail -n 1)",
        f"ci=$(sed -n 's/^cheaper-initial *= *\\([0-9][0-9]*\\) *$/\\1/p' {q(ini)} | tail -n 1)",
        f"ch=$(sed -n 's/^cheaper *= *\\([0-9][0-9]*\\) *$/\\1/p' {q(ini)} | tail -n 1)",
        'want=${ci:-${ch:-${procs:-1}}}',
    ]



def static_maps(cfg: Config, server: Server | None) -> list[tuple[str, str]]:
    """uWSGI static-map entries: app hosts behind a balancer serve media themselves (balancer.media = "app")."""
    if server is None or not balanced(cfg) or server.role != "app" or cfg.balancer.media != "app":
        return []
    return [(cfg.django.media_url.rstrip("/"), Layout(cfg.paths.deploy_to).shared + "/media")]



def uwsgi_ini(cfg: Config, rel: Release, server: Server | None = None) -> str:
    lay = Layout(cfg.paths.deploy_to)
    return render(
        "uwsgi.ini.j2", name=cfg.project.name, release_path=lay.release(rel.id), venv=lay.venv(rel.venv_hash),
        wsgi=cfg.project.wsgi, settings_module=SETTINGS_MODULE, release_id=rel.id, env=cfg.django.env,
        processes=cfg.uwsgi.processes, threads=cfg.uwsgi.threads, socket=uwsgi_socket(cfg, server, lay.socket),
        static_maps=static_maps(cfg, server), pidfile=lay.pidfile,
        logfile=lay.uwsgi_log, max_requests=cfg.uwsgi.max_requests, harakiri=cfg.uwsgi.harakiri,
        buffer_size=cfg.uwsgi.buffer_size, listen=cfg.uwsgi.listen, options=cfg.uwsgi.options)



def uwsgi_pass(cfg: Config, server: Server | None) -> str:
    """nginx's uwsgi_pass target for the app on the same host."""
    sock = uwsgi_socket(cfg, server, Layout(cfg.paths.deploy_to).socket)
    if sock.startswith("/"):
        return "unix:" + sock
    addr = bind_address(cfg, server)
    return sock if addr not in ("0.0.0.0", "::") else f"127.0.0.1:{cfg.balancer.port}"
