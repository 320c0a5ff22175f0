"""The phases of `fab stop|start|restart|reload` (one remote invocation per host, see ops/control.py):

    stop      lock [nginx] stop finish                    --nginx: the site out of nginx first
    start     lock start [boot] [nginx] health finish     --nginx: the site back in
    restart   lock stop start [boot] health finish        a hard restart: a new master

boot: what starts the app server at boot where its process manager does not (the pidfile manager's @reboot
line: manager/boot_cron.py); it is written by every deploy's restart too.
    reload    lock reload health finish                   graceful, as a deploy's reload

The app server's own lines come from the app-server seam (appserver.of(cfg): pid_lines, stop_lines,
reload_lines), the nginx site's from front/nginx_toggle.py, the health check from steps/health.py.
"""
from __future__ import annotations

from fabdeploy import appserver
from fabdeploy.config import Config
from fabdeploy.front import nginx_toggle
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.roles import Server, runs_nginx
from fabdeploy.remote.markers import fail_expanded, note
from fabdeploy.remote.script import Phase
from fabdeploy.remote.shell import READ_LINE_FN, link_name_word, q
from fabdeploy.steps import lock
from fabdeploy.steps.health import check_command
from fabdeploy.steps.lock import LockOwner

ACTIONS = ("stop", "start", "restart", "reload")


def lock_phase(cfg: Config, owner: LockOwner, wait: int) -> Phase:
    """Take the deploy lock (a stop must not race a deploy); nothing deployed here: say so."""
    return Phase("lock", [
        f"[ -d {q(cfg.paths.deploy_to)} ] || {fail_expanded('nothing is deployed here')}",
        *lock.acquire(cfg, owner, wait)])


def current_release(cfg: Config) -> list[str]:
    """Set $R (the live release's directory), $T (its id) and $V (its virtualenv), or fail saying why."""
    lay = Layout(cfg.paths.deploy_to)
    return [
        f"R=$(readlink {q(lay.current)}) || {fail_expanded('nothing is deployed here (no current release)')}",
        'T=${R##*/}',
        READ_LINE_FN,
        f'read_line fd_v "$R/.fabdeploy/venv"; V={q(lay.venvs)}/"$fd_v"',
        f'[ -f "$V/.fabdeploy-complete" ] || {fail_expanded("the virtualenv of the live release $T is gone: deploy again")}',
    ]


def stop(cfg: Config) -> Phase:
    """Stop the app server; wait until its master and workers are gone ("already stopped" when it was)."""
    return Phase("stop", appserver.of(cfg).stop_lines(cfg))


def start(cfg: Config) -> Phase:
    """Start the live release's app server and wait until every worker runs it; one already running is left
    alone ("already running")."""
    app = appserver.of(cfg)
    return Phase("start", [
        *current_release(cfg),
        *app.pid_lines(cfg),
        'if [ -n "$pid" ]; then',
        "  " + note(f"{app.name} already running (master $pid)"),
        "else",
        *["  " + ln for ln in app.reload_lines(cfg, '"$R"', '"$V"', "$T")],
        "fi",
    ])


def boot_phase(cfg: Config) -> Phase | None:
    """What starts the app server at boot, where its process manager does not (the pidfile manager: an
    @reboot line, manager/boot_cron.py); None where there is nothing to do."""
    from fabdeploy import manager
    lines = manager.of(cfg).boot_lines(cfg, appserver.of(cfg))
    return Phase("boot", lines) if lines else None


def reload(cfg: Config) -> Phase:
    """Gracefully reload a running app server onto the live release and wait until every worker runs it; a
    stopped one is a failure (a reload never starts what someone stopped: fab start does)."""
    app = appserver.of(cfg)
    return Phase("reload", [
        *current_release(cfg),
        *app.pid_lines(cfg),
        f'[ -n "$pid" ] || {fail_expanded(f"{app.title} is not running: fab start starts it")}',
        "fresh=1",  # (a master started beside the live one, even of the same release: appserver/beside.py)
        *app.reload_lines(cfg, '"$R"', '"$V"', "$T"),
    ])


def nginx(cfg: Config, server: Server | None, back: bool) -> Phase:
    """The site out of nginx (back: in again); a host without fabdeploy's nginx site (an app host behind
    load balancers) has nothing to do."""
    if not runs_nginx(cfg, server):
        return Phase("nginx", [note("no nginx site on this host (the load balancers serve it)")])
    lines = nginx_toggle.put_back_lines(cfg) if back else nginx_toggle.take_out_lines(cfg)
    return Phase("nginx", lines, sudo=True)


def health(cfg: Config, host: str, server: Server | None) -> Phase:
    """The deploy's health check (steps/health.py) on the live release; skipped, saying so, while the nginx
    site is out (nothing would answer for it)."""
    check = [f"if answer=$({check_command(cfg, host, server)}); then {note('$answer')}; "
             f"else {fail_expanded('health check failed: $answer')}; fi"]
    if not runs_nginx(cfg, server):
        return Phase("health", check)
    return Phase("health", [
        *nginx_toggle.site_vars(cfg),
        f"if {nginx_toggle.SITE_OUT}; then",
        "  " + note("health check skipped: the nginx site is out (fab start --nginx puts it back)"),
        "else",
        *["  " + ln for ln in check],
        "fi",
    ])


def finish(cfg: Config, owner: LockOwner) -> Phase:
    """The audit line (action, the live release), then the lock released."""
    lay = Layout(cfg.paths.deploy_to)
    return lock.finish(cfg, owner, {"result": "ok"}, dynamic={
        "release": link_name_word(lay.current)})


def on_failure(cfg: Config, owner: LockOwner) -> list[str]:
    """Script.on_failure: while this run holds the lock, a `failed` audit line naming the phase, then the
    lock released (a run refused by another's lock writes nothing)."""
    return [f"if {lock.held(cfg, owner)}; then",
            "(", *lock.audit(cfg, owner, {"result": "failed"}, {"error": '"$fabdeploy_phase failed"'}),
            ") 2>/dev/null || true", *lock.release(cfg, owner), "fi"]


def phases(cfg: Config, action: str, owner: LockOwner, wait: int, host: str, server: Server | None,
           with_nginx: bool) -> list[Phase]:
    """The phases of one action (see the module docstring)."""
    if action not in ACTIONS:
        raise ValueError(action)
    boot = [b] if (b := boot_phase(cfg)) else []
    body = {
        "stop": [nginx(cfg, server, back=False)] * with_nginx + [stop(cfg)],
        "start": [start(cfg), *boot] + [nginx(cfg, server, back=True)] * with_nginx + [health(cfg, host, server)],
        "restart": [stop(cfg), start(cfg), *boot, health(cfg, host, server)],
        "reload": [reload(cfg), health(cfg, host, server)],
    }[action]
    return [lock_phase(cfg, owner, wait), *body, finish(cfg, owner)]
