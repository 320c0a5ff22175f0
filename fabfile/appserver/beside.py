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

from dataclasses import dataclass

from fabdeploy.config import Config
from fabdeploy.hosts.layout import RELEASE_GLOB_ERE, Layout
from fabdeploy.hosts.roles import balanced
from fabdeploy.remote.markers import fail_expanded, note
from fabdeploy.remote.shell import ALIVE_FN, AS_APP, CHILDREN_FN, IS_RELEASE_FN, READ_LINE_FN, q, write_file

SERVERS = ("uwsgi", "gunicorn")  # the app servers that start beside the live one
# a slot's name: a release id, or that and ".b"
SLOT_ERE = RELEASE_GLOB_ERE.strip("^$") + r"(\.b)?"
# is_slot WORD: WORD is a slot's name (SLOT_ERE), tested without a process; the scripts below still take the
# ERE as an argument (their positions stay), and test with this.
SLOT_FNS = IS_RELEASE_FN + '\nis_slot() { is_release "${1%.b}"; }'
# The app user's side of a switch: shared/run is its own, so what is read and done there runs as it, in one
# `sh -c` each (one sudo, not one per file: issue 16).
# STATE_SH record pidfile release process ere: six words, "-" for none: the live slot (the record), its
# master, then for each of the release's two slots its master when it serves or is warm, and its master when
# it is retiring (SWAP_SH stopped it and marked it in <socket>.retiring.<slot>: it finishes its requests and
# exits; never swapped to, and its slot is reused only once it is gone).
STATE_SH = "\n".join([
    ALIVE_FN, SLOT_FNS, READ_LINE_FN,
    'rec=$1 pidf=$2 rel=$3 proc=$4 ere=$5 sock=${1%.live}',
    'read_line live "$rec"; is_slot "$live" || [ "$live" = adopted ] || live=-',
    'slot() { m=$(alive "$pidf.$1" "$proc") || { echo "- -"; return; }; read_line r "$sock.retiring.$1"; '
    'if [ "$r" = "$m" ]; then echo "- $m"; else echo "$m -"; fi; }',
    'echo "$live $(alive "$pidf.$live" "$proc" || echo -) $(slot "$rel") $(slot "$rel.b")"',
])
# ADOPT_SH socket slot pid pidfile: the live master's socket gets the slot's name, its pid the slot's pidfile,
# and the slot the adopted mark.
ADOPT_SH = ('set -e; ln -f "$1" "$1.$2"; umask 027; printf "%s\\n" "$3" > "$4.$2.tmp"; mv -f "$4.$2.tmp" "$4.$2"; '
            'touch "$1.adopted.$2"')
# SWAP_SH slot pid live release keep process socket pidfile record ere: the swap (one rename over the socket
# nginx connects to), the records, then every other slot retired (see swap_retire_lines); prints the slots whose
# files are gone (the deploy user removes their config copies). Any failure stops it, with its message.
SWAP_SH = "\n".join([
    "set -e",
    's=$1 pid=$2 live=$3 rel=$4 keep=$5 proc=$6 sock=$7 pidf=$8 rec=$9 ere=${10}',
    ALIVE_FN, SLOT_FNS, READ_LINE_FN,
    CHILDREN_FN,
    'ln -f "$sock.$s" "$sock.swap"',
    'mv -Tf "$sock.swap" "$sock"',
    '(umask 027; printf "%s\\n" "$pid" > "$pidf.tmp"; mv -f "$pidf.tmp" "$pidf")',
    '(umask 027; printf "%s\\n" "$s" > "$rec.tmp"; mv -f "$rec.tmp" "$rec")',
    'for f in "$pidf".*; do',
    '  x=${f#"$pidf".}',
    '  is_slot "$x" || [ "$x" = adopted ] || continue',
    '  [ "$x" != "$s" ] || continue',
    '  m=$(alive "$pidf.$x" "$proc" || true)',
    '  if [ -z "$m" ]; then rm -f "$pidf.$x" "$sock.$x" "$sock.adopted.$x" "$sock.retiring.$x"; echo "$x"; continue; fi',
    '  if [ "$x" = "$live" ] && { [ -e "$sock.adopted.$x" ] || { $keep && [ "${x%.b}" != "$rel" ]; }; }; then continue; fi',
    # (retiring already: stopped by an earlier swap)
    '  read_line r "$sock.retiring.$x"; if [ "$r" = "$m" ]; then echo "$x"; continue; fi',
    '  (umask 027; printf "%s\\n" "$m" > "$sock.retiring.$x")',
    '  if [ -e "$sock.adopted.$x" ]; then',
    '    kill -KILL "$m" $(children "$m") 2>/dev/null || true',
    "  else",
    # (the master just replaced: connections nginx queued on it before the swap are served first)
    '    [ "$x" != "$live" ] || { j=0; while [ $j -lt 50 ] && ss -xlH 2>/dev/null | '
    """awk -v p="$sock.$x" '$5 == p && $3 > 0 {f = 1} END {exit !f}'; do j=$((j + 1)); sleep 0.02; done; }""",
    '    kill -TERM "$m" 2>/dev/null || true',
    "  fi",
    '  echo "$x"',
    "done",
    # (the marks of retiring masters that have exited: their pidfile is gone with them)
    'for f in "$sock".retiring.*; do [ ! -e "$f" ] || alive "$f" "$proc" >/dev/null || rm -f "$f"; done',
])


# RM_RECORD_SH record socket: (fab stop) the record, the link nginx connects to, the retiring marks left
RM_RECORD_SH = 'rm -f "$1" "$2" "$2".retiring.*'

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

    def retiring(self, s: str) -> str:
        """The mark of a slot whose master was stopped and is finishing its requests (its pid)."""
        return f'{q(self.live)}.retiring."{s}"'


# `ready <master> <dir> <want> <socket>` (after the app server's workers_fn): every worker of the master in
# dir, at least `want` of them (and one), its socket there; sets $n to the workers counted
READY_FN = ('ready() { n=0; for c in $(workers "$1"); do n=$((n + 1)); [ "$(readlink "/proc/$c/cwd")" = "$2" ] '
            '|| return 1; done; [ "$n" -gt 0 ] && [ "$n" -ge "$3" ] && [ -S "$4" ]; }')


def fast_sh(app) -> str:
    """(sh -c, as the app user) record pidfile release process ere early fresh keep socket dir want swap turns:
    the commonest switches in one call: when the live master is the live slot's and the app user's own, and the
    release's master is either the one started early (once its workers are all in `dir`, at least `want`, its
    socket there: waited for, `turns` times 0.05 s at most, while that master lives) or a warm one, print
    "swapped <slot> <pid> <workers> <early|warm> <live master>" and swap to it (`swap`: SWAP_SH, whose lines
    follow: the slots gone); print "late" when the early master lived but was not ready in time (the shell's
    readiness wait then reports it without waiting again); nothing otherwise (the shell then reads the state
    and decides as before: a first start, an early master that died, an adoption, a master of another user, a
    new master to start, the release already serving).

    A master started early is rarely ready when the restart phase begins: it answers its warm-up GET once the
    django phase has ended, then forks (appserver/warm.py). Waited for here, in the one call, that costs a few
    `sleep`s instead of the shell's state read, readiness check and readiness loop (nine sudos per deploy,
    about 6 ms of CPU each, measured on the benchmark's hosts)."""
    return "\n".join([
        ALIVE_FN, CHILDREN_FN, app.workers_fn(), READY_FN, SLOT_FNS, READ_LINE_FN,
        'rec=$1 pidf=$2 rel=$3 proc=$4 ere=$5 early=$6 fresh=$7 keep=$8 sock=$9 dir=${10} want=${11} swap=${12} '
        'turns=${13}',
        'oldm=$(alive "$pidf" "$proc") && [ -O "/proc/$oldm" ] || exit 0',
        'read_line live "$rec"; is_slot "$live" || exit 0',
        '[ "$(alive "$pidf.$live" "$proc")" = "$oldm" ] || exit 0',
        '[ -n "$fresh" ] || [ "${live%.b}" != "$rel" ] || exit 0',
        'warm() { m=$(alive "$pidf.$1" "$proc") && read_line r "$sock.retiring.$1" && [ "$r" != "$m" ] && echo "$m"; }',
        'if [ "$early" = "$rel" ]; then',
        '  [ "$rel" != "$live" ] || exit 0',
        '  j=0; until pid=$(warm "$rel") && ready "$pid" "$dir" "$want" "$sock.$rel"; do',
        '    [ -n "$pid" ] || exit 0',
        '    [ $j -lt "$turns" ] || { echo late; exit 0; }',
        '    j=$((j + 1)); sleep 0.05',
        '  done',
        '  s=$rel kind=early',
        'elif [ "$rel" != "$live" ] && pid=$(warm "$rel"); then s=$rel kind=warm',
        'elif [ "$rel.b" != "$live" ] && pid=$(warm "$rel.b"); then s=$rel.b kind=warm',
        "else exit 0; fi",
        'echo "swapped $s $pid $(n_children "$pid") $kind $oldm"',
        'exec sh -c "$swap" sh "$s" "$pid" "$live" "$rel" "$keep" "$proc" "$sock" "$pidf" "$rec" "$ere"',
    ])


def fast_lines(cfg: Config, app, sl: Slots, proc: str, release_word: str) -> list[str]:
    """Try fast_sh (one sudo where the state read, the readiness check and the swap took three or four): sets
    $fast, and then $s, $pid, $n, $oldm, $action as the usual path does; a swap that failed stops the phase."""
    keep = "true" if cfg.app.keep_warm else "false"
    timeout = app.reload_timeout(cfg)
    return [
        *app.want_lines(cfg),
        f'fast=; st=$({AS_APP} sh -c {q(fast_sh(app))} sh {sl.record} {q(sl.pidfile)} "$rel" {proc} {q(SLOT_ERE)} '
        f'"${{early-}}" "${{fresh-}}" {keep} {q(sl.live)} {release_word} "$want" {q(SWAP_SH)} {timeout * 20}) || '
        f'{{ case "$st" in swapped*) {fail_expanded(f"{app.title}: the swap to the new master failed")};; esac; st=; }}',
        # (the early master was waited for the whole reload_timeout: the readiness wait below reports it at once)
        f'late=0; [ "$st" != late ] || late={timeout * 10}',
        'case "$st" in "swapped "*)',
        '  set -- $st; s=$2 pid=$3 n=$4 oldm=$6',
        '  is_slot "$s" && case "$pid$n$oldm" in *[!0-9]*) false;; esac || '
        + fail_expanded(f"{app.title}: an unexpected answer from the swap: $st"),
        '  case "$5" in early) action="started early beside $oldm, swapped";; *) action="swapped to its warm master";; esac',
        "  shift 6",
        f'  for x in "$@"; do if is_slot "$x" || [ "$x" = adopted ]; then rm -f {sl.conf(app, "$x")}; fi; done',
        "  fast=1;;",
        "esac",
    ]


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
        SLOT_FNS,  # (is_slot: fast_lines, adopt_lines and swap_retire_lines below)
        *app.link_lines(cfg, venv_word),
        *manager.switch_lines(cfg, app),
        f"rel={release_word}; rel=${{rel##*/}}",
        *fast_lines(cfg, app, sl, proc, release_word),
        'if [ -z "$fast" ]; then',
        *["  " + ln for ln in [
            f"oldm=$(alive {q(sl.pidfile)} {proc} || true)",
            *app.foreign_lines(cfg, "oldm"),
            *state_lines(sl, proc),
            *adopt_lines(sl),
            # the live master already runs that release (the health gate's revert after a failed start): nothing
            # to do, unless $fresh asks for a new master (fab reload)
            'if [ -z "${fresh-}" ] && [ -n "$oldm" ] && [ "${live%.b}" = "$rel" ]; then',
            '  pid=$oldm; n=$(n_children "$pid"); action="already serving"',
            "else",
            *["  " + ln for ln in switch_body(cfg, app, sl, proc, release_word, label, venv_word)],
            "fi"]],
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
        # the master the deploy started early in the release's slot (see early(): $early names the release;
        # it is waited for below), else the release's warm master (not the live one), else a new master in a
        # free slot
        'pid=; s=; e=; if [ "${early-}" = "$rel" ] && [ "$rel" != "$live" ] && [ -n "$wa" ]; then s=$rel; e=" early"; '
        'elif [ "$rel" != "$live" ] && [ -n "$wa" ]; then pid=$wa; s=$rel; '
        'elif [ "$rel.b" != "$live" ] && [ -n "$wb" ]; then pid=$wb; s=$rel.b; fi',
        'if [ -n "$pid" ]; then',
        "  n=$(n_children \"$pid\"); action=\"swapped to its warm master\"",
        "else",
        '  if [ -z "$s" ]; then',
        '    s=$rel; [ "$s" != "$live" ] || s=$rel.b',
        # (a master of that slot still finishing its requests after an earlier swap stopped it: its exit would
        # remove the files of a new master there; wait for it, at most 10 s, then kill it)
        '    r=$ra; [ "$s" = "$rel" ] || r=$rb',
        '    if [ -n "$r" ]; then j=0; while [ $j -lt 500 ] && [ -d "/proc/$r" ] && '
        """! grep -qs '^State:[[:space:]]*Z' "/proc/$r/status"; do j=$((j + 1)); sleep 0.02; done; """
        f'[ $j -lt 500 ] || {AS_APP} kill -KILL "$r" $(children "$r") 2>/dev/null || true; fi',
        f'    {AS_APP} rm -f {sl.sock("$s")} {sl.pid("$s")} {sl.adopted("$s")} {sl.retiring("$s")}',
        *["    " + ln for ln in start],
        "  fi",
        '  old=" "',  # ($want: set by fast_lines, before)
        # (already ready, as a master started early usually is: one call as the app user instead of the loop's
        # three or more)
        f'  set -- $({AS_APP} sh -c {q(ready_sh(app))} sh {sl.pid("$s")} {proc} {release_word} "$want" '
        f'{sl.sock("$s")} 2>/dev/null || true)',
        '  if [ $# -eq 2 ]; then pid=$1; n=$2; else',
        *["  " + ln for ln in app.ready_lines(
            cfg, release_word, label, pid=[f"pid=$(alive {sl.pid('$s')} {proc} || true)"], start="$late",
            sock=f"{AS_APP} test -S {sl.sock('$s')}", hint=untouched,
            on_fail=[f'{{ [ -z "$pid" ] || {AS_APP} kill -KILL "$pid" $(children "$pid"); '
                     f'{AS_APP} rm -f {sl.sock("$s")} {sl.pid("$s")}; rm -f {sl.conf(app, "$s")}; }} 2>/dev/null || true'])],
        "  fi",
        '  action="${oldm:+started$e beside $oldm, swapped}"; action="${action:-started$e}"',
        "fi",
        *swap_retire_lines(cfg, app, sl, proc),
    ]


def ready_sh(app) -> str:
    """(sh -c, as the app user) pidfile process release want socket: prints "<pid> <workers>" when the master
    of pidfile is alive with at least `want` workers (and one), every one in the release directory, and its
    socket is there; nothing otherwise (the readiness loop then waits as usual)."""
    return "\n".join([
        ALIVE_FN, CHILDREN_FN, app.workers_fn(), READY_FN,
        'pid=$(alive "$1" "$2") && ready "$pid" "$3" "$4" "$5" || exit 0',
        'echo "$pid $n"',
    ])


def state_lines(sl: Slots, proc: str) -> list[str]:
    """Read, as the app user in one call (STATE_SH), the live slot ($live, "" for none), its master ($livem)
    and the masters of the release's two slots ($wa, $wb; $ra, $rb when retiring): every pid checked to be
    digits."""
    return [
        f"st=$({AS_APP} sh -c {q(STATE_SH)} sh {sl.record} {q(sl.pidfile)} \"$rel\" {proc} {q(SLOT_ERE)} || true)",
        'words() { live=${1:--} livem=${2:--} wa=${3:--} ra=${4:--} wb=${5:--} rb=${6:--}; }; words $st',
        '[ "$live" != - ] || live=',
        *[f'case "${v}" in "" | *[!0-9]*) {v}=;; esac' for v in ("livem", "wa", "ra", "wb", "rb")],
    ]


def adopt_lines(sl: Slots) -> list[str]:
    """A live master without a slot (started on the socket path itself): give it one, named after the
    release its cwd is (or "adopted"), and mark it adopted (SWAP_SH then only kills it once idle)."""
    return [
        'if [ -n "$oldm" ] && [ "$livem" != "$oldm" ]; then',
        f'  live=$(basename "$({AS_APP} readlink "/proc/$oldm/cwd" 2>/dev/null)")',
        '  is_slot "$live" || live=adopted',
        f'  {AS_APP} sh -c {q(ADOPT_SH)} sh {q(sl.live)} "$live" "$oldm" {q(sl.pidfile)}',
        "fi",
    ]


def swap_retire_lines(cfg: Config, app, sl: Slots, proc: str) -> list[str]:
    """After the new master is ready ($s its slot, $pid its pid, $live the slot replaced): the swap, the
    records and the retirement of every other slot, as the app user in one call (SWAP_SH): keep one warm
    master (the one replaced, when [app] keep_warm and its release differs; an adopted one always, until
    idle), stop every other slot's master (the replaced one once its listen queue is empty: its queued
    requests are served first), remove the files of dead slots; then the deploy user removes the config
    copies of the slots gone. Nothing here waits for a master to exit."""
    keep = "true" if cfg.app.keep_warm else "false"
    return [
        f'gone=$({AS_APP} sh -c {q(SWAP_SH)} sh "$s" "$pid" "$live" "$rel" {keep} {proc} {q(sl.live)} '
        f"{q(sl.pidfile)} {sl.record} {q(SLOT_ERE)})",
        f'for x in $gone; do if is_slot "$x" || [ "$x" = adopted ]; then rm -f {sl.conf(app, "$x")}; fi; done',
    ]


@dataclass(frozen=True)
class Early:
    """How a deploy starts the new release's master early (see early): `prep` writes its slot's config (the
    deploy user, before the django phase's boots); then either `lines` start it from the shell (after the
    app user's boot) or the one boot starts it itself with `params` (steps/django_program.py start_early:
    after migrate, while the static inputs and check --deploy are looked at)."""

    prep: list[str]
    lines: list[str]
    params: dict
    marker: str  # the file that tells the restart (early_var_lines); the program's EARLY_OK line makes it


def early(cfg: Config, rel, server=None) -> Early | None:
    """(the django phase of a deploy, once migrate is done) Start the new release's master in its slot now, so
    that it loads the app while the rest of the django phase, the config phase and the switch run; the restart
    then waits for it (every worker on the release) and swaps, instead of starting it (issue 16). Only where
    the master starts beside (applies) and the app server can start before the switch (uWSGI: it daemonizes
    at once; early_argv); not when this deploy replaces the host's secret key at the switch (the app reads it
    when it loads). A failure to start here changes nothing: the restart starts it as usual. A deploy that
    stops before the switch stops it again (abandon_lines). None: not here."""
    from fabdeploy.steps.code import env_file_names
    app = early_app(cfg, rel)
    if not app:
        return None
    argv = app.early_argv(cfg, rel, rel.id)
    lay = Layout(cfg.paths.deploy_to)
    T, sl = lay.staging(rel.id), Slots(cfg, app)
    path, text = app.slot_config(cfg, rel, server, rel.id)
    key, log, marker = q(T + "/secret_key"), T + "/early.out", T + "/early"
    prep = [f"if [ ! -f {key} ]; then",  # (a fleet key that replaces the host's: the restart starts it)
            f"  {AS_APP} rm -f {sl.sock(rel.id)} {sl.pid(rel.id)} {sl.adopted(rel.id)}",
            *["  " + ln for ln in write_file(path, text, mode="0640")],  # (0640: the app user's group, setgid)
            "fi"]
    lines = [f"if [ -f {q(path)} ] && [ ! -f {key} ]; then",
             f"  if {AS_APP} {' '.join(q(a) for a in argv)} </dev/null >{q(log)} 2>&1; then : > {q(marker)}; "
             f"else rm -f {q(path)}; fi",
             "fi"]
    params = {"argv": argv, "config": path, "cwd": lay.deploy_to, "unless": T + "/secret_key",
              "drop": sorted({*env_file_names(cfg), "DJANGO_SETTINGS_MODULE", "FABDEPLOY_RELEASE"})}
    return Early(prep, lines, params, marker)


def early_var_lines(cfg: Config, rel) -> list[str]:
    """(a deploy's restart, before the reload) $early: the release whose master `early` started; [] where
    none is started early."""
    if not early_app(cfg, rel):
        return []
    T = Layout(cfg.paths.deploy_to).staging(rel.id)
    return [f"early=; [ ! -e {q(T + '/early')} ] || early={q(rel.id)}"]


def early_app(cfg: Config, rel):
    """The app server, when its master for the release starts early (see early); else None."""
    from fabdeploy import appserver
    app = appserver.of(cfg)
    return app if applies(cfg, app) and app.early_argv(cfg, rel, rel.id) else None


def abandon_lines(cfg: Config, rel) -> list[str]:
    """(a deploy that stops before its switch) The master `early` started for the release, if any:
    killed (it never served) and its slot's files removed."""
    app = early_app(cfg, rel)
    if not app:
        return []
    sl = Slots(cfg, app)
    return [
        *app.as_app_lines(cfg), ALIVE_FN, CHILDREN_FN,
        f"m=$(alive {sl.pid(rel.id)} {q(app.process)} || true)",
        f'[ -z "$m" ] || {AS_APP} kill -KILL "$m" $(children "$m") 2>/dev/null || true',
        f"{AS_APP} rm -f {sl.pid(rel.id)} {sl.sock(rel.id)} {sl.adopted(rel.id)} 2>/dev/null || true",
        f"rm -f {sl.conf(app, rel.id)}",
    ]


def not_live_lines(cfg: Config, rel) -> list[str]:
    """(a publish that failed) When `current` is not the release (the switch failed, or the health gate
    reverted), its master is stopped like an abandoned one's (abandon_lines): it was started for this deploy
    and nothing may reach it."""
    lines = abandon_lines(cfg, rel)
    if not lines:
        return []
    lay = Layout(cfg.paths.deploy_to)
    return [f'if [ "$(readlink {q(lay.current)})" != {q(lay.release(rel.id))} ]; then',
            *["  " + ln for ln in lines], "fi"]


def stop_slots_lines(cfg: Config, app) -> list[str]:
    """(fab stop, after the live master is gone) Stop the warm master too (idle: SIGKILL) and remove every
    slot's files, the record and the link nginx connects to."""
    sl = Slots(cfg, app)
    name = sl.pidfile.rsplit("/", 1)[1]
    return [
        f'for x in $({AS_APP} ls -1 {q(sl.run)} | sed -n "s/^{name}\\.//p" | grep -Ex {q(SLOT_ERE + "|adopted")}); do',
        f"  m=$(alive {sl.pid('$x')} {q(app.process)} || true)",
        f'  [ -z "$m" ] || {AS_APP} kill -KILL "$m" $(children "$m") 2>/dev/null || true',
        f"  {AS_APP} rm -f {sl.pid('$x')} {sl.sock('$x')} {sl.adopted('$x')} {sl.retiring('$x')}; rm -f {sl.conf(app, '$x')}",
        "done",
        f"{AS_APP} sh -c {q(RM_RECORD_SH)} sh {sl.record} {q(sl.live)}",
    ]
