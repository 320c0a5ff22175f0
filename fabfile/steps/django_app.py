"""The django phase: import the app with the production settings, migrate (under a lock),
collectstatic, check --deploy."""
from __future__ import annotations

from fabdeploy.appserver.base import app_user
from fabdeploy.config import Config
from fabdeploy.database import backup
from fabdeploy.hosts.layout import SETTINGS_MODULE, Layout
from fabdeploy.model import Release
from fabdeploy.ops.starter import GENERIC_NAMES, PRODUCTION_NAMES
from fabdeploy.remote.markers import PY_MARKERS, as_markers, fail, note, prefix, relay
from fabdeploy.remote.script import Phase
from fabdeploy.remote.shell import AS_APP, as_app_lines, q


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
SETTINGS_PACKAGE_PY = PY_MARKERS + f"""\
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
    mark('error', f'project.django_settings {{name}} is a package ({{", ".join(mods) or "no modules"}}): {{hint}}')
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


MIGRATE_LOCK_PY = PY_MARKERS + """\
import fcntl, hashlib, os, subprocess, sys, time
import django
django.setup()
from django.db import connection
name, wait, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
vendor, db = connection.vendor, connection.settings_dict
def waited():
    mark('error', f'waited {wait}s for the migration lock {name} ({vendor}): another host is still '
         'migrating this database', err=True)
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
    mark('warn', f'no migration lock for a {vendor} database: app hosts sharing it migrate at once')
sys.stdout.flush()
rc = subprocess.call(cmd)
unlock()
sys.exit(rc)
"""


# Run "$@" with the env file's variables (sudo -u resets the environment): argv: the env file, the command.
APP_ENV_SH = 'umask 027; set -a; . "$1"; set +a; shift; exec "$@"'


def app_env_words(cfg: Config, rel: Release, name: str) -> str:
    """The words that run a command as the app user in the release with the production settings and the
    [django] env (migrate: it writes the database), the command's words to follow."""
    lay = Layout(cfg.paths.deploy_to)
    return (f"{AS_APP} sh -c {q(APP_ENV_SH)} {name} {q(lay.env_file)} env DJANGO_SETTINGS_MODULE={SETTINGS_MODULE} "
            f"FABDEPLOY_RELEASE={q(rel.id)}")


def django(cfg: Config, rel: Release, migrate: bool = True) -> Phase:
    """migrate, collectstatic and check --deploy with the production settings module. `migrate` False: an
    app host of a fleet sharing one database where another host migrates (and dumps) for this deploy."""
    lay = Layout(cfg.paths.deploy_to)
    manage = f"{q(lay.venv(rel.venv_hash) + '/bin/python')} {q(cfg.project.manage)}"
    lines = django_env(cfg, rel)
    # The app must import under the production settings before anything (migrations) touches shared state.
    lines += [
        f"out=$({q(lay.venv(rel.venv_hash) + '/bin/python')} -c {q(WSGI_IMPORT_PY)} {q(cfg.project.wsgi)} 2>&1) || {{",
        f"  case \"$out\" in *{q(prefix('error'))}*) printf '%s\\n' \"$out\" | {relay('error')} >&2; exit 1;; esac",
        "  printf '%s\\n' \"$out\" | tail -n 12 >&2",
        "  " + fail(f"the WSGI application {cfg.project.wsgi} does not import with the production settings: ",
                    then="\"$(printf '%s\\n' \"$out\" | tail -n 1)\""),
        "}",
    ]
    if cfg.django.migrate and not migrate:
        lines.append(note("migrate: done once for the fleet's shared database (on another app host)"))
    if cfg.django.migrate and migrate:  # (as the app user: it owns the database, shared/db)
        python = q(lay.venv(rel.venv_hash) + '/bin/python')
        lines += [
            *as_app_lines(app_user(cfg)),
            *backup.backup_lines(cfg, rel, app_env_words(cfg, rel, "backup"), python, manage),
            *as_app_lines(app_user(cfg)),  # (again: the line before migrate, as it always was)
            f"out=$({app_env_words(cfg, rel, 'migrate')} {python} -c {q(MIGRATE_LOCK_PY)} "
            f"{q('fabdeploy-migrate-' + cfg.project.name)} {MIGRATE_LOCK_WAIT} {manage} migrate --noinput 2>&1) || "
            f"{{ printf '%s\\n' \"$out\" >&2; {backup.migrate_failed_line()}; exit 1; }}",
            f"printf '%s\\n' \"$out\" | {relay('warn')} || true",
            "applied=$(printf '%s\\n' \"$out\" | grep -c '^  Applying .* OK' || true)",
            note("$applied migrations applied"),
            *backup.after_migrate_lines(),
        ]
    if cfg.django.collectstatic:
        lines += [
            f"out=$({manage} collectstatic --noinput 2>&1) || {{ printf '%s\\n' \"$out\" >&2; exit 1; }}",
            note("$(printf '%s\\n' \"$out\" | tail -n 1)"),
        ]
    if cfg.django.check_deploy:
        lines += [
            f"out=$({manage} check --deploy 2>&1) || {{ printf '%s\\n' \"$out\" >&2; exit 1; }}",
            f"printf '%s\\n' \"$out\" | grep -E '\\([a-z_]+\\.[WE][0-9]+\\)|issues' | {as_markers('warn')} || true",
        ]
    return Phase("django", lines)
