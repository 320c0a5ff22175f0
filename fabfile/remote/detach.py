"""Detached remote scripts: the publish half of a deploy runs on the host in its own session, so it finishes
(health gate, revert, audit line, unlock) even when the deploying side dies or its SSH channel closes.

The SSH channel runs a small wrapper: it starts the script with `setsid nohup`, its stdout and stderr going
to two files (`<prefix>.out`, `<prefix>.err`), and follows both (`tail -f --pid`) on the same channel, so
the runner parses the marker lines as if the script ran in the channel itself. The script's exit status is
written to `<prefix>.status` and becomes the wrapper's. One channel, as before. When the deploying side is
gone, the wrapper's `tail` dies at its next write and the script goes on; its files stay for inspection
until the next detached run in the same directory (the status file always stays until then: a deploying
side whose channel broke reads it with `settle`).
"""
from __future__ import annotations

import shlex

from fabdeploy.remote.markers import fact, fail_expanded, line
from fabdeploy.remote.shell import pack

ERR_VAR = "FABDEPLOY_DETACHED_ERR"  # the detached script's stderr file (its last `error` marker says why)
SUFFIXES = (".out", ".err", ".status", ".pid", ".sh")


def wrapper(prefix: str) -> str:
    """The shell run over the channel with the script as $1, gzipped and base64-encoded (`sh -c <wrapper>
    fabdeploy <packed>`): unpacked into <prefix>.sh, run from there (and removed when it ends)."""
    P = shlex.quote(prefix)
    folder = shlex.quote(prefix.rsplit("/", 1)[0] or "/")
    return "\n".join([
        f"P={P}",
        # the leftovers of an earlier detached run (its client was gone): only one run holds the lock
        f"rm -f {folder}/*.publish.out {folder}/*.publish.err {folder}/*.publish.status {folder}/*.publish.pid "
        f'{folder}/*.publish.sh "$P.status.tmp"',
        "umask 077",
        ': > "$P.out" && : > "$P.err" || ' + fail_expanded("cannot write $P.out"),
        'printf %s "$1" | base64 -d | gzip -dc > "$P.sh" || ' + fail_expanded("cannot unpack the script into $P.sh"),
        # a background job of a non-interactive sh is no process group leader: setsid does not fork, $! is
        # the detached sh itself
        f'{ERR_VAR}="$P.err" setsid nohup sh -c \'sh "$1"; rc=$?; rm -f "$1"; echo $rc > "$2.tmp"; mv -f "$2.tmp" "$2"\' '
        'fabdeploy-publish "$P.sh" "$P.status" < /dev/null > "$P.out" 2> "$P.err" &',
        "pid=$!",
        'echo "$pid" > "$P.pid"',  # (settle: a run that died without a status is not waited for)
        # (-s: how often tail looks whether $pid ended; output itself comes at once through inotify. At tail's
        # default 1 s, or 0.2, every deploy waited that long after its last line: 0.02 costs nothing)
        'tail -s 0.02 -n +1 -f --pid="$pid" "$P.err" >&2 &',
        'tail -s 0.02 -n +1 -f --pid="$pid" "$P.out"',
        "wait",
        # (the status file stays until the next detached run: a cleanup whose channel broke reads it)
        'if [ -s "$P.status" ]; then rc=$(cat "$P.status"); rm -f "$P.out" "$P.err"; exit "$rc"; fi',
        line("error", "the detached script ended without an exit status (see $P.err on the host)") + " >&2",
        "exit 1",
    ]) + "\n"


def command(prefix: str, script_text: str) -> str:
    """The channel's command: the wrapper, the script as its argument, packed. (SSH hands the whole command
    to the remote shell as one argument, which Linux limits to 128 KiB, MAX_ARG_STRLEN: a publish script
    with every manager's and app server's switch lines comes close; packed it is about a seventh.)"""
    return "sh -c " + shlex.quote(wrapper(prefix)) + " fabdeploy " + pack(script_text)


STATUS_FACT = "detached_status"


def settle(prefix: str, seconds: int) -> list[str]:
    """Lines for the deploying side's cleanup after its channel broke: wait (up to `seconds`) while the
    detached run at `prefix` is still going (its output file is there, its status file is not, its process is
    alive), then report its exit status as the fact `detached_status`: the status, "running" when it did not
    end in time, "unknown" when it ended without one (killed), nothing when no detached run was started."""
    P = shlex.quote(prefix)
    return [
        f"P={P}",
        'if [ -e "$P.out" ] || [ -e "$P.status" ]; then',
        '  i=0',
        f'  while [ -e "$P.out" ] && [ ! -s "$P.status" ] && [ "$i" -lt {int(seconds)} ] && '
        'kill -0 "$(cat "$P.pid" 2>/dev/null)" 2>/dev/null; do',
        "    sleep 1; i=$((i + 1))",
        "  done",
        '  if [ -s "$P.status" ]; then s=$(cat "$P.status"); '
        'elif [ -e "$P.out" ] && kill -0 "$(cat "$P.pid" 2>/dev/null)" 2>/dev/null; then s=running; else s=unknown; fi',
        "  " + fact(STATUS_FACT, "$s"),
        "fi",
    ]
