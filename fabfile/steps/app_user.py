"""The app user ([app] user, default the project name): the system user the app server runs as, created by
the setup phase when missing, and what it may write on the host.

What owns what under deploy_to (the SSH user is "deploy", the app user "app", nginx's group "www-data"):

    releases/ venvs/ tmp/ shared/config   deploy:app       2750  code, virtualenvs, configs: read-only to the app
    shared/media                          app:www-data     2750  uploads (nginx serves them)
    shared/db                             app:app          0700  SQLite databases
    shared/run                            app:www-data     2750  the socket (660, group www-data) and the pidfile
    shared/log                            deploy:app       2770  the app server's log (the app's), audit/boot logs
    shared/static                         deploy:www-data  2755  collectstatic runs as deploy; public (o+rX)
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
from fabdeploy.remote import root
from fabdeploy.remote.markers import fail_expanded, note
from fabdeploy.remote.shell import ME_WORD, q
from fabdeploy.remote.root import APP_GROUP, ME, NGINX_GROUP, Raw, owner


def _useradd(cfg: Config) -> str:
    return root.root("useradd", "--system", "--user-group", "--no-create-home", "--home-dir", cfg.paths.deploy_to,
                     "--shell", "/usr/sbin/nologin", app_user(cfg))


def _table(cfg: Config) -> list[tuple[str, str, str, str]]:
    """path, owner, group, mode of what the app reads or writes (owner ME: the deploy user)."""
    lay = Layout(cfg.paths.deploy_to)
    user = app_user(cfg)
    return [
        *[(d, ME, APP_GROUP, "2750") for d in (lay.releases, lay.venvs, lay.tmp, lay.config)],
        (f"{lay.shared}/media", user, NGINX_GROUP, "2750"),
        (f"{lay.shared}/db", user, APP_GROUP, "700"),
        (lay.run, user, NGINX_GROUP, "2750"),
        (lay.log, ME, APP_GROUP, "2770"),
    ]


def _own(path: str, user: str, group: str, mode: str) -> list[str]:
    """Everything below `path` given to user:group, directories setgid and readable by the group, `path`
    itself `mode` (-H: a `path` that is a link, a shared mount, is its target)."""
    return [root.root("chown", "-R", "-H", owner(user, group), path), root.root("chmod", "-R", "g+rX", path),
            root.root("find", "-H", path, "-mindepth", "1", "-type", "d", "-exec", "chmod", "g+s", "{}", "+"),
            root.root("chmod", mode, path)]


def _log_chown(cfg: Config) -> str:
    return root.root("chown", owner(app_user(cfg), APP_GROUP), app_of(cfg).paths(Layout(cfg.paths.deploy_to)).log)


def _chgrp_app(path: str) -> str:
    return root.root("chgrp", Raw(APP_GROUP), path)


def root_lines(cfg: Config) -> list[str]:
    """The root commands of this module (the drop-in lists them)."""
    lay = Layout(cfg.paths.deploy_to)
    return [_useradd(cfg), *[c for row in _table(cfg) for c in _own(*row)], _log_chown(cfg),
            _chgrp_app(lay.secret_key), _chgrp_app(lay.env_file)]


def create_lines(cfg: Config) -> list[str]:
    """The app user exists (a system user with its own group, home deploy_to, no shell), created with sudo
    when missing; sets $appu and $appg (its group) and $appme (non-empty: the SSH user is the app user)."""
    user = app_user(cfg)
    add = _useradd(cfg)
    return [
        f"appu={q(user)}",
        'if ! id -u "$appu" >/dev/null 2>&1; then',
        f"  out=$({add} 2>&1) || "
        + fail_expanded(f"cannot create the app user {user} (app.user; useradd with sudo -n): $out"),
        "  " + note(f"app user {user} created (the app server runs as it)"),
        "fi",
        'appg=$(id -gn "$appu")',
        f'appme=; [ {ME_WORD} != "$appu" ] || appme=1',
    ]


def ownership_lines(cfg: Config) -> list[str]:
    """(after create_lines and the nginx group: $nginx_group) Owner, group and mode of the directories the
    app reads or writes, set where they differ (recursively: a host deployed before the app user existed)."""
    lay = Layout(cfg.paths.deploy_to)
    log = app_of(cfg).paths(lay).log
    table = _table(cfg)
    # (one `stat` for all of them; when it does not answer one line each, each is asked alone as before)
    lines = ['if [ -z "$appme" ]; then', "  converted=",
             f"  owns=$(stat -L -c %U:%G:%a {' '.join(q(t[0]) for t in table)} 2>/dev/null || true); set -- $owns; "
             f'[ "$#" -eq {len(table)} ] || set --']
    for path, user, group, mode in table:
        # (a link, a shared mount of several app hosts, is its target: the app user needs the same uid on each)
        # (the deploy user compared as the prelude's $FD_ME: no `id` per directory; the sudo lines keep ME)
        mine = ME_WORD.strip(chr(34)) if user == ME else user.strip(chr(34))
        want = f'"{mine}:{group.strip(chr(34))}:{mode}"'
        own = _own(path, user, group, mode)
        # an empty directory (a first deploy has just created it): its owner and mode are all there is to set,
        # 2 sudo instead of 4 (the same command lines: the drop-in is unchanged)
        lines += [f'  o=${{1:-$(stat -L -c %U:%G:%a {q(path)} || true)}}; [ "$#" -eq 0 ] || shift',
                  f'  if [ "$o" != {want} ]; then',
                  f'    if [ -r {q(path)} ] && [ -x {q(path)} ] && [ -z "$(ls -A {q(path)})" ]; then '
                  f"{own[0]} && {own[3]}; else {' && '.join(own)}; fi || "
                  + fail_expanded(f"cannot give {path} to the app user $appu (sudo)"),
                  f'    converted="$converted {path.rsplit("/", 1)[1]}"',
                  "  fi"]
    lines += [
        # the app server's log, written by the deploy user before
        f'  if [ -f {q(log)} ] && [ "$(stat -c %U {q(log)})" != "$appu" ]; then '
        f'{_log_chown(cfg)}; fi',
        f'  if [ "$(stat -c %G:%a {q(lay.secret_key)} 2>/dev/null)" = "$(id -gn):600" ]; then '
        f'{_chgrp_app(lay.secret_key)} && chmod 0640 {q(lay.secret_key)}; fi',
        '  [ -z "$converted" ] || ' + note("app user $appu: owner and modes set on$converted"),
        "fi",
    ]
    return lines


def key_lines(cfg: Config) -> list[str]:
    """(code phase) shared/secret_key and shared/config/app.env readable by the app user's group (0640), or
    0600 when the SSH user is the app user."""
    lay = Layout(cfg.paths.deploy_to)
    user = q(app_user(cfg))
    return [  # (one line per file)
        f'if [ -f {q(f)} ]; then if [ {ME_WORD} = {user} ]; then chmod 600 {q(f)}; else '
        f'appg=${{appg:-$(id -gn {user})}}; m=$(stat -c %G:%a {q(f)} || true); [ "${{m%:*}}" = "$appg" ] || {_chgrp_app(f)}; '
        f'[ "${{m#*:}}" = 640 ] || chmod 640 {q(f)}; fi; fi'
        for f in (lay.secret_key, lay.env_file)
    ]
