"""The shell toolkit shared by every step: quoting, atomic file writes, process helpers."""
from __future__ import annotations

import base64
import gzip
import secrets as _secrets
import shlex




def q(value) -> str:
    """Shell-quote one value."""
    return shlex.quote(str(value))


# SSH hands the whole command to the remote user's shell as one argument (`$SHELL -c <command>`), which Linux
# limits to 128 KiB (MAX_ARG_STRLEN, with its NUL): a script over PACK_OVER travels packed, about a seventh.
ARG_MAX_BYTES = 128 * 1024 - 1
PACK_OVER = 64 * 1024
UNPACK_EVAL = 'eval "$(printf %s "$0" | base64 -d | gzip -dc)"'  # ($0: the packed script, as below)


def pack(text: str) -> str:
    """text gzipped (level 9) and base64-encoded on one line: a shell word that needs no quoting, unpacked on
    the host with `base64 -d | gzip -dc`."""
    return base64.b64encode(gzip.compress(text.encode(), 9)).decode()


def packed_command(text: str, shell: str = "sh -c") -> str:
    """A command that runs the script `text` packed: `sh -c 'eval "$(unpack "$0")"' <packed>` (one shell,
    the script evaluated in it; no temporary file)."""
    return f"{shell} {q(UNPACK_EVAL)} {pack(text)}"


def sh_command(text: str, shell: str = "sh -c") -> str:
    """`sh -c <text>`, packed (packed_command) when text is over PACK_OVER bytes."""
    if len(text.encode()) > PACK_OVER:
        return packed_command(text, shell)
    return f"{shell} {q(text)}"



def read_word(var: str, path: str) -> str:
    """Set $var to the first line of the file at `path` ("" when it is missing), with `read` (no process):
    the records and stamps fabdeploy keeps on hosts."""
    return f"{var}=; [ ! -f {q(path)} ] || read -r {var} < {q(path)} || {var}="


def link_name_word(path: str) -> str:
    """A shell word: the last part of the symlink `path`'s target (a release id for `current`), with readlink
    and the shell's ${x##*/} (no basename)."""
    return f'"$(fd_l=$(readlink {q(path)}); echo "${{fd_l##*/}}")"'


def new_file(path: str, content: str) -> str:
    """The line that writes `content` to `path` with the shell's printf (a builtin: no process): for a file of
    a release being built, which nothing reads yet (no temp file and rename needed); its mode comes from the
    umask (the code phase's 022: 0644)."""
    if not content.endswith("\n"):
        content += "\n"
    return f"printf '%s' {q(content)} > {q(path)}"


def write_file(path: str, content: str, mode: str = "0644") -> list[str]:
    """Lines that write `content` to `path` (atomically, via a temp file and rename) with `mode`. The temp file
    is new (a leftover one, or anything planted under its name, is removed first: rm only then), written from
    a here-document (the content verbatim: secrets in it are masked as they are in display()) under the umask
    that gives it `mode` from creation; a mode with execute or special bits, which a created file never gets,
    is set with chmod. Usually two programs: cat and mv."""
    delim = "FABDEPLOY_EOF"
    while delim in content:
        delim = "FABDEPLOY_EOF_" + _secrets.token_hex(4)
    if not content.endswith("\n"):
        content += "\n"
    tmp = q(f"{path}.fabdeploy-tmp")
    m = int(mode, 8)
    umask = "077" if m & 0o7111 else f"{0o777 & ~m:03o}"
    return [
        f"if [ -e {tmp} ] || [ -L {tmp} ]; then rm -f {tmp}; fi",
        f"(umask {umask}; cat > {tmp}) <<'{delim}'\n{content}{delim}",
        *([f"chmod {mode} {tmp}"] if m & 0o7111 else []),
        f"mv -f {tmp} {q(path)}",
    ]


# Shell helpers: a pid from a pidfile that is alive and is the named program ("running" is never the
# file merely existing: `nginx -t` leaves an empty pidfile behind; nor a zombie: a master killed with
# SIGKILL whose parent has not reaped it yet).
# (a pidfile the SSH user cannot read, in the app user's shared/run, is read as the app user: $ASAPP)
ALIVE_FN = (
    # alive PIDFILE NAME: the pid in the file when `running` (read with `read`, no process; a file the SSH user
    # cannot read is read as the app user: one sudo)
    'running() { _rc=; read -r _rc 2>/dev/null < "/proc/$1/comm" || return 1; case $_rc in *"$2"*) ;; *) return 1;; '
    'esac; _rs=; read -r _rs 2>/dev/null < "/proc/$1/stat" || return 1; _rs=${_rs##*") "}; case $_rs in Z*) return 1;; '
    'esac; }\n'
    'alive() { p=; read -r p 2>/dev/null < "$1" || [ -n "$p" ] || '
    '{ [ -n "${ASAPP-}" ] && p=$($ASAPP cat "$1" 2>/dev/null | tr -dc 0-9); } || true; '
    'case $p in ""|*[!0-9]*) return 1;; esac; running "$p" "$2" && echo "$p"; }')
# (running PID NAME: the process lives, is no zombie, and its name (/proc/PID/comm) contains NAME; no process
# is started for it, as for everything these helpers do: each fork and exec of `cat`, `grep` or `tr` costs a
# few ms of a loaded host's CPU, and a deploy ran a hundred of them on each host.)

# The SSH user's name: the script's prelude sets $FD_ME once (remote/script.py); in a body run by another
# shell (sudo -u, sh -c) it is unset there, and `id -un` tells.
ME_WORD = '"${FD_ME:-$(id -un)}"'

# read_line VAR FILE: VAR is FILE's first line ("" when it cannot be read), without a process: read_word for
# a file whose path is only known on the host.
READ_LINE_FN = 'read_line() { eval "$1="; read -r "$1" 2>/dev/null < "$2" || true; }'

# is_release WORD: WORD is a release id (layout.RELEASE_GLOB_ERE), tested without a process.
IS_RELEASE_FN = ('is_release() { case $1 in [0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]T[0-9][0-9][0-9][0-9][0-9][0-9]Z-?*) '
                 'case ${1#*Z-} in *[!0-9a-f]*) return 1;; esac;; *) return 1;; esac; }')


# children PID: its child processes' pids, one a line, read from /proc/PID/task/*/children (every thread's, by
# `read`: no process, where the grep through every /proc/*/status was two and read them all); a kernel without
# that file (CONFIG_PROC_CHILDREN) gets the grep. n_children PID: how many (no `| wc -l`).
CHILDREN_FN = ('children() { if [ -r "/proc/$1/task/$1/children" ]; then for _t in /proc/"$1"/task/*/children; do '
               '_c=; read -r _c 2>/dev/null < "$_t" || true; for _p in $_c; do echo "$_p"; done; done; '
               'elif [ -d "/proc/$1" ]; then grep -ls "^PPid:[[:space:]]*$1\\$" /proc/[0-9]*/status 2>/dev/null '
               '| cut -d/ -f3; fi; }\n'
               'n_children() { set -- $(children "$1"); echo $#; }')



# The app user ([app] user): the app server runs as it, never as the SSH user (whose sudo would make any code
# execution in the app root). Whatever reads the app server's pidfile, its socket, its log or its processes'
# cwd (/proc/<pid>/cwd needs the same uid), or signals it, runs as the app user: `$ASAPP cmd` in lines that
# as_app_lines set up, or one as_user line. An app user that is the SSH user itself needs no sudo at all.
AS_APP = "${ASAPP-}"  # the prefix of a command run as the app user (empty: the SSH user is the app user)


def as_app_lines(user: str) -> list[str]:
    """Set $ASAPP to the words that run a command as `user` ("sudo -n -u USER"), or to nothing when the SSH
    user is that user."""
    return [f'if [ {ME_WORD} = {q(user)} ]; then ASAPP=; else ASAPP={q("sudo -n -u " + user)}; fi']


def as_user(user: str, lines: list[str]) -> str:
    """One line running `lines` (a sh script) as `user`, its stdout and status the caller's: through
    `sudo -n -u USER sh -c`, or plain `sh -c` when the SSH user is that user."""
    body = q("\n".join(lines))
    return f'if [ {ME_WORD} = {q(user)} ]; then sh -c {body}; else sudo -n -u {q(user)} sh -c {body}; fi'


# group_lives PGID: a process of that group is alive and no zombie (`kill -0 -PGID` also counts the zombies,
# which an init that reaps late, or none at all in a container, leaves for seconds or for ever).
GROUP_LIVES_FN = ('group_lives() { for f in /proc/[0-9]*/stat; do read -r l 2>/dev/null < "$f" || continue; '
                  'set -- ${l##*") "}; [ "${3-}" = "$g" ] && [ "$1" != Z ] && return 0; done; return 1; }')


def stop_group(pgid: int | None) -> list[str]:
    """Lines that stop an interrupted script's process group (TERM, up to 5 s, then KILL); none without one."""
    if not pgid:
        return []
    return [
        f"if kill -TERM -{int(pgid)} 2>/dev/null; then",
        f"  g={int(pgid)}; {GROUP_LIVES_FN}",
        "  i=0; while group_lives && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done",
        f"  kill -KILL -{int(pgid)} 2>/dev/null || true",
        "fi",
    ]
