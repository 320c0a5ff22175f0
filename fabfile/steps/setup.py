"""The setup phase: create the layout, take the lock, report the host's facts."""
from __future__ import annotations

from fabdeploy.steps import app_user as _app_user
from fabdeploy.steps import secret_key as _secret_key
from fabdeploy import appserver
from fabdeploy.config import Config
from fabdeploy.front import nginx_toggle
from fabdeploy.hosts.layout import NGINX_CONF, VENV_COMPLETE, Layout
from fabdeploy.local.wheelhouse import PYTHON_FACTS_PY
from fabdeploy.remote import root
from fabdeploy.remote.markers import fact, fail
from fabdeploy.remote.script import Phase
from fabdeploy.remote.shell import ME_WORD, q

# (after PYTHON_FACTS_PY, in the same Python) a third line: "venv" when it can make virtualenvs
VENV_CHECK_PY = '\ntry:\n    import venv, ensurepip\nexcept Exception:\n    print("no-venv")\nelse:\n    print("venv")\n'


def python_facts_lines(py: str, cache: str) -> list[str]:
    """$python_version, $python_platform and $py_venv ("venv" when the host's Python can make virtualenvs)
    from one start of that Python (PYTHON_FACTS_PY + VENV_CHECK_PY), or, without starting it (60-100 ms on a
    small host), from `cache`: the answer of a start that said "venv", kept with the interpreter's device,
    inode, size and mtime (`stat -L`: another Python behind the same name, an upgrade, asks again). An answer
    without "venv" is never reused (installing python3-venv does not touch the interpreter)."""
    return [
        f"py_path=$(command -v {q(py)}) || {fail(f'{py} not found on the host (project.python)')}",
        "py_key=$(stat -L -c %d:%i:%s:%Y \"$py_path\" 2>/dev/null) || py_key=",
        "py_k= python_version= python_platform= py_venv=",
        f'if [ -n "$py_key" ] && [ -f {q(cache)} ]; then {{ read -r py_k; read -r python_version; '
        f"read -r python_platform; read -r py_venv; }} < {q(cache)} || true; fi",
        'if [ -z "$py_key" ] || [ "$py_k" != "$py_key" ] || [ "$py_venv" != venv ] || [ -z "$python_platform" ]; then',
        f"  python_facts=$({q(py)} -c {q(PYTHON_FACTS_PY + VENV_CHECK_PY)})",
        "  python_version= python_platform= py_venv=",
        '  { read -r python_version; read -r python_platform; read -r py_venv; } <<FABDEPLOY_FACTS || true\n'
        "$python_facts\nFABDEPLOY_FACTS",
        '  if [ "$py_venv" = venv ] && [ -n "$py_key" ]; then',
        f"    printf '%s\\n' \"$py_key\" \"$python_version\" \"$python_platform\" \"$py_venv\" > {q(cache + '.tmp')} && "
        f"mv -f {q(cache + '.tmp')} {q(cache)} || true",
        "  fi",
        "fi",
    ]


def root_lines(cfg: Config) -> list[str]:
    """The root commands of the setup phase: deploy_to created and given to the deploy user, the directories
    and the socket nginx reads given to its group."""
    lay = Layout(cfg.paths.deploy_to)
    return [*_mkdir_commands(cfg.paths.deploy_to), *[c for d in _nginx_dirs(lay) for c in _nginx_group(d, lay)],
            _sock_group(cfg)]


def _mkdir_commands(path: str) -> list[str]:
    return [root.root("mkdir", "-p", path), root.root("chown", root.owner(root.ME, ""), path)]


def _nginx_dirs(lay: Layout) -> tuple[str, ...]:
    return (lay.run, lay.static, f"{lay.shared}/media")


def _nginx_mode(d: str, lay: Layout) -> str:
    """The static root is public (what it holds is served to anyone; the app itself reads it too:
    ManifestStaticFilesStorage's staticfiles.json, WhiteNoise): 2755. The socket's and the media
    directories: the nginx group only, 2750."""
    return "2755" if d == lay.static else "2750"


def _nginx_group(d: str, lay: Layout) -> list[str]:
    return [root.root("chgrp", root.Raw(root.NGINX_GROUP), d), root.root("chmod", _nginx_mode(d, lay), d)]


def _sock_group(cfg: Config) -> str:
    return root.root("chgrp", root.Raw(root.NGINX_GROUP), appserver.of(cfg).paths(Layout(cfg.paths.deploy_to)).socket)


def _sudo_mkdir_owned(path: str) -> list[str]:
    mkdir, chown = _mkdir_commands(path)
    return [
        f"if [ ! -d {q(path)} ]; then",
        f"  {{ {mkdir} && {chown}; }} 2>/dev/null || "
        + fail(f"{path} does not exist and cannot be created with sudo (mkdir, chown): create it, owned by the "
               "deploy user, or allow those commands (fab sudoers)"),
        "fi",
        f'[ -w {q(path)} ] || {{ echo "{path} is not writable by $(id -un)" >&2; exit 1; }}',
    ]



def setup(cfg: Config, lock_lines: list[str] = (), unchanged_lines: list[str] = (), app: bool = True) -> Phase:
    """Create the layout (sudo only where needed), take the deploy lock, report host facts. `app` False:
    a load balancer host (no virtualenvs)."""
    lay = Layout(cfg.paths.deploy_to)
    sock = appserver.of(cfg).paths(lay).socket
    py = cfg.project.python
    shared_dirs = [f"{lay.shared}/{d}" for d in cfg.paths.shared_dirs]
    dirs = [lay.releases, lay.venvs, lay.tmp, lay.shared, lay.log, lay.run, lay.config,
            f"{lay.shared}/static", f"{lay.shared}/media", f"{lay.shared}/db", *shared_dirs]
    nginx_user = (f"nginx_user={q(cfg.nginx.user)}" if cfg.nginx.user else
                  'nginx_user=${fd_nu:-www-data}')  # (SCAN_LINE's)
    lines = [
        *_sudo_mkdir_owned(cfg.paths.deploy_to),
        *lock_lines,
        # (before the unchanged exit: an unchanged host's key takes part in the fleet's agreement too)
        *(_secret_key.fingerprint_lines(cfg.paths.deploy_to) if app else []),
        *unchanged_lines,
        "mkdir -p " + " ".join(q(d) for d in dirs),
        *python_facts_lines(py, f"{lay.config}/python-facts"),
        ('[ "$py_venv" = venv ] || '
         + fail(f"{py} has no venv/ensurepip module (on Debian: apt-get install python3-venv)")) if app else "true",
        f"[ -f {NGINX_CONF} ] || " + fail(f"nginx is not installed ({NGINX_CONF} missing)"),
        nginx_toggle.SCAN_LINE,
        nginx_user,
        'nginx_group=$(id -gn "$nginx_user" 2>/dev/null) || '
        '{ echo "nginx user $nginx_user does not exist (nginx.user)" >&2; exit 1; }',
        nginx_toggle.layout_line(cfg),
        # Directories the web server reads (the socket, static files, media): its group, setgid so what is
        # created inside inherits it, nothing for others but in the static root, which is public (setting the
        # setgid bit on a group one is not a member of needs root). Everything else is private to the deploy user: deploy_to and shared can
        # only be traversed, shared/db and shared/config are 0700 (the scripts run with umask 027).
        *[f'if [ "$(stat -L -c %G:%a {q(d)})" != "$nginx_group:{_nginx_mode(d, lay)}" ]; then '
          f'{{ {" && ".join(_nginx_group(d, lay))}; }} || '
          f'{fail(f"cannot give {d} to the nginx group (sudo)")}; fi'
          for d in _nginx_dirs(lay)],
        f"chmod 0711 {q(lay.deploy_to)} {q(lay.shared)}",
        # (an app user of its own: app_user.ownership_lines; the SSH user as the app user: private to it)
        *(_app_user.create_lines(cfg) if app else ["appme=1"]),
        'if [ -n "$appme" ]; then',
        f"  chmod 0700 {q(lay.shared + '/db')} {q(lay.config)}",
        f"  chmod 0750 {q(lay.log)} {q(lay.releases)} {q(lay.tmp)}",
        "fi",
        *(_app_user.ownership_lines(cfg) if app else []),
        f'if [ -S {q(sock)} ] && [ "$(stat -c %G {q(sock)})" != "$nginx_group" ]; then '
        f'{_sock_group(cfg)}; fi',
        f"venvs=$(cd {q(lay.venvs)} && for v in *; do [ -f \"$v/{VENV_COMPLETE}\" ] && printf '%s ' \"$v\"; done; true)",
        f"current=$(readlink {q(lay.current)} || true)",
        fact("python_version", "$python_version"),
        fact("python_platform", "$python_platform"),
        fact("nginx_layout", "$nginx_layout"),
        fact("nginx_user", "$nginx_user"),
        fact("nginx_pid", "$nginx_pid"),
        fact("current", "$current"),
        fact("venvs", "$venvs"),
        fact("user", ME_WORD.strip('"')),  # (the prelude's $FD_ME: no `id` of its own)
    ]
    return Phase("setup", lines, sudo=True)
