"""Every command fabdeploy runs as root, built here so that a sudoers drop-in can list them (`fab sudoers`).

A root command is `sudo -n` + the binary's full path (BINARIES) + arguments fixed by the project's config:
no temp names, no globs. sudoers matches a command's arguments exactly, so `root_commands` (remote/sudoers.py)
derives its list from the same builders the scripts use. Files root installs are staged by the deploy user at
fixed paths under shared/config and installed with one fixed `install` line.

Three words are the only shell expansions allowed in a root command (RUNTIME): the deploy user
("$(id -un)"), the nginx group ("$nginx_group") and the app user's group ("$appg"). Each expands on the host
to one fixed name, which the drop-in names (`fab sudoers --user ... --nginx-group ...`).

A few root commands cannot be fixed (a pid, a port's owner, a log chosen at run time): `best_effort` builds
them with a bare binary name; they are never in the drop-in, and every caller copes when sudo refuses them
(README, "Limiting the deploy user's sudo").
"""
from __future__ import annotations

import shlex

from fabdeploy.remote.shell import q

SUDO = "sudo -n"

BINARIES = {
    "nginx": "/usr/sbin/nginx",
    "systemctl": "/usr/bin/systemctl",
    "supervisorctl": "/usr/bin/supervisorctl",
    "install": "/usr/bin/install",
    "nft": "/usr/sbin/nft",
    "useradd": "/usr/sbin/useradd",
    "chown": "/usr/bin/chown",
    "chgrp": "/usr/bin/chgrp",
    "chmod": "/usr/bin/chmod",
    "find": "/usr/bin/find",
    "mkdir": "/usr/bin/mkdir",
    "rm": "/usr/bin/rm",
    "ln": "/usr/bin/ln",
    "mv": "/usr/bin/mv",
    "cp": "/usr/bin/cp",
    "tail": "/usr/bin/tail",
    "service": "/usr/sbin/service",
    "supervisord": "/usr/bin/supervisord",
    "openssl": "/usr/bin/openssl",
    "certbot": "/usr/bin/certbot",
    "env": "/usr/bin/env",
    "base64": "/usr/bin/base64",
}

ME = '"$(id -un)"'  # the deploy user (the SSH user), as a whole word
NGINX_GROUP = '"$nginx_group"'  # nginx's group (setup.py sets $nginx_group)
APP_GROUP = '"$appg"'  # the app user's group (steps/app_user.py sets $appg)
RUNTIME = ("$(id -un)", "$nginx_group", "$appg")  # (as they read once the shell removed the quotes)


class Raw(str):
    """An argument written as is (a RUNTIME word in double quotes), not shell-quoted."""


def owner(user: str, group: str) -> Raw:
    """A `chown` owner argument: `user` a fixed name or ME, `group` a fixed name or a RUNTIME word."""
    def bare(w):
        return w[1:-1] if w.startswith('"') else w
    return Raw(f'"{bare(user)}:{bare(group)}"')


def root(binary: str, *args) -> str:
    """`sudo -n /full/path/binary args...` (args shell-quoted, except Raw ones)."""
    words = [a if isinstance(a, Raw) else q(a) for a in args]
    return " ".join([SUDO, BINARIES[binary], *words])


def best_effort(binary: str, *args: str) -> str:
    """A root command whose arguments are only known at run time (never in a drop-in): args as written."""
    return " ".join([SUDO, binary, *args])


# ---- builders used by more than one module

def install(staged: str, target: str, mode: str = "0644", parents: bool = False) -> str:
    """root installs a file the deploy user staged at a fixed path."""
    return root("install", *(["-D"] if parents else []), "-m", mode, staged, target)


def rm(path: str) -> str:
    return root("rm", "-f", path)


def nginx(*args: str) -> str:
    return root("nginx", *args)


NGINX_TEST = nginx("-t")
NGINX_RELOAD = nginx("-s", "reload")
NGINX_START = nginx()
NGINX_ERROR_TAIL = root("tail", "-n", "5", "/var/log/nginx/error.log")


def argv(command: str, subst: dict[str, str]) -> tuple[str, ...]:
    """The argv sudo sees for a `root()` line (without `sudo -n`), RUNTIME words replaced by `subst`."""
    words = shlex.split(command)
    assert words[:2] == SUDO.split(), command
    out = []
    for w in words[2:]:
        for k, v in subst.items():
            w = w.replace(k, v)
        out.append(w)
    return tuple(out)


def sudoers_escape(word: str) -> str:
    """A word of a sudoers Cmnd_Alias: `,` `:` `=` `\\` escaped."""
    for ch in "\\,:=":
        word = word.replace(ch, "\\" + ch)
    return word
