"""Start beside, swap, keep warm (issue 16): how uWSGI and gunicorn under `[app] manager = "pidfile"` on a
unix socket go from one release to another without a reload.

Every master runs in a slot named after its release ("<id>", or "<id>.b" for a second master of the same
release: `fab reload`, a redeploy): its own socket `<socket>.<slot>` and pidfile `<pidfile>.<slot>` in
shared/run. The path nginx uses (`<socket>`) is one more hard link to the live master's socket:

    start     the new release's master on its slot's socket, wait until every worker runs the release
              (the usual readiness wait); it fails: that master is stopped, nothing was switched
    swap      `ln <socket>.<slot> <socket>.swap && mv -T <socket>.swap <socket>`: one rename(2), so nginx's
              next connect reaches the new master while requests already queued on the old one finish there
    record    `<pidfile>` (what fab status, stop, doctor read) names the live master, `<socket>.live` its slot
    retire    the master just replaced is kept warm (`[app] keep_warm`, at most one: its release differs from
              the new one) or stopped gracefully once its listen queue is empty; every other slot master is
              stopped (idle: nothing reaches it). Dead slots' files are removed.

A rollback (or the health gate's revert) to the release of the warm master is only the swap. A master
started on `<socket>` itself (by an older fabdeploy, or before this host had slots) is adopted: its socket
gets its release's slot name (a hard link) and its pid a slot pidfile, and, since on exit it would unlink
`<socket>` (gunicorn; uWSGI checks the inode first), it is kept until it is idle and then killed (SIGKILL:
no exit handler runs).

Balanced fleets (address:port) and the other managers keep the graceful reload (README, "Speed").
"""
from __future__ import annotations

from fabdeploy.config import Config
from fabdeploy.hosts.layout import RELEASE_GLOB_ERE, Layout
from fabdeploy.hosts.roles import balanced
from fabdeploy.remote.markers import fail_expanded, note
from fabdeploy.remote.shell import ALIVE_FN, AS_APP, CHILDREN_FN, q

SERVERS = ("uwsgi", "gunicorn")  # the app servers that start beside the live one
# a slot's name: a release id, or that and ".b"
SLOT_ERE = RELEASE_GLOB_ERE.strip("^$") + r"(\.b)?"
# (sh -c, as the app user) write $1 into the file $2 atomically
WRITE_SH = 'umask 027; printf "%s\\n" "$1" > "$2.tmp" && mv -f "$2.tmp" "$2"'


# a unix socket's path holds at most 107 bytes (sun_path); a slot's adds "." and the longest slot name
SUN_PATH_MAX, SLOT_MAX = 107, len(".20261126T053502Z-0123456789ab.b")


def applies(cfg: Config, app) -> bool:
    """Whether this config's app server starts beside the live one (uWSGI or gunicorn, no process manager,
    a unix socket: no balanced fleet, and a deploy_to short enough for the slots' socket paths; otherwise
    the graceful reload)."""
    if cfg.app.manager != "pidfile" or app.name not in SERVERS or balanced(cfg):
        return False
    return len(app.paths(Layout(cfg.paths.deploy_to)).socket.encode()) + SLOT_MAX <= SUN_PATH_MAX


class Slots:
    """The shell words of one app server's slot files (s: a shell word naming the slot, like "$s")."""

    def __init__(self, cfg: Config, app):
        lay = Layout(cfg.paths.deploy_to)
        p = app.paths(lay)
        self.run, self.live, self.pidfile, self.config = lay.run, p.socket, p.pidfile, lay.config
        self.record = q(p.socket + ".live")  # the live slot's name

    def sock(self, s: str) -> str:
        return f'{q(self.live)}."{s}"'

    def pid(self, s: str) -> str:
        return f'{q(self.pidfile)}."{s}"'

    def conf(self, app, s: str) -> str:
        """A slot's own copy of the live config, where the app server needs one (uWSGI: its socket and
        pidfile are in the ini; the deploy user's, in shared/config)."""
        return f'{q(self.config + "/" + app.config_name)}."{s}"'

    def adopted(self, s: str) -> str:
        return f'{q(self.live)}.adopted."{s}"'


def swap_lines(cfg: Config, app, release_word: str, venv_word: str, label: str) -> list[str]:
    """Make the master of release_word the one nginx reaches: its warm master when there is one, else a new
    master started beside the live one and waited for; then record it and retire the others (see the module
    docstring). Sets $action and $pid (the new live master) and $n (its workers)."""
    from fabdeploy import manager
    sl = Slots(cfg, app)
    proc = q(app.process)
    return [
        *app.as_app_lines(cfg),
        ALIVE_FN,
        CHILDREN_FN,
        *app.link_lines(cfg, venv_word),
        *manager.switch_lines(cfg, app),
        f"rel=$(basename {release_word})",
        f"oldm=$(alive {q(sl.pidfile)} {proc} || true)",
        *app.foreign_lines(cfg, "oldm"),
        f"live=$({AS_APP} cat {sl.record} 2>/dev/null || true)",
        *adopt_lines(sl, proc),
        # the live master already runs that release (the health gate's revert after a failed start): nothing
        # to do, unless $fresh asks for a new master (fab reload)
        'if [ -z "${fresh-}" ] && [ -n "$oldm" ] && [ "${live%.b}" = "$rel" ]; then',
        '  pid=$oldm; n=$(children "$pid" | wc -l); action="already serving"',
        "else",
        *["  " + ln for ln in switch_body(cfg, app, sl, proc, release_word, label, venv_word)],
        "fi",
        note(f"{app.name} $action (master $pid, $n workers on {label})"),
    ]


def switch_body(cfg: Config, app, sl: Slots, proc: str, release_word: str, label: str, venv_word: str) -> list[str]:
    """The warm master of the release, or a new one started beside and waited for; the swap; the records;
    the other masters retired."""
    untouched = "${oldm:+ (the live master $oldm still serves, untouched)}"
    log = q(app.paths(Layout(cfg.paths.deploy_to)).log)
    start = app.slot_start_lines(cfg, venv_word, "$s", sl)
    # (gunicorn loads the app before it daemonizes: a release that cannot load fails right here)
    start[-1] += (f" || {{ {AS_APP} tail -n 20 {log} >&2 || true; rm -f {sl.conf(app, '$s')}; "
                  + fail_expanded(f"{app.title} could not start {label}{untouched}") + "; }")
    return [
        # the release's warm master (not the live one), else a new master in a free slot
        "pid=; s=",
        'for c in "$rel" "$rel.b"; do',
        f'  [ "$c" != "$live" ] && [ -z "$pid" ] && pid=$(alive {sl.pid("$c")} {proc}) && s=$c',
        "done",
        'if [ -n "$pid" ]; then',
        "  n=$(children \"$pid\" | wc -l); action=\"swapped to its warm master\"",
        "else",
        '  s=$rel; [ "$s" != "$live" ] || s=$rel.b',
        f'  {AS_APP} rm -f {sl.sock("$s")} {sl.pid("$s")} {sl.adopted("$s")}',
        *["  " + ln for ln in start],
        *["  " + ln for ln in app.want_lines(cfg)],
        '  old=" "',
        *["  " + ln for ln in app.ready_lines(
            cfg, release_word, label, pid=[f"pid=$(alive {sl.pid('$s')} {proc} || true)"],
            sock=f"{AS_APP} test -S {sl.sock('$s')}", hint=untouched,
            on_fail=[f'{{ [ -z "$pid" ] || {AS_APP} kill -KILL "$pid" $(children "$pid"); '
                     f'{AS_APP} rm -f {sl.sock("$s")} {sl.pid("$s")}; rm -f {sl.conf(app, "$s")}; }} 2>/dev/null || true'])],
        '  action="${oldm:+started beside $oldm, swapped}"; action="${action:-started}"',
        "fi",
        # the swap: one rename of a second name of the new socket over the path nginx connects to
        f"{AS_APP} ln -f {sl.sock('$s')} {q(sl.live + '.swap')}",
        f"{AS_APP} mv -Tf {q(sl.live + '.swap')} {q(sl.live)}",
        f'{AS_APP} sh -c {q(WRITE_SH)} sh "$pid" {q(sl.pidfile)}',
        f'{AS_APP} sh -c {q(WRITE_SH)} sh "$s" {sl.record}',
        *retire_lines(cfg, app, sl, proc),
    ]


def adopt_lines(sl: Slots, proc: str) -> list[str]:
    """A live master without a slot (started on the socket path itself): give it one, named after the
    release its cwd is (or "adopted"), and mark it adopted (retire_lines then only kills it once idle)."""
    return [
        f'if [ -n "$oldm" ] && [ "$(alive {sl.pid("$live")} {proc})" != "$oldm" ]; then',
        f'  live=$(basename "$({AS_APP} readlink "/proc/$oldm/cwd" 2>/dev/null)")',
        f'  printf "%s\\n" "$live" | grep -Eqx {q(SLOT_ERE)} || live=adopted',
        f'  {AS_APP} ln -f {q(sl.live)} {sl.sock("$live")}',
        f'  {AS_APP} sh -c {q(WRITE_SH)} sh "$oldm" {sl.pid("$live")}',
        f'  {AS_APP} touch {sl.adopted("$live")}',
        "fi",
    ]


def retire_lines(cfg: Config, app, sl: Slots, proc: str) -> list[str]:
    """After the swap ($s live, $live the slot replaced): keep one warm master (the one replaced, when
    [app] keep_warm and its release differs; an adopted one always, until idle), stop every other slot's
    master (the replaced one once its listen queue is empty: its queued requests are served first), and
    remove the files of dead slots. Nothing here waits for a master to exit."""
    keep = "true" if cfg.app.keep_warm else "false"
    ls = f"{AS_APP} ls -1 {q(sl.run)}"
    name = sl.pidfile.rsplit("/", 1)[1]
    return [
        f'for x in $({ls} | sed -n "s/^{name}\\.//p" | grep -Ex {q(SLOT_ERE + "|adopted")}); do',
        '  [ "$x" != "$s" ] || continue',
        f"  m=$(alive {sl.pid('$x')} {proc} || true)",
        "  if [ -z \"$m\" ]; then",
        f"    {AS_APP} rm -f {sl.pid('$x')} {sl.sock('$x')} {sl.adopted('$x')}; rm -f {sl.conf(app, '$x')}",
        "    continue",
        "  fi",
        f'  if [ "$x" = "$live" ] && {{ {AS_APP} test -e {sl.adopted("$x")} || {{ {keep} && [ "${{x%.b}}" != "$rel" ]; }}; }}; then',
        '    warm=$x; continue',
        "  fi",
        f'  if {AS_APP} test -e {sl.adopted("$x")}; then',
        f'    {AS_APP} kill -KILL "$m" $(children "$m") 2>/dev/null || true',
        "  else",
        # (the master just replaced: connections nginx queued on it before the swap are served first)
        '    [ "$x" != "$live" ] || { j=0; while [ $j -lt 50 ] && ss -xlH 2>/dev/null | '
        f"awk -v p={sl.sock('$x')} '$5 == p && $3 > 0 {{f = 1}} END {{exit !f}}'; do j=$((j + 1)); sleep 0.02; done; }}",
        f'    {AS_APP} kill -TERM "$m" 2>/dev/null || true',
        "  fi",
        f"  rm -f {sl.conf(app, '$x')}",  # (read at its start only; its socket and pidfile go when it exits)
        "done",
    ]


def stop_slots_lines(cfg: Config, app) -> list[str]:
    """(fab stop, after the live master is gone) Stop the warm master too (idle: SIGKILL) and remove every
    slot's files, the record and the link nginx connects to."""
    sl = Slots(cfg, app)
    name = sl.pidfile.rsplit("/", 1)[1]
    return [
        f'for x in $({AS_APP} ls -1 {q(sl.run)} | sed -n "s/^{name}\\.//p" | grep -Ex {q(SLOT_ERE + "|adopted")}); do',
        f"  m=$(alive {sl.pid('$x')} {q(app.process)} || true)",
        f'  [ -z "$m" ] || {AS_APP} kill -KILL "$m" $(children "$m") 2>/dev/null || true',
        f"  {AS_APP} rm -f {sl.pid('$x')} {sl.sock('$x')} {sl.adopted('$x')}; rm -f {sl.conf(app, '$x')}",
        "done",
        f"{AS_APP} rm -f {sl.record} {q(sl.live)}",
    ]
