"""Pure builders of the deploy phases: config + release + host facts in, shell lines out.

Nothing here touches the network; tests check the exact lines, dry runs print them.
Each builder returns a Phase; hooks from deploy.toml (and Python hooks) wrap every phase.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from .config import Config, ident
from .layout import RELEASE_GLOB_ERE, SETTINGS_MODULE, Layout, nginx_site_paths
from .django_manage import wrapper as manage_wrapper
from .firewall import lb_sources, resolved_rules
from .render import render, render_file
from .starter import GENERIC_NAMES, PRODUCTION_NAMES  # the same pick as `fabdeploy init`
from .roles import Server, balanced, bind_address, runs_nginx, servers, uwsgi_socket
from .requirements import listed, normalize
from .script import MARK, Phase, fact, fail_expanded, q, write_file
from .wheelhouse import PYTHON_FACTS_PY
from . import secret_key as _secret_key



@dataclass
class Release:
    id: str
    revision: str
    branch: str
    source: str  # "git" or "dir"
    deployed_at: str
    deployed_by: str
    venv_hash: str = ""
    has_wheels: bool = False
    fingerprint: str = ""  # of everything a deploy would produce: equal means "already live"

    def metadata(self) -> str:
        return json.dumps({
            "id": self.id, "revision": self.revision, "branch": self.branch, "source": self.source,
            "deployed_at": self.deployed_at, "deployed_by": self.deployed_by, "venv": self.venv_hash,
            "fingerprint": self.fingerprint,
        }, indent=2, sort_keys=True)


@dataclass
class Facts:
    """What the setup phase learned about a host."""

    python_version: str = ""
    python_platform: str = ""  # implementation, platform and C library: "cpython linux-x86_64 glibc-2.36"
    nginx_layout: str = "sites"
    nginx_user: str = "www-data"
    nginx_pid: str = "/run/nginx.pid"
    current: str = ""
    venvs: list[str] = field(default_factory=list)
    user: str = ""
    unchanged: str = ""  # the live release, when it already is what this deploy would produce

    @classmethod
    def parse(cls, raw: dict[str, str]) -> "Facts":
        return cls(
            unchanged=raw.get("unchanged", ""),
            python_version=raw.get("python_version", ""),
            python_platform=raw.get("python_platform", ""),
            nginx_layout=raw.get("nginx_layout", "sites"),
            nginx_user=raw.get("nginx_user") or "www-data",
            nginx_pid=raw.get("nginx_pid") or "/run/nginx.pid",
            current=raw.get("current", ""),
            venvs=raw.get("venvs", "").split(),
            user=raw.get("user", ""),
        )


def note(text: str) -> str:
    """A line whose text the deploying side shows on the phase's summary line."""
    return f'echo "{MARK} note {text}"'


def fail(message: str, code: int = 1) -> str:
    """Stop the phase with a message the deploying side shows as the whole error (no stderr tail)."""
    return f"{{ echo {q(MARK + ' error ' + message)} >&2; exit {code}; }}"


def _sudo_mkdir_owned(path: str) -> list[str]:
    return [
        f"if [ ! -d {q(path)} ]; then",
        f"  sudo -n true 2>/dev/null || {fail(f'{path} does not exist and sudo -n is not allowed (passwordless sudo is needed to create it)')}",
        f"  sudo -n mkdir -p {q(path)}",
        f'  sudo -n chown "$(id -un):$(id -gn)" {q(path)}',
        "fi",
        f'[ -w {q(path)} ] || {{ echo "{path} is not writable by $(id -un)" >&2; exit 1; }}',
    ]


def fingerprint(cfg: Config, revision: str, requirements: bytes, server: Server | None = None) -> str:
    """A hash of the code revision and everything fabdeploy renders or installs for it (with placeholder
    release ids): when the live release has the same one, a deploy has nothing to do."""
    probe = Release("RELEASE", revision, "", "", "", "", "VENV")
    parts = [revision, requirements.decode(errors="replace"), cfg.pip.packages, cfg.uwsgi.package,
             nginx_site(cfg, server) if runs_nginx(cfg, server) else "", uwsgi_ini(cfg, probe, server),
             firewall(cfg, server, "STAGING"),
             render("settings.py.j2", release_id="RELEASE", django_settings=cfg.project.django_settings,
                    shared=Layout(cfg.paths.deploy_to).shared, allowed_hosts=cfg.allowed_hosts,
                    static_url=cfg.django.static_url, media_url=cfg.django.media_url),
             sorted(cfg.django.env.items()), cfg.hooks.__dict__, cfg.health.__dict__, cfg.project.python,
             manage_wrapper(cfg)]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def unchanged_exit(cfg: Config, fp: str, after: list[str]) -> list[str]:
    """Setup lines: when the live release has fingerprint `fp` and its uWSGI is up, run `after` (audit,
    unlock), report `unchanged=<release>` and end the phase successfully."""
    lay = Layout(cfg.paths.deploy_to)
    return [
        ALIVE_FN,
        CHILDREN_FN,
        # every worker of the live master runs `current` (not only the link: a switch whose reload never
        # happened leaves the old code serving)
        'on_current() { n=0; for c in $(children "$1"); do n=$((n + 1)); '
        '[ "$(readlink "/proc/$c/cwd" 2>/dev/null)" = "$cur" ] || return 1; done; [ "$n" -gt 0 ]; }',
        f"cur=$(readlink {q(lay.current)} || true)",
        f'if [ -n "$cur" ] && grep -qs {q(chr(34) + "fingerprint" + chr(34) + ": " + chr(34) + fp + chr(34))} '
        f'"$cur/.fabdeploy/release.json" && mpid=$(alive {q(lay.pidfile)} uwsgi) && on_current "$mpid"; then',
        *["  " + ln for ln in after],
        "  " + fact("unchanged", '$(basename "$cur")'),
        "  " + note('already live: $(basename "$cur") has this revision and these configs '
                    "(nothing to do; --force deploys anyway)"),
        "  exit 0",
        "fi",
    ]


def setup(cfg: Config, lock_lines: list[str] = (), unchanged_lines: list[str] = (), app: bool = True) -> Phase:
    """Create the layout (sudo only where needed), take the deploy lock, report host facts. `app` False:
    a load balancer host (no virtualenvs)."""
    lay = Layout(cfg.paths.deploy_to)
    py = cfg.project.python
    shared_dirs = [f"{lay.shared}/{d}" for d in cfg.paths.shared_dirs]
    dirs = [lay.releases, lay.venvs, lay.tmp, lay.shared, lay.log, lay.run, lay.config,
            f"{lay.shared}/static", f"{lay.shared}/media", f"{lay.shared}/db", *shared_dirs]
    user_sed = r"s/^[[:space:]]*user[[:space:]][[:space:]]*\([^[:space:];]*\).*/\1/p"
    pid_sed = r"s/^[[:space:]]*pid[[:space:]][[:space:]]*\([^[:space:];]*\).*/\1/p"
    layout_detect = {
        "auto": "if [ -d /etc/nginx/sites-enabled ] && grep -qs sites-enabled /etc/nginx/nginx.conf; "
                "then nginx_layout=sites; else nginx_layout=conf.d; fi",
        "sites": "nginx_layout=sites",
        "conf.d": "nginx_layout=conf.d",
    }[cfg.nginx.layout]
    nginx_user = (f"nginx_user={q(cfg.nginx.user)}" if cfg.nginx.user else
                  f"nginx_user=$(sed -n {q(user_sed)} /etc/nginx/nginx.conf | head -n 1); "
                  '[ -n "$nginx_user" ] || nginx_user=www-data')
    lines = [
        *_sudo_mkdir_owned(cfg.paths.deploy_to),
        *lock_lines,
        # (before the unchanged exit: an unchanged host's key takes part in the fleet's agreement too)
        *(_secret_key.fingerprint_lines(cfg.paths.deploy_to) if app else []),
        *unchanged_lines,
        "mkdir -p " + " ".join(q(d) for d in dirs),
        f"command -v {q(py)} >/dev/null 2>&1 || {fail(f'{py} not found on the host (project.python)')}",
        f"python_facts=$({q(py)} -c {q(PYTHON_FACTS_PY)})",
        "python_version=$(printf '%s\\n' \"$python_facts\" | sed -n 1p)",
        "python_platform=$(printf '%s\\n' \"$python_facts\" | sed -n 2p)",
        (f"{q(py)} -c 'import venv, ensurepip' 2>/dev/null || "
         + fail(f"{py} has no venv/ensurepip module (on Debian: apt-get install python3-venv)")) if app else "true",
        "[ -f /etc/nginx/nginx.conf ] || " + fail("nginx is not installed (/etc/nginx/nginx.conf missing)"),
        nginx_user,
        f"nginx_pid=$(sed -n {q(pid_sed)} /etc/nginx/nginx.conf | head -n 1); "
        '[ -n "$nginx_pid" ] || nginx_pid=/run/nginx.pid',
        'nginx_group=$(id -gn "$nginx_user" 2>/dev/null) || '
        '{ echo "nginx user $nginx_user does not exist (nginx.user)" >&2; exit 1; }',
        layout_detect,
        # Directories the web server reads (the socket, static files, media): its group, setgid so what is
        # created inside inherits it, nothing for others (setting the setgid bit on a group one is not a
        # member of needs root). Everything else is private to the deploy user: deploy_to and shared can
        # only be traversed, shared/db and shared/config are 0700 (the scripts run with umask 027).
        *[f'if [ "$(stat -L -c %G:%a {q(d)})" != "$nginx_group:2750" ]; then '
          f'{{ sudo -n chgrp "$nginx_group" {q(d)} && sudo -n chmod 2750 {q(d)}; }} || '
          f'{fail(f"cannot give {d} to the nginx group (sudo)")}; fi'
          for d in (lay.run, lay.static, f"{lay.shared}/media")],
        f"chmod 0711 {q(lay.deploy_to)} {q(lay.shared)}",
        f"chmod 0700 {q(lay.shared + '/db')} {q(lay.config)}",
        f"chmod 0750 {q(lay.log)} {q(lay.releases)} {q(lay.tmp)}",
        f'if [ -S {q(lay.socket)} ] && [ "$(stat -c %G {q(lay.socket)})" != "$nginx_group" ]; then '
        f'sudo -n chgrp "$nginx_group" {q(lay.socket)}; fi',
        f"venvs=$(cd {q(lay.venvs)} && for v in *; do [ -f \"$v/.fabdeploy-complete\" ] && printf '%s ' \"$v\"; done; true)",
        f"current=$(readlink {q(lay.current)} || true)",
        fact("python_version", "$python_version"),
        fact("python_platform", "$python_platform"),
        fact("nginx_layout", "$nginx_layout"),
        fact("nginx_user", "$nginx_user"),
        fact("nginx_pid", "$nginx_pid"),
        fact("current", "$current"),
        fact("venvs", "$venvs"),
        fact("user", "$(id -un)"),
    ]
    return Phase("setup", lines, sudo=True)


def env_file_text(cfg: Config) -> str:
    """shared/config/app.env: the [django] env for manage.py and the hooks (sh syntax, values quoted)."""
    return "".join(f"{k}={q(v)}\n" for k, v in sorted(cfg.django.env.items()))


def code(cfg: Config, rel: Release, secret_key: str | None = None) -> Phase:
    """Unpack the uploaded archive (stdin) into releases/<id>, add the settings module, link shared dirs.
    shared/secret_key: `secret_key` when given (the fleet's one key; mask it in displays), else the host's
    own, generated on its first deploy."""
    lay = Layout(cfg.paths.deploy_to)
    R, T = lay.release(rel.id), lay.staging(rel.id)
    settings = render(
        "settings.py.j2", release_id=rel.id, django_settings=cfg.project.django_settings, shared=lay.shared,
        allowed_hosts=cfg.allowed_hosts, static_url=cfg.django.static_url, media_url=cfg.django.media_url)
    lines = [
        f"[ ! -e {q(R)} ] || {fail(f'release {rel.id} already exists on the host')}",
        f"rm -rf {q(T)}",
        f"mkdir -p {q(T)}",
        f"tar -xzf - -C {q(T)}",
        f"[ -d {q(T + '/release')} ] || {fail('the uploaded archive is incomplete')}",
        f"mv {q(T + '/release')} {q(R)}",
        f"[ -f {q(R + '/' + cfg.project.manage)} ] || {fail(f'{cfg.project.manage} not found in the release (project.manage)')}",
        f"mkdir -p {q(R + '/.fabdeploy')}",
        *write_file(f"{R}/.fabdeploy/release.json", rel.metadata()),
        *write_file(f"{R}/.fabdeploy/venv", rel.venv_hash),
        *write_file(f"{R}/{SETTINGS_MODULE}.py", settings),
    ]
    lines += seed_static(cfg, rel.id)
    for d in cfg.paths.shared_dirs:
        target, link = f"{lay.shared}/{d}", f"{R}/{d}"
        lines += [f"mkdir -p {q(target)}", f"rm -rf {q(link)}", f'mkdir -p "$(dirname {q(link)})"',
                  f"ln -s {q(target)} {q(link)}"]
    if secret_key:  # a host without a key gets it now; one whose key differs (adopt) at the switch
        staged = f"{T}/secret_key"
        lines += [*write_file(staged, secret_key, mode="0600"),
                  f"if [ -s {q(lay.secret_key)} ]; then {note('secret key staged (installed at the switch)')}; "
                  f"else mv -f {q(staged)} {q(lay.secret_key)}; {note('secret key installed (the fleet key)')}; fi"]
    lines += [
        f"if [ ! -s {q(lay.secret_key)} ]; then "
        f"(umask 077; {q(cfg.project.python)} -c 'import secrets; print(secrets.token_urlsafe(50))' "
        f"> {q(lay.secret_key + '.tmp')}) && mv {q(lay.secret_key + '.tmp')} {q(lay.secret_key)}; "
        + note("secret key generated") + "; fi",
        f"chmod 600 {q(lay.secret_key)}",
        *write_file(lay.env_file, env_file_text(cfg), mode="0600"),
        f"mkdir -p {q(lay.bin)}",
        *write_file(lay.manage, manage_wrapper(cfg), mode="0755"),
    ]
    return Phase("code", lines)


def seed_static(cfg: Config, release_id: str) -> list[str]:
    """Create the release's own static root, seeded with hard links from the live one. collectstatic (or
    tar, on a balancer) replaces a changed file with a new inode, so the live site's files are never
    modified, and the new root keeps the old release's files too."""
    st = Layout(cfg.paths.deploy_to).static
    S = f"{st}/{release_id}"
    return [f"rm -rf {q(S)}",
            # (not cp -a: preserving modes would chmod the new directories, which drops the setgid bit
            # that gives new files the web server's group; plain mkdir inherits it)
            f"if [ -d {q(st + '/current/')} ]; then cp -Rl --preserve=timestamps \"$(readlink -f {q(st + '/current')})\" {q(S)}; "
            f"else mkdir -p {q(S)}; fi"]


PENDING = "pending"  # <release>/.fabdeploy/pending: prepared, never made live
# A release a rollback must not pick: marked bad (it failed or was rolled back from), or never live.
UNUSABLE_FN = ('unusable() { [ -f "$1/.fabdeploy/bad" ] || [ -f "$1/.fabdeploy/' + PENDING + '" ]; }')


def prune_lines(keep: int) -> list[str]:
    """In a directory of release-named entries (the cwd; $cur the one in use): keep `keep` of them and
    remove the rest, counting them in $removed. Always kept: $cur and (with keep >= 2) the way back, the
    newest entry older than $cur that is usable (not marked bad, not pending), which is what a rollback
    picks. The other places go to the newest entries, usable ones first."""
    back = [
        "back=; seen=",
        "for r in $all; do",
        '  if [ -n "$seen" ] && [ -z "$back" ] && ! unusable "$r"; then back=$r; fi',
        '  [ "$r" != "$cur" ] || seen=1',
        "done",
    ] if keep >= 2 else ["back="]
    return [
        "removed=0",
        UNUSABLE_FN,
        f"all=$(ls -1 | grep -E {q(RELEASE_GLOB_ERE)} | sort -r || true)",  # newest first
        *back,
        "kept=0",
        'for r in $all; do if [ "$r" = "$cur" ] || [ "$r" = "$back" ]; then kept=$((kept + 1)); fi; done',
        'good=$(for r in $all; do unusable "$r" || echo "$r"; done)',
        'bad=$(for r in $all; do ! unusable "$r" || echo "$r"; done)',
        "for r in $good $bad; do",
        '  if [ "$r" = "$cur" ] || [ "$r" = "$back" ]; then continue; fi',
        f'  if [ "$kept" -lt {int(keep)} ]; then kept=$((kept + 1)); else rm -rf -- "$r"; removed=$((removed + 1)); fi',
        "done",
    ]


def venv_install_args(cfg: Config, rel: Release, staging: str) -> list[str]:
    args = ["install", "--disable-pip-version-check", "--no-input", "-q"]
    if rel.has_wheels:
        args += ["--no-index", "--find-links", f"{staging}/wheels"]
    elif cfg.pip.index_url:
        args += ["--index-url", cfg.pip.index_url]
    if cfg.project.requirements:
        args += ["-r", cfg.project.requirements]
    args += [*cfg.pip.packages, cfg.uwsgi.package]
    return args


def pip_missing_lines(rel: Release, files: dict[str, bytes]) -> list[str]:
    """After a failed pip install (its output in $out): name the requirement pip found no distribution for,
    with the file and environment marker that list it (a marker that excluded it from the wheelhouse)."""
    where = "in the uploaded wheelhouse" if rel.has_wheels else "for this host"
    lines = [
        "missing=$(printf '%s\\n' \"$out\" | sed -n 's/.*No matching distribution found for "
        "\\([A-Za-z0-9][A-Za-z0-9._-]*\\).*/\\1/p' | head -n 1)",
        'if [ -n "$missing" ]; then',
        "  case \"$(printf '%s' \"$missing\" | sed 's/[-_.][-_.]*/-/g' | tr 'A-Z' 'a-z')\" in",
    ]
    for name, (path, line, marker) in sorted(listed(files).items()):
        if marker:
            why = (f"pip found no distribution of {name} {where}: {path} requires it with the marker "
                   f"'{marker}'" + (", which excluded it when the wheelhouse was built" if rel.has_wheels else ""))
        else:
            why = f"pip found no distribution of {name} {where} ({path}: {line})"
        lines.append(f"    {q(normalize(name))}) {fail(why)};;")
    lines += [f"    *) {fail_expanded(f'pip found no distribution of $missing {where}')};;",
              "  esac",
              "fi"]
    return lines


def venv(cfg: Config, rel: Release, requirement_files: dict[str, bytes] | None = None) -> Phase:
    """Reuse the virtualenv keyed by the requirements hash, or build it beside the old ones. The uploaded
    wheels are removed once used (a failed deploy leaves none under tmp/)."""
    lay = Layout(cfg.paths.deploy_to)
    V, R = lay.venv(rel.venv_hash), lay.release(rel.id)
    pip = " ".join(q(a) for a in venv_install_args(cfg, rel, lay.staging(rel.id)))
    lines = [
        f"if [ -f {q(V + '/.fabdeploy-complete')} ]; then",
        "  " + note(f"reused {rel.venv_hash}"),
        "else",
        f"  cd {q(R)}",
        f"  rm -rf {q(V)}",
        f"  {q(cfg.project.python)} -m venv {q(V)}",
        f"  if ! out=$({q(V + '/bin/python')} -m pip {pip} 2>&1); then",
        f"    rm -rf {q(lay.staging(rel.id) + '/wheels')}",
        "    printf '%s\\n' \"$out\" | tail -n 20 >&2",
        *["    " + ln for ln in pip_missing_lines(rel, requirement_files or {})],
        "    exit 1",
        "  fi",
        f"  touch {q(V + '/.fabdeploy-complete')}",
        "  " + note(f"built {rel.venv_hash}" + (" from the wheelhouse" if rel.has_wheels else "")),
        "fi",
        f"rm -rf {q(lay.staging(rel.id) + '/wheels')}",
    ]
    return Phase("venv", lines)


def django_env(cfg: Config, rel: Release) -> list[str]:
    lay = Layout(cfg.paths.deploy_to)
    return [
        f"cd {q(lay.release(rel.id))}",
        "umask 027",  # what Django creates (an SQLite database, uploads) is not for other local users
        f"export DJANGO_SETTINGS_MODULE={SETTINGS_MODULE} FABDEPLOY_RELEASE={q(rel.id)}",
        f"set -a; . {q(lay.env_file)}; set +a",
    ]


# A project settings module that is a package (mysite/settings/ with base.py, production.py) whose __init__
# defines no ROOT_URLCONF: say so in one line with its modules, instead of Django's "'Settings' object has no
# attribute 'ROOT_URLCONF'". (An __init__ that imports one of them, `from .production import *`, is fine.)
SETTINGS_PACKAGE_PY = f"""\
import importlib, os, pkgutil, sys
overlay = importlib.import_module(os.environ['DJANGO_SETTINGS_MODULE'])
name = getattr(overlay, 'FABDEPLOY_PROJECT_SETTINGS', '')
package = sys.modules.get(name)
if package is not None and hasattr(package, '__path__') and not hasattr(overlay, 'ROOT_URLCONF'):
    mods = sorted(m.name for m in pkgutil.iter_modules(package.__path__))
    generic = {GENERIC_NAMES!r}
    pick = next((m for m in {PRODUCTION_NAMES!r} if m in mods), None) \\
        or next((m for m in mods if m not in generic), None) or (mods[0] if mods else None)
    hint = f'point it at one module, e.g. {{name}}.{{pick}}' if pick else 'its __init__ defines no ROOT_URLCONF'
    print(f'{MARK} error project.django_settings {{name}} is a package ({{", ".join(mods) or "no modules"}}): {{hint}}')
    sys.exit(3)
"""
# Import the WSGI callable and resolve the URLconf (which imports the views), as the first request would.
WSGI_IMPORT_PY = (SETTINGS_PACKAGE_PY + "mod, _, attr = sys.argv[1].partition(':'); "
                  "getattr(importlib.import_module(mod), attr or 'application'); "
                  "import django.urls; django.urls.get_resolver().url_patterns")


# Run a command (manage.py migrate) while holding the project's migration lock in its default database, so
# that app hosts sharing one database migrate one after another (the later ones find nothing to do):
# PostgreSQL a session advisory lock, MySQL/MariaDB GET_LOCK, SQLite a POSIX (fcntl) lock on a file beside
# the database file (shared/db/.migrate.lock: one machine, or a shared mount with locking). Other
# databases: no lock (a warning). argv: lock name, seconds to wait, the command.
MIGRATE_LOCK_WAIT = 600
MIGRATE_LOCK_PY = f"""\
import fcntl, hashlib, os, subprocess, sys, time
import django
django.setup()
from django.db import connection
name, wait, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
vendor, db = connection.vendor, connection.settings_dict
def waited():
    print(f'{MARK} error waited {{wait}}s for the migration lock {{name}} ({{vendor}}): another host is still '
          'migrating this database', file=sys.stderr)
    sys.exit(1)
t0, unlock = time.monotonic(), lambda: None
if vendor == 'postgresql':
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], 'big', signed=True)
    with connection.cursor() as c:
        while True:
            c.execute('SELECT pg_try_advisory_lock(%s)', [key])
            if c.fetchone()[0]:
                break
            if time.monotonic() - t0 > wait:
                waited()
            time.sleep(0.5)
    def unlock():
        with connection.cursor() as c:
            c.execute('SELECT pg_advisory_unlock(%s)', [key])
elif vendor == 'mysql':
    with connection.cursor() as c:
        c.execute('SELECT GET_LOCK(%s, %s)', [name[:64], wait])
        if c.fetchone()[0] != 1:
            waited()
    def unlock():
        with connection.cursor() as c:
            c.execute('SELECT RELEASE_LOCK(%s)', [name[:64]])
elif vendor == 'sqlite' and str(db.get('NAME', ':memory:')) != ':memory:' and 'mode=memory' not in str(db['NAME']):
    fd = os.open(os.path.join(os.path.dirname(os.path.abspath(str(db['NAME']))), '.migrate.lock'),
                 os.O_RDWR | os.O_CREAT, 0o600)
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if time.monotonic() - t0 > wait:
                waited()
            time.sleep(0.2)
elif vendor != 'sqlite':
    print(f'{MARK} warn no migration lock for a {{vendor}} database: app hosts sharing it migrate at once',
          flush=True)
sys.stdout.flush()
rc = subprocess.call(cmd)
unlock()
sys.exit(rc)
"""


def django(cfg: Config, rel: Release) -> Phase:
    """migrate, collectstatic and check --deploy with the production settings module."""
    lay = Layout(cfg.paths.deploy_to)
    manage = f"{q(lay.venv(rel.venv_hash) + '/bin/python')} {q(cfg.project.manage)}"
    lines = django_env(cfg, rel)
    # The app must import under the production settings before anything (migrations) touches shared state.
    lines += [
        f"out=$({q(lay.venv(rel.venv_hash) + '/bin/python')} -c {q(WSGI_IMPORT_PY)} {q(cfg.project.wsgi)} 2>&1) || {{",
        f"  case \"$out\" in *{q(MARK + ' error ')}*) printf '%s\\n' \"$out\" | grep {q('^' + MARK + ' error ')} >&2; exit 1;; esac",
        "  printf '%s\\n' \"$out\" | tail -n 12 >&2",
        f"  echo \"{MARK} error the WSGI application {cfg.project.wsgi} does not import with the production "
        "settings: $(printf '%s\\n' \"$out\" | tail -n 1)\" >&2",
        "  exit 1",
        "}",
    ]
    if cfg.django.migrate:
        lines += [
            f"out=$({q(lay.venv(rel.venv_hash) + '/bin/python')} -c {q(MIGRATE_LOCK_PY)} "
            f"{q('fabdeploy-migrate-' + cfg.project.name)} {MIGRATE_LOCK_WAIT} {manage} migrate --noinput 2>&1) || "
            f"{{ printf '%s\\n' \"$out\" >&2; exit 1; }}",
            f"printf '%s\\n' \"$out\" | grep '^{MARK} warn ' || true",
            "applied=$(printf '%s\\n' \"$out\" | grep -c '^  Applying .* OK' || true)",
            note("$applied migrations applied"),
        ]
    if cfg.django.collectstatic:
        lines += [
            f"out=$({manage} collectstatic --noinput 2>&1) || {{ printf '%s\\n' \"$out\" >&2; exit 1; }}",
            note("$(printf '%s\\n' \"$out\" | tail -n 1)"),
        ]
    if cfg.django.check_deploy:
        lines += [
            f"out=$({manage} check --deploy 2>&1) || {{ printf '%s\\n' \"$out\" >&2; exit 1; }}",
            f"printf '%s\\n' \"$out\" | grep -E '\\([a-z_]+\\.[WE][0-9]+\\)|issues' | sed 's/^/{MARK} warn /' || true",
        ]
    return Phase("django", lines)


def static_maps(cfg: Config, server: Server | None) -> list[tuple[str, str]]:
    """uWSGI static-map entries: app hosts behind a balancer serve media themselves (balancer.media = "app")."""
    if server is None or not balanced(cfg) or server.role != "app" or cfg.balancer.media != "app":
        return []
    return [(cfg.django.media_url.rstrip("/"), Layout(cfg.paths.deploy_to).shared + "/media")]


def uwsgi_ini(cfg: Config, rel: Release, server: Server | None = None) -> str:
    lay = Layout(cfg.paths.deploy_to)
    return render(
        "uwsgi.ini.j2", name=cfg.project.name, release_path=lay.release(rel.id), venv=lay.venv(rel.venv_hash),
        wsgi=cfg.project.wsgi, settings_module=SETTINGS_MODULE, release_id=rel.id, env=cfg.django.env,
        processes=cfg.uwsgi.processes, threads=cfg.uwsgi.threads, socket=uwsgi_socket(cfg, server, lay.socket),
        static_maps=static_maps(cfg, server), pidfile=lay.pidfile,
        logfile=lay.uwsgi_log, max_requests=cfg.uwsgi.max_requests, harakiri=cfg.uwsgi.harakiri,
        buffer_size=cfg.uwsgi.buffer_size, listen=cfg.uwsgi.listen, options=cfg.uwsgi.options)


def uwsgi_pass(cfg: Config, server: Server | None) -> str:
    """nginx's uwsgi_pass target for the app on the same host."""
    sock = uwsgi_socket(cfg, server, Layout(cfg.paths.deploy_to).socket)
    if sock.startswith("/"):
        return "unix:" + sock
    addr = bind_address(cfg, server)
    return sock if addr not in ("0.0.0.0", "::") else f"127.0.0.1:{cfg.balancer.port}"


def nginx_site(cfg: Config, server: Server | None = None) -> str:
    """The site of a host that serves itself (or of a balanced app host with balancer.app_nginx)."""
    if server is not None and server.role == "lb" and balanced(cfg):
        return lb_site(cfg)
    lay = Layout(cfg.paths.deploy_to)
    context = dict(
        name=cfg.project.name, listen=cfg.nginx.listen, server_name=cfg.nginx.server_name,
        client_max_body_size=cfg.nginx.client_max_body_size, shared=lay.shared, socket=lay.socket,
        uwsgi_pass=uwsgi_pass(cfg, server),
        static_url=cfg.django.static_url, media_url=cfg.django.media_url, static_expires=cfg.nginx.static_expires)
    if cfg.nginx_template:
        return render_file(cfg.nginx_template, "nginx.template", **context)
    return render("nginx-site.conf.j2", **context)


def lb_site(cfg: Config, drained=()) -> str:
    """The load balancer's site: an upstream of every app host (those in `drained` marked down)."""
    lay = Layout(cfg.paths.deploy_to)
    apps = []
    for s in servers(cfg):
        if s.role == "app":
            addr = s.upstream_address.strip("[]")
            apps.append(dict(address=f"[{addr}]" if ":" in addr else addr, weight=s.weight, backup=s.backup,
                             max_fails=s.max_fails, fail_timeout=s.fail_timeout, down=s.upstream_address in drained))
    b = cfg.balancer
    return render(
        "nginx-lb.conf.j2", name=cfg.project.name, upstream=f"{ident(cfg.project.name)}_app",
        method=b.method, hash_key=b.hash_key, hash_consistent=b.hash_consistent, servers=apps, port=b.port,
        keepalive=b.keepalive, listen=cfg.nginx.listen, server_name=cfg.nginx.server_name,
        client_max_body_size=cfg.nginx.client_max_body_size, shared=lay.shared, static_url=cfg.django.static_url,
        media_url=cfg.django.media_url, static_expires=cfg.nginx.static_expires, media=b.media)


def lb_restore_site(cfg: Config, facts: Facts, staging: str) -> list[str]:
    """A balancer whose deploy is abandoned: put back the site as it was before the deploy (its saved copy
    when the deploy changed it, no site when the deploy created it, else the full upstream: a rolling drain
    may have marked hosts down) and reload a running nginx."""
    site, enabled = nginx_site_paths(facts.nginx_layout, cfg.project.name)
    prev, full = f"{staging}/site.prev", f"{staging}/site.full"
    return [
        *write_file(full, lb_site(cfg)),
        f"if [ -f {q(prev)} ]; then sudo -n install -m 0644 {q(prev)} {q(site)}",
        f"elif [ -f {q(staging + '/nginx-changed')} ]; then sudo -n rm -f {q(site)}"
        + (f" {q(enabled)}" if enabled else ""),
        f"else sudo -n install -m 0644 {q(full)} {q(site)}; fi",
        "if sudo -n nginx -t >/dev/null 2>&1; then",
        *["  " + ln for ln in nginx_reload_lines(facts.nginx_pid)],
        "fi",
    ]


def config(cfg: Config, rel: Release, facts: Facts, server: Server | None = None) -> Phase:
    """Stage the uWSGI ini; install the nginx site only if it changed and only if `nginx -t` accepts it."""
    lay = Layout(cfg.paths.deploy_to)
    lines = [
        # Staged in the release itself (never a shared name another run could touch): the switch installs
        # it, and a rollback restores exactly the config the release ran with.
        *write_file(f"{lay.release(rel.id)}/.fabdeploy/uwsgi.ini", uwsgi_ini(cfg, rel, server), mode="0600"),
        # complete but not live yet: an automatic rollback never picks it (the switch removes the mark)
        f"touch {q(lay.release(rel.id) + '/.fabdeploy/' + PENDING)}",
    ]
    if runs_nginx(cfg, server):
        lines += site_install(cfg, nginx_site(cfg, server), facts, lay.staging(rel.id))
    else:
        lines.append(note("no nginx on this app host (the lb hosts balance it)"))
    lines += firewall(cfg, server, lay.staging(rel.id))
    return Phase("config", lines, sudo=True)


def firewall_rules(cfg: Config) -> tuple[str, str]:
    """(table name, nft script): the uWSGI port of an app host open to the load balancers and the host
    itself only (others get a TCP reset). The script replaces the table atomically (`nft -f`); balancers
    given by host name get their rules on the host (firewall.resolved_rules)."""
    table = "fabdeploy_" + ident(cfg.project.name)
    port = cfg.balancer.port
    v4, v6, _ = lb_sources(cfg)  # (balancers given by name: resolved on the host, see firewall())
    rules = [f"tcp dport {port} fib saddr type local accept"]
    if v4:
        rules.append(f"tcp dport {port} ip saddr {{ {', '.join(v4)} }} accept")
    if v6:
        rules.append(f"tcp dport {port} ip6 saddr {{ {', '.join(v6)} }} accept")
    rules.append(f"tcp dport {port} reject with tcp reset")
    body = "\n".join(f"    {r}" for r in rules)
    return table, (f"add table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n"
                   f"  chain input {{\n    type filter hook input priority 0; policy accept;\n{body}\n  }}\n}}\n")


def _firewalled(cfg: Config, server: Server | None) -> bool:
    return cfg.balancer.firewall != "off" and server is not None and server.role == "app" and balanced(cfg)


def firewall(cfg: Config, server: Server | None, staging: str) -> list[str]:
    """Config phase of an app host behind load balancers: stage the nftables rules that restrict uWSGI's
    port (balancer.firewall) and have nft check them; firewall_apply makes them live at the switch."""
    mode = cfg.balancer.firewall
    if not _firewalled(cfg, server):
        return []
    table, rules = firewall_rules(cfg)
    lbs = ", ".join(s.upstream_address for s in servers(cfg) if s.role == "lb")
    missing = (fail("balancer.firewall = \"nftables\" but nft is not usable with sudo -n on this host "
                    "(apt-get install nftables)") if mode == "nftables" else
               f'echo "{MARK} warn uWSGI port {cfg.balancer.port} is open to every host that can reach it: '
               'nft not found (install nftables, or restrict it yourself: see the README)"')
    return [
        "if sudo -n nft --version >/dev/null 2>&1; then",
        *["  " + ln for ln in write_file(f"{staging}/firewall.nft", rules)],
        *["  " + ln for ln in resolved_rules(cfg, table, f"{staging}/firewall.nft")],
        f"  out=$(sudo -n nft -c -f {q(staging + '/firewall.nft')} 2>&1) || {{ printf '%s\\n' \"$out\" >&2; "
        + fail("nftables refused the firewall rules for the uWSGI port") + "; }",
        "  " + note(f"uWSGI port {cfg.balancer.port} will be open to {lbs} only (nftables table inet {table}, "
                    "applied at the switch)"),
        "else",
        "  " + missing,
        "fi",
    ]


def firewall_apply(cfg: Config, server: Server | None, staging: str) -> list[str]:
    """Switch phase: make the staged firewall rules live (atomically: `nft -f` replaces the table), and drop
    the table an older fabdeploy named less exactly (when it guards this port)."""
    if not _firewalled(cfg, server):
        return []
    table = firewall_rules(cfg)[0]
    legacy = "fabdeploy_" + "".join(c if c.isalnum() or c == "_" else "_" for c in cfg.project.name)
    F = q(staging + "/firewall.nft")
    lines = [f"if [ -f {F} ]; then",
             f"  out=$(sudo -n nft -f {F} 2>&1) || {{ printf '%s\\n' \"$out\" >&2; "
             + fail("nftables refused the firewall rules for the uWSGI port") + "; }"]
    if legacy != table:
        lines.append(f"  if sudo -n nft list table inet {legacy} 2>/dev/null | grep -q 'dport {cfg.balancer.port} '; "
                     f"then sudo -n nft delete table inet {legacy}; fi")
    return lines + ["  " + note(f"uWSGI port {cfg.balancer.port}: nftables table inet {table} applied"), "fi"]


MANAGED = "# Managed by fabdeploy"  # the first line of every nginx site fabdeploy writes


def site_restore(cfg: Config, facts: Facts, T: str) -> list[str]:
    """An abandoned deploy that installed a changed site (T/nginx-changed; nginx was not reloaded with it):
    put the site back as it was (its saved copy, disabled again if it was; or no site at all)."""
    site, enabled = nginx_site_paths(facts.nginx_layout, cfg.project.name)
    prev = f"{T}/site.prev"
    unlink = (f"; if [ -f {q(T + '/site.unlinked')} ]; then sudo -n rm -f {q(enabled)}; fi" if enabled else "")
    return [f"if [ -f {q(T + '/nginx-changed')} ]; then",
            f"  if [ -f {q(prev)} ]; then sudo -n install -m 0644 {q(prev)} {q(site)}{unlink}; "
            f"else sudo -n rm -f {q(site)}" + (f" {q(enabled)}" if enabled else "") + "; fi",
            "fi"]


def site_install(cfg: Config, content: str, facts: Facts, T: str) -> list[str]:
    """Install the nginx site only if it changed and only if `nginx -t` accepts it (else put the previous
    one back and fail). Leaves T/site.prev (for a revert) and T/nginx-changed (for the reload)."""
    site, enabled = nginx_site_paths(facts.nginx_layout, cfg.project.name)
    new, prev, changed = f"{T}/site.conf", f"{T}/site.prev", f"{T}/nginx-changed"
    if not content.startswith(MANAGED):
        content = f"{MANAGED} for {cfg.project.name}; rewritten on every deploy.\n" + content
    link_ok = f"[ \"$(readlink {q(enabled)})\" = {q(site)} ]" if enabled else "true"
    unlink = f'[ "$had_link" = 1 ] || sudo -n rm -f {q(enabled)}; ' if enabled else ""
    restore = [f"if [ -f {q(prev)} ]; then sudo -n install -m 0644 {q(prev)} {q(site)}; {unlink}"
               f"else sudo -n rm -f {q(site)}" + (f" {q(enabled)}" if enabled else "") + "; fi"]
    lines = [
        f"mkdir -p {q(T)}",
        *write_file(new, content),
        f"if cmp -s {q(new)} {q(site)} && {link_ok}; then",
        "  " + note("nginx site unchanged"),
        "else",
        # never overwrite a site fabdeploy did not write (project.name = "default" would replace the
        # distribution's default site)
        f"  if [ -f {q(site)} ] && ! head -n 1 {q(site)} | grep -q {q(MANAGED)}; then "
        + fail(f"{site} exists and was not written by fabdeploy (its first line is not '{MANAGED} ...'): "
               "choose another project.name, or remove that file") + "; fi",
        f"  if [ -f {q(site)} ]; then cp {q(site)} {q(prev)}; fi",
        f"  had_link=0; if [ -L {q(enabled)} ]; then had_link=1; fi" if enabled else "  had_link=0",
        f'  [ "$had_link" = 1 ] || touch {q(T + "/site.unlinked")}',
        f"  sudo -n install -m 0644 {q(new)} {q(site)}",
    ]
    if enabled:
        lines.append(f"  sudo -n ln -sfn {q(site)} {q(enabled)}")
    lines += [
        "  if ! out=$(sudo -n nginx -t 2>&1); then",
        *["    " + r for r in restore],
        "    printf '%s\\n' \"$out\" >&2",
        "    echo 'nginx -t rejected the new site; the previous nginx config was restored' >&2",
        "    exit 1",
        "  fi",
        f"  touch {q(changed)}",
        "  " + note(f"nginx site installed at {site}"),
        "fi",
    ]
    return lines


def switch(cfg: Config, rel: Release, server: Server | None = None) -> Phase:
    """Apply the staged firewall rules, install the release's uWSGI ini, then point `current` at the release
    atomically (symlink to a temp name, rename over): if either fails, `current` has not moved."""
    lay = Layout(cfg.paths.deploy_to)
    tmp = f"{lay.current}.fabdeploy-tmp"
    return Phase("switch", [
        *firewall_apply(cfg, server, lay.staging(rel.id)),
        *install_ini(cfg, q(lay.release(rel.id))),
        f"ln -sfn {q(lay.release(rel.id))} {q(tmp)}",
        f"mv -Tf {q(tmp)} {q(lay.current)}",
        f"rm -f {q(lay.release(rel.id) + '/.fabdeploy/' + PENDING)}",
        *static_switch(cfg, q(rel.id)),
        # the fleet's key, when it replaces this host's own (fab deploy --adopt-secret-key): the restart loads it
        f"if [ -f {q(lay.staging(rel.id) + '/secret_key')} ]; then mv -f {q(lay.staging(rel.id) + '/secret_key')} "
        f"{q(lay.secret_key)}; {note('secret key replaced by the fleet key')}; fi",
        note(f"current -> {rel.id}"),
    ])


def install_ini(cfg: Config, release_word: str) -> list[str]:
    """Make a release's own uWSGI ini (release_word: a shell word naming the release directory) the live
    one, atomically (a temp copy renamed over)."""
    ini = Layout(cfg.paths.deploy_to).uwsgi_ini
    return [f"cp -p {release_word}/.fabdeploy/uwsgi.ini {q(ini + '.fabdeploy-tmp')}",
            f"mv -f {q(ini + '.fabdeploy-tmp')} {q(ini)}"]


def static_switch(cfg: Config, release_word: str) -> list[str]:
    """Point shared/static/current at the release's static root (atomically), when it has one."""
    st = Layout(cfg.paths.deploy_to).static
    return [f"if [ -d {q(st)}/{release_word} ]; then ln -sfn {release_word} {q(st + '/current.fabdeploy-tmp')} && "
            f"mv -Tf {q(st + '/current.fabdeploy-tmp')} {q(st + '/current')}; fi"]


# Shell helpers: a pid from a pidfile that is alive and is the named program ("running" is never the
# file merely existing: `nginx -t` leaves an empty pidfile behind).
ALIVE_FN = ('alive() { p=$(cat "$1" 2>/dev/null | tr -dc 0-9); [ -n "$p" ] && [ -d "/proc/$p" ] && '
            'grep -qs "$2" "/proc/$p/comm" && echo "$p"; }')
CHILDREN_FN = ("children() { grep -ls \"^PPid:[[:space:]]*$1\\$\" /proc/[0-9]*/status 2>/dev/null "
               "| cut -d/ -f3; }")


# `nginx -s reload` only signals the master. Wait until new workers run and every old one has stopped
# accepting (gone, or titled "shutting down"), so the next request sees the new config; a reload nginx
# refused (it keeps the old workers) is reported with its error log.
NGINX_RELOAD = [
    'old=" $(children "$npid" | tr \'\\n\' \' \') "',
    "sudo -n nginx -s reload",
    "i=0; done_=",
    "while [ $i -lt 100 ]; do",
    "  fresh=0; stale=0",
    '  for c in $(children "$npid"); do',
    '    case "$old" in',
    '      *" $c "*) tr \'\\0\' \' \' < "/proc/$c/cmdline" 2>/dev/null | grep -q "shutting down" || stale=1;;',
    "      *) fresh=1;;",
    "    esac",
    "  done",
    '  if [ "$fresh" = 1 ] && [ "$stale" = 0 ]; then done_=1; break; fi',
    "  i=$((i + 1)); sleep 0.1",
    "done",
    '[ -n "$done_" ] || { echo "nginx did not reload within 10s; its error log says:" >&2; '
    "sudo -n tail -n 5 /var/log/nginx/error.log >&2; exit 1; }",
    note("nginx reloaded"),
]


def restart(cfg: Config, rel: Release, facts: Facts, server: Server | None = None) -> Phase:
    """Start uWSGI or reload it gracefully and wait until every worker runs the new release; then nginx."""
    lay = Layout(cfg.paths.deploy_to)
    lines = uwsgi_restart_lines(cfg, q(lay.release(rel.id)), q(lay.venv(rel.venv_hash)), rel.id)
    if runs_nginx(cfg, server):
        lines += nginx_restart_lines(facts, lay.staging(rel.id) + "/nginx-changed")
    return Phase("restart", lines, sudo=True, keep_going=True)


def uwsgi_restart_lines(cfg: Config, release_word: str, venv_word: str, label: str) -> list[str]:
    """Start or gracefully reload uWSGI, then wait until every worker's cwd is the release.

    release_word/venv_word are shell words (quoted paths, or "$R" in a rollback that picks on the host).
    """
    lay = Layout(cfg.paths.deploy_to)
    uwsgi = f"{venv_word}/bin/uwsgi"
    steps = cfg.uwsgi.reload_timeout * 10
    return [
        ALIVE_FN,
        CHILDREN_FN,
        f"pid=$(alive {q(lay.pidfile)} uwsgi || true)",
        'if [ -n "$pid" ]; then',
        f"  {uwsgi} --reload {q(lay.pidfile)} >/dev/null",
        "  action=reloaded",
        "else",
        f"  rm -f {q(lay.socket)}",
        f"  {uwsgi} --ini {q(lay.uwsgi_ini)}",
        "  action=started",
        "fi",
        # ready means every worker the ini asks for is up (processes, or the cheaper subsystem's start count)
        *expected_workers_lines(lay.uwsgi_ini),
        "i=0; ready=; gone=0",
        f"while [ $i -lt {steps} ]; do",
        f"  pid=$(alive {q(lay.pidfile)} uwsgi || true)",
        # a master that stays gone (need-app: the app failed to load) is a failure, not something to wait for
        '  if [ -z "$pid" ]; then gone=$((gone + 1)); [ "$gone" -lt 30 ] || break; fi',
        '  if [ -n "$pid" ]; then',
        "    n=0; stale=0",
        '    for c in $(children "$pid"); do',
        "      n=$((n + 1))",
        f'      [ "$(readlink "/proc/$c/cwd" 2>/dev/null)" = {release_word} ] || stale=$((stale + 1))',
        "    done",
        # a unix socket must exist (uWSGI creates it after the workers); a TCP socket is bound by the master
        f'    if [ "$n" -gt 0 ] && [ "$n" -ge "$want" ] && [ "$stale" -eq 0 ] && {{ [ -S {q(lay.socket)} ] || '
        f'! grep -q "^socket = /" {q(lay.uwsgi_ini)}; }}; then ready=1; break; fi',
        "  fi",
        "  i=$((i + 1)); sleep 0.1",
        "done",
        'if [ -z "$ready" ]; then',
        f'  echo "uWSGI did not come up serving {label} within {cfg.uwsgi.reload_timeout}s; '
        f'last lines of {lay.uwsgi_log}:" >&2',
        f"  tail -n 20 {q(lay.uwsgi_log)} >&2 || true",
        "  exit 1",
        "fi",
        note(f"uwsgi $action (master $pid, $n workers on {label})"),
    ]


def expected_workers_lines(ini: str) -> list[str]:
    """Set $want to the number of workers the uWSGI ini starts with: cheaper-initial, else cheaper, else
    processes (the last value of each key wins, as in uWSGI), else 1."""
    return [
        f"procs=$(sed -n 's/^processes *= *\\([0-9][0-9]*\\) *$/\\1/p' {q(ini)} | tail -n 1)",
        f"ci=$(sed -n 's/^cheaper-initial *= *\\([0-9][0-9]*\\) *$/\\1/p' {q(ini)} | tail -n 1)",
        f"ch=$(sed -n 's/^cheaper *= *\\([0-9][0-9]*\\) *$/\\1/p' {q(ini)} | tail -n 1)",
        'want=${ci:-${ch:-${procs:-1}}}',
    ]


def nginx_reload_lines(nginx_pid: str) -> list[str]:
    """Reload a running nginx and wait for it (nothing when it is not running)."""
    return [ALIVE_FN, CHILDREN_FN, f"npid=$(alive {q(nginx_pid)} nginx || true)",
            'if [ -n "$npid" ]; then', *["  " + ln for ln in NGINX_RELOAD], "fi"]


def nginx_restart_lines(facts: Facts, changed_flag: str) -> list[str]:
    """Start nginx when its pid is not alive; reload it (and wait) only when the site changed."""
    return [
        ALIVE_FN,
        CHILDREN_FN,
        f"npid=$(alive {q(facts.nginx_pid)} nginx || true)",
        'if [ -z "$npid" ]; then',
        "  sudo -n nginx",
        "  " + note("nginx started"),
        f"elif [ -f {q(changed_flag)} ]; then",
        *["  " + ln for ln in NGINX_RELOAD],
        "else",
        "  " + note("nginx unchanged"),
        "fi",
    ]


def cleanup(cfg: Config, rel: Release) -> Phase:
    """Keep keep_releases releases (always current and the release a rollback would go back to; releases
    marked bad go first) and the virtualenvs they or the running master use."""
    lay = Layout(cfg.paths.deploy_to)
    keep = cfg.paths.keep_releases
    return Phase("cleanup", [
        ALIVE_FN,
        f"cd {q(lay.releases)}",
        f"cur=$(basename \"$(readlink {q(lay.current)})\")",
        *prune_lines(keep),
        "used=$(cat */.fabdeploy/venv 2>/dev/null | tr '\\n' ' ')",
        f"pid=$(alive {q(lay.pidfile)} uwsgi || true)",
        'exe=$( [ -n "$pid" ] && readlink "/proc/$pid/exe" || true)',
        f"cd {q(lay.venvs)}",
        "for v in *; do",
        '  [ -d "$v" ] || continue',
        '  case " $used " in *" $v "*) continue;; esac',
        f'  case "$exe" in {q(lay.venvs)}/"$v"/*) continue;; esac',
        '  rm -rf -- "$v"',
        "done",
        # static roots of releases that are gone
        f"if cd {q(lay.static)} 2>/dev/null; then",
        "  for s in *; do",
        f'    if echo "$s" | grep -qE {q(RELEASE_GLOB_ERE)} && [ ! -d {q(lay.releases)}/"$s" ]; then rm -rf -- "$s"; fi',
        "  done",
        "fi",
        f"rm -rf {q(lay.staging(rel.id))}",
        f"left=$(ls -1 {q(lay.releases)} | grep -cE {q(RELEASE_GLOB_ERE)} || true)",
        note(f"$left releases on disk (keep_releases = {keep}), removed $removed"),
    ])


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


def abandon(cfg: Config, rel: Release, pgid: int | None = None, held: str = "true",
            facts: Facts | None = None) -> Phase:
    """After a failure or interrupt before the switch: stop what the interrupted script still runs (its
    process group), then remove the half-built release and staged files (never the current release), but
    only while `held` (a shell condition: this run holds the deploy lock); a run refused by another one's
    lock changes nothing (the release id and files may be that run's)."""
    lay = Layout(cfg.paths.deploy_to)
    R = lay.release(rel.id)
    return Phase("abandon", [
        *stop_group(pgid),
        f"if ! {held}; then " + note("another run holds the deploy lock: nothing of this run to remove") + "; exit 0; fi",
        f'if [ "$(readlink {q(lay.current)})" != {q(R)} ]; then rm -rf {q(R)} {q(lay.static + "/" + rel.id)} || true; fi',
        *(site_restore(cfg, facts, lay.staging(rel.id)) if facts else []),
        f"rm -rf {q(lay.staging(rel.id))} || true",
    ])


def drop_staging(cfg: Config, release_id: str) -> Phase:
    """After a failure past the switch (the health gate reverted, or a later phase failed): remove the
    release's staged files under tmp/ (site copies, anything uploaded)."""
    return Phase("abandon", [f"rm -rf {q(Layout(cfg.paths.deploy_to).staging(release_id))} || true"])
