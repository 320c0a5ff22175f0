"""The shell toolkit shared by every step: quoting, atomic file writes, process helpers."""
from __future__ import annotations

import secrets as _secrets
import shlex




def q(value) -> str:
    """Shell-quote one value."""
    return shlex.quote(str(value))



def write_file(path: str, content: str, mode: str = "0644") -> list[str]:
    """Lines that write `content` to `path` (atomically, via a temp file and rename) with `mode`."""
    delim = "FABDEPLOY_EOF"
    while delim in content:
        delim = "FABDEPLOY_EOF_" + _secrets.token_hex(4)
    if not content.endswith("\n"):
        content += "\n"
    tmp = f"{path}.fabdeploy-tmp"
    return [
        f"rm -f {q(tmp)}",
        f"(umask 077; cat > {q(tmp)}) <<'{delim}'\n{content}{delim}",
        f"chmod {mode} {q(tmp)}",
        f"mv -f {q(tmp)} {q(path)}",
    ]


# Shell helpers: a pid from a pidfile that is alive and is the named program ("running" is never the
# file merely existing: `nginx -t` leaves an empty pidfile behind; nor a zombie: a master killed with
# SIGKILL whose parent has not reaped it yet).
# (a pidfile the SSH user cannot read, in the app user's shared/run, is read as the app user: $ASAPP)
ALIVE_FN = ('alive() { p=$({ cat "$1" || { [ -n "${ASAPP-}" ] && $ASAPP cat "$1"; }; } 2>/dev/null | tr -dc 0-9); [ -n "$p" ] && [ -d "/proc/$p" ] && '
            'grep -qs "$2" "/proc/$p/comm" && ! grep -qs "^State:[[:space:]]*Z" "/proc/$p/status" && echo "$p"; }')


CHILDREN_FN = ("children() { grep -ls \"^PPid:[[:space:]]*$1\\$\" /proc/[0-9]*/status 2>/dev/null "
               "| cut -d/ -f3; }")



# The app user ([app] user): the app server runs as it, never as the SSH user (whose sudo would make any code
# execution in the app root). Whatever reads the app server's pidfile, its socket, its log or its processes'
# cwd (/proc/<pid>/cwd needs the same uid), or signals it, runs as the app user: `$ASAPP cmd` in lines that
# as_app_lines set up, or one as_user line. An app user that is the SSH user itself needs no sudo at all.
AS_APP = "${ASAPP-}"  # the prefix of a command run as the app user (empty: the SSH user is the app user)


def as_app_lines(user: str) -> list[str]:
    """Set $ASAPP to the words that run a command as `user` ("sudo -n -u USER"), or to nothing when the SSH
    user is that user."""
    return [f'if [ "$(id -un)" = {q(user)} ]; then ASAPP=; else ASAPP={q("sudo -n -u " + user)}; fi']


def as_user(user: str, lines: list[str]) -> str:
    """One line running `lines` (a sh script) as `user`, its stdout and status the caller's: through
    `sudo -n -u USER sh -c`, or plain `sh -c` when the SSH user is that user."""
    body = q("\n".join(lines))
    return f'if [ "$(id -un)" = {q(user)} ]; then sh -c {body}; else sudo -n -u {q(user)} sh -c {body}; fi'


def stop_group(pgid: int | None) -> list[str]:
    """Lines that stop an interrupted script's process group (TERM, up to 5 s, then KILL); none without one."""
    if not pgid:
        return []
    return [
        f"if kill -TERM -{int(pgid)} 2>/dev/null; then",
        f"  i=0; while kill -0 -{int(pgid)} 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done",
        f"  kill -KILL -{int(pgid)} 2>/dev/null || true",
        "fi",
    ]
