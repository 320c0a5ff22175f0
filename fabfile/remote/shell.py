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
ALIVE_FN = ('alive() { p=$(cat "$1" 2>/dev/null | tr -dc 0-9); [ -n "$p" ] && [ -d "/proc/$p" ] && '
            'grep -qs "$2" "/proc/$p/comm" && ! grep -qs "^State:[[:space:]]*Z" "/proc/$p/status" && echo "$p"; }')


CHILDREN_FN = ("children() { grep -ls \"^PPid:[[:space:]]*$1\\$\" /proc/[0-9]*/status 2>/dev/null "
               "| cut -d/ -f3; }")



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
