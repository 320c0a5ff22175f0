"""The lines that start or reload an app server through its process manager, wait until it serves a release,
and stop one a host no longer runs: the same for every app server (AppServer inherits them; each server only
says what differs: its pid, its workers, its socket)."""
from __future__ import annotations

from fabdeploy.config import Config
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.roles import balanced
from fabdeploy.remote.markers import fail_expanded
from fabdeploy.remote.shell import ALIVE_FN, AS_APP, CHILDREN_FN, q


class Control:
    """Mixed into AppServer (base.py): uses its paths, process, title, reload_timeout, workers_fn,
    as_app_lines, link_lines, foreign_lines and stop_lines."""

    def managed_reload_lines(self, cfg: Config, venv_word: str, graceful: str = "true") -> list[str]:
        """Start it through the process manager, or ask its running master to reload (the manager's reload:
        the app server's signal) where the shell condition `graceful` holds, else restart it through the
        manager, after the manager is switched to and its definition installed. Sets $pid
        (the master before: "" when none), $old (that master's children: the workers being replaced) and
        $action; a daemonized master of another user is restarted as the app user first (foreign_lines)."""
        from fabdeploy import manager
        mgr = manager.of(cfg)
        p = self.paths(Layout(cfg.paths.deploy_to))
        return [
            *self.as_app_lines(cfg),
            ALIVE_FN,
            CHILDREN_FN,
            *self.link_lines(cfg, venv_word),
            *manager.switch_lines(cfg, self),
            *mgr.install_lines(cfg, self),
            f"pid=$(alive {q(p.pidfile)} {q(self.process)} || true)",
            *(self.foreign_lines(cfg) if mgr.daemon else []),
            'old=" "',
            # ($defined: the manager has just (re)started it with a new definition: nothing to reload)
            'if [ -n "$pid" ] && [ -z "$defined" ]; then',
            # a graceful reload replaces every worker: the ones running now never count as ready (a reload onto
            # the release they already run would otherwise be "done" before it began)
            *["  " + ln for ln in self.reload_or_restart(cfg, graceful)],
            "else",
            *["  " + ln for ln in mgr.start_lines(cfg, self, venv_word)],
            "  action=started",
            "fi",
        ]

    def reload_or_restart(self, cfg: Config, graceful: str) -> list[str]:
        """The manager's reload (the running master's workers replaced: $old names them) where the shell
        condition `graceful` holds ("true": always), else its restart ("false": always)."""
        from fabdeploy import manager
        mgr = manager.of(cfg)
        reload = ['old=" $(children "$pid" | tr "\\n" " ") "', *mgr.reload_lines(cfg, self), "action=reloaded"]
        if graceful == "true":
            return reload
        restart = [*mgr.restart_lines(cfg, self), "action=restarted"]
        if graceful == "false":
            return restart
        return [f"if {graceful}; then", *["  " + ln for ln in reload], "else", *["  " + ln for ln in restart], "fi"]

    def socket_ready(self, cfg: Config) -> str:
        """A shell condition that holds once its unix socket exists ("" when it listens on address:port:
        the app hosts of a balanced fleet; no socket file to wait for)."""
        if balanced(cfg):
            return ""
        return f"{AS_APP} test -S {q(self.paths(Layout(cfg.paths.deploy_to)).socket)}"

    def ready_lines(self, cfg: Config, release_word: str, label: str, *, pid: list[str] | None = None,
                    gone_limit: int | None = 50, hint: str = "", sock: str | None = None,
                    on_fail: list[str] = (), start: str = "0") -> list[str]:
        """Wait (reload_timeout) until the master in $pid has every worker it should ($want, at least one)
        on the release (each worker's cwd is release_word) and none of the workers it replaces ($old: their
        pids, space-padded; " " for none), and its socket exists (socket_ready); else the last lines of its
        log and one error line (hint: shell words appended to it). Needs ALIVE_FN, CHILDREN_FN, $want and
        $old; sets $pid, $n and $ready.

        pid: the lines that set $pid on each turn (default: the live master of its pidfile). gone_limit:
        after that many turns (0.1 s each) without a master, give up (the app failed to load and the master
        exited); None: wait the whole timeout (a master that is still being started). sock: the shell condition
        that its socket is there (default socket_ready). on_fail: lines run before the error (a master
        started beside the live one is stopped). start: the turns already waited (a shell word)."""
        p = self.paths(Layout(cfg.paths.deploy_to))
        timeout = self.reload_timeout(cfg)
        sock = self.socket_ready(cfg) if sock is None else sock
        pid = pid or [f"pid=$(alive {q(p.pidfile)} {q(self.process)} || true)"]
        gone = ([f'if [ -z "$pid" ]; then gone=$((gone + 1)); [ "$gone" -lt {gone_limit} ] || break; fi']
                if gone_limit else [])
        return [
            self.workers_fn(),
            f"i={start}; ready=; gone=0; n=0",
            f"while [ $i -lt {timeout * 10} ]; do",
            *["  " + ln for ln in pid],
            *["  " + ln for ln in gone],
            '  if [ -n "$pid" ]; then',
            "    n=0; stale=0",
            '    for c in $(workers "$pid"); do',
            "      n=$((n + 1))",
            '      case "$old" in *" $c "*) stale=$((stale + 1));; esac',
            f'      [ "$({AS_APP} readlink "/proc/$c/cwd" 2>/dev/null)" = {release_word} ] || stale=$((stale + 1))',
            "    done",
            f'    if [ "$n" -gt 0 ] && [ "$n" -ge "$want" ] && [ "$stale" -eq 0 ]{" && " + sock if sock else ""}; then '
            "ready=1; break; fi",
            "  fi",
            "  i=$((i + 1)); sleep 0.1",
            "done",
            'if [ -z "$ready" ]; then',
            f'  echo "{self.title} did not come up serving {label} within {timeout}s; last lines of {p.log}:" >&2',
            f"  {AS_APP} tail -n 20 {q(p.log)} >&2 || true",
            *["  " + ln for ln in on_fail],
            "  " + fail_expanded(f"{self.title} did not come up serving {label} within {timeout}s{hint}"),
            "fi",
        ]

    def stop_if_present_lines(self, cfg: Config, mgr=None) -> list[str]:
        """Stop it (through mgr, default the configured manager) when its pidfile or socket is in $present
        (present_lines), then remove both and a gunicorn upgrade's pidfile.2: a host whose [app] server or
        [app] manager changed stops what the old choice runs before the new one starts."""
        p = self.paths(Layout(cfg.paths.deploy_to))
        return [f'case "$present" in *" "{q(p.pidfile)}" "* | *" "{q(p.socket)}" "*)',
                *["  " + ln for ln in self.stop_lines(cfg, mgr)],
                f"  {AS_APP} rm -f {q(p.pidfile)} {q(p.pidfile + '.2')} {q(p.socket)};;",
                "esac"]


# (sh -c script) the arguments that exist, each followed by a space
LIST_PRESENT = 'for f; do [ ! -e "$f" ] || printf "%s " "$f"; done'


def present_lines(cfg: Config, servers) -> list[str]:
    """Set $present to the pidfiles and sockets of these app servers that exist, space-padded (for their
    stop_if_present_lines): shared/run is the app user's, so it is looked at as it, once for all ($ASAPP)."""
    lay = Layout(cfg.paths.deploy_to)
    files = " ".join(q(f) for s in servers for f in (s.paths(lay).pidfile, s.paths(lay).socket))
    return [f'present=" $({AS_APP} sh -c {q(LIST_PRESENT)} sh {files}) "']
