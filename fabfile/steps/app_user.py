"""The app user ([app] user, default the project name): the system user the app server runs as, created by
the setup phase when missing, and what it may write on the host.

What owns what under deploy_to (the SSH user is "deploy", the app user "app", nginx's group "www-data"):

    releases/ venvs/ tmp/ shared/config   deploy:app       2750  code, virtualenvs, configs: read-only to the app
    shared/media                          app:www-data     2750  uploads (nginx serves them)
    shared/db                             app:app          0700  SQLite databases
    shared/run                            app:www-data     2750  the socket (660, group www-data) and the pidfile
    shared/log                            deploy:app       2770  the app server's log (the app's), audit/boot logs
    shared/static                         deploy:www-data  2750  collectstatic runs as deploy (unchanged)
    shared/secret_key, shared/config/app.env  deploy:app   0640

setgid directories: what is created inside gets their group. A host deployed before the app user existed is
converted by the next setup (recursively, once: nothing is done when a directory is already right). An app
user that is the SSH user itself ([app] user = "deploy") keeps the old layout and never uses sudo -u.
"""
from __future__ import annotations

from fabdeploy.appserver import of as app_of
from fabdeploy.appserver.base import app_user
from fabdeploy.config import Config
from fabdeploy.hosts.layout import Layout
from fabdeploy.remote.markers import fail_expanded, note
from fabdeploy.remote.shell import q


def create_lines(cfg: Config) -> list[str]:
    """The app user exists (a system user with its own group, home deploy_to, no shell), created with sudo
    when missing; sets $appu and $appg (its group) and $appme (non-empty: the SSH user is the app user)."""
    user = app_user(cfg)
    add = (f"sudo -n useradd --system --user-group --no-create-home --home-dir {q(cfg.paths.deploy_to)} "
           f"--shell /usr/sbin/nologin {q(user)}")
    return [
        f"appu={q(user)}",
        f'if ! id -u "$appu" >/dev/null 2>&1; then',
        f"  out=$({add} 2>&1) || "
        + fail_expanded(f"cannot create the app user {user} (app.user; useradd with sudo -n): $out"),
        "  " + note(f"app user {user} created (the app server runs as it)"),
        "fi",
        'appg=$(id -gn "$appu")',
        'appme=; [ "$(id -un)" != "$appu" ] || appme=1',
    ]


def ownership_lines(cfg: Config) -> list[str]:
    """(after create_lines and the nginx group: $nginx_group) Owner, group and mode of the directories the
    app reads or writes, set where they differ (recursively: a host deployed before the app user existed)."""
    lay = Layout(cfg.paths.deploy_to)
    log = app_of(cfg).paths(lay).log
    me = '"$(id -un)"'
    table = [  # path, owner, group, mode
        *[(d, me, '"$appg"', "2750") for d in (lay.releases, lay.venvs, lay.tmp, lay.config)],
        (f"{lay.shared}/media", '"$appu"', '"$nginx_group"', "2750"),
        (f"{lay.shared}/db", '"$appu"', '"$appg"', "700"),
        (lay.run, '"$appu"', '"$nginx_group"', "2750"),
        (lay.log, me, '"$appg"', "2770"),
    ]
    lines = [
        'if [ -z "$appme" ]; then',
        # own DIR OWNER GROUP MODE: everything below DIR given to OWNER:GROUP (directories setgid, readable by the
        # group) when DIR itself is not OWNER:GROUP MODE. A DIR that is a link (a shared mount: media, the
        # SQLite directory of several app hosts) is its target (the app user needs the same uid on each host).
        '  own() { d=$(readlink -f "$1"); [ "$(stat -c %U:%G:%a "$d")" = "$2:$3:$4" ] && return 0; '
        'sudo -n chown -R "$2:$3" "$d" && sudo -n chmod -R g+rX "$d" && '
        "sudo -n find \"$d\" -mindepth 1 -type d -exec chmod g+s {} + && sudo -n chmod \"$4\" \"$d\" && "
        'converted="$converted ${1##*/}"; }',
        "  converted=",
    ]
    for path, owner, group, mode in table:
        lines.append(f"  own {q(path)} {owner} {group} {mode} || "
                     + fail_expanded(f"cannot give {path} to the app user $appu (sudo)"))
    lines += [
        # the app server's log, written by the deploy user before
        f'  if [ -f {q(log)} ] && [ "$(stat -c %U {q(log)})" != "$appu" ]; then '
        f'sudo -n chown "$appu:$appg" {q(log)}; fi',
        f'  if [ "$(stat -c %G:%a {q(lay.secret_key)} 2>/dev/null)" = "$(id -gn):600" ]; then '
        f'sudo -n chgrp "$appg" {q(lay.secret_key)} && chmod 0640 {q(lay.secret_key)}; fi',
        '  [ -z "$converted" ] || ' + note("app user $appu: owner and modes set on$converted"),
        "fi",
    ]
    return lines


def key_lines(cfg: Config) -> list[str]:
    """(code phase) shared/secret_key and shared/config/app.env readable by the app user's group (0640), or
    0600 when the SSH user is the app user."""
    lay = Layout(cfg.paths.deploy_to)
    user = q(app_user(cfg))
    return [  # (one line)
        f"for f in {q(lay.secret_key)} {q(lay.env_file)}; do "
        '[ -f "$f" ] || continue; '
        f'if [ "$(id -un)" = {user} ]; then chmod 600 "$f"; else '
        f'g=$(id -gn {user}); [ "$(stat -c %G "$f")" = "$g" ] || sudo -n chgrp "$g" "$f"; chmod 640 "$f"; '
        "fi; done",
    ]
