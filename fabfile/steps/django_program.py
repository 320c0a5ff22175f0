"""The django phase's program, run on the host by the release's Python: one Django boot (`django.setup()` once,
`call_command` for each step) for what used to be four or five processes. steps/django_app.py ships this
file's text with `python -c`, its parameters one JSON argument; it imports nothing of fabdeploy.

Steps, in order, each only when its key is in the parameters:
  import    the WSGI callable and the URLconf import with the production settings (a settings package whose
            __init__ defines no ROOT_URLCONF: one line naming its modules)
  migrate   the pending migrations counted (MigrationExecutor); none pending (`skip_empty`: a database no
            other host migrates, and check --deploy runs): no `migrate` (its system checks are check --deploy's,
            its post_migrate handlers have nothing new to create); when some are pending and some were applied
            before, the database dumped to fd 1 (the shell gzips it as the deploy user); then migrate under
            the project's migration lock (PostgreSQL advisory lock, MySQL GET_LOCK, SQLite fcntl lock); then
            (`record`) the migration record on stderr (steps/migration_record.py: a rollback without a boot)
  static    collectstatic, skipped when the hash of the static inputs (every source file the finders see, by
            content, and the static settings) equals the one stored in the static root (seeded by hard links
            from the live one): STATIC_ROOT/.fabdeploy-static-hash
  probe     collectstatic's skip test alone (the app user's one boot of a redeploy), PROBE_CHANGED when it
            would collect
  check     check --deploy, its warnings as warn markers
  early     (after migrate, before static) the new release's app server master started beside the live one
            (appserver/beside.py early: the one-boot case)

Output: fd 1 is the dump stream only; everything else (marker lines, and the output of a failing step) goes
to stderr, which the shell replays: note and warn markers on stdout, the rest on stderr. `mark` (the marker
writer) is remote/markers.PY_MARKERS, which django_app puts before this text.
"""
import atexit
import gc
import hashlib
import importlib
import io
import json
import os
import pkgutil
import re
import sys
import time
import traceback

DUMP_OK = "fabdeploy-dump-ok "  # (stderr) the dump on fd 1 is complete; its extension follows
EARLY_OK = "fabdeploy-early-started"  # (stderr) start_early: the new master daemonized
PROBE_CHANGED = "fabdeploy-static-changed"  # (stderr) probe: the static inputs changed (collectstatic to run)
HASH_FILE = ".fabdeploy-static-hash"


def say(kind, text):
    """A marker line on stderr (fd 1 is the dump's): the shell passes notes and warnings on to stdout."""
    mark(kind, text, err=True)  # noqa: F821 (remote/markers.PY_MARKERS)


def failed(out, exc):
    """A step failed: its output and the error as manage.py would print it, on stderr; status 1."""
    from django.core.management import CommandError
    sys.stderr.write(out.getvalue())
    if isinstance(exc, CommandError):
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    else:
        traceback.print_exception(exc)
    sys.stderr.flush()
    return 1


def command(name, **options):
    """call_command(name) with its output captured: (output, exception or None). (skip_checks=False: the
    system checks run as under manage.py, so an error stops migrate before it touches the database.)"""
    from django.core.management import call_command
    out = io.StringIO()
    try:
        call_command(name, stdout=out, stderr=out, **options)
    except (Exception, SystemExit) as exc:  # (SystemExit: a command that exits instead of raising)
        return out, exc
    return out, None


def settings_package(p):
    """A project settings module that is a package (mysite/settings/) whose __init__ defines no ROOT_URLCONF."""
    overlay = importlib.import_module(os.environ["DJANGO_SETTINGS_MODULE"])
    name = getattr(overlay, "FABDEPLOY_PROJECT_SETTINGS", "")
    package = sys.modules.get(name)
    if package is None or not hasattr(package, "__path__") or hasattr(overlay, "ROOT_URLCONF"):
        return
    mods = sorted(m.name for m in pkgutil.iter_modules(package.__path__))
    pick = next((m for m in p["production"] if m in mods), None) \
        or next((m for m in mods if m not in p["generic"]), None) or (mods[0] if mods else None)
    hint = f"point it at one module, e.g. {name}.{pick}" if pick else "its __init__ defines no ROOT_URLCONF"
    say("error", f'project.django_settings {name} is a package ({", ".join(mods) or "no modules"}): {hint}')
    sys.exit(1)


def import_app(p):
    """Import the WSGI callable and resolve the URLconf (which imports the views), as the first request would."""
    try:
        settings_package(p)
        mod, _, attr = p["import"].partition(":")
        getattr(importlib.import_module(mod), attr or "application")
        import django.urls
        django.urls.get_resolver().url_patterns
    except Exception:
        lines = traceback.format_exc().rstrip("\n").splitlines()
        print("\n".join(lines[-12:]), file=sys.stderr)
        say("error", f"the WSGI application {p['import']} does not import with the production settings: "
                      f"{lines[-1]}")
        sys.exit(1)


def dump(m, pending, fd):
    """The database to `fd` (the program's own fd 1, which the shell gzips into m['backup'].<ext>.gz): the
    dump's path, or "" (no database yet)."""
    import subprocess
    from django.db import connection
    db, vendor = connection.settings_dict, connection.vendor
    ext = m["exts"].get(vendor, "sql")
    if vendor == "sqlite":
        name = str(db["NAME"])
        if name == ":memory:" or not os.path.exists(name):
            say("note", f"no backup: no database yet ({pending} migrations to apply)")
            return ""
        import sqlite3
        src, mem = sqlite3.connect(name), sqlite3.connect(":memory:")
        src.backup(mem)
        with open(fd, "wb", closefd=False) as f:
            f.write(mem.serialize())
        rc, err = 0, ""
    else:
        if vendor == "postgresql":  # (the password in the tool's environment, never on a command line)
            env = dict(os.environ, PGPASSWORD=str(db["PASSWORD"] or ""))
            argv = ["pg_dump", "-Fc", "-Z0", "--no-owner", "-h", db["HOST"] or "localhost",
                    "-p", str(db["PORT"] or 5432), "-U", db["USER"], db["NAME"]]
        elif vendor == "mysql":
            import shutil
            env = dict(os.environ, MYSQL_PWD=str(db["PASSWORD"] or ""))
            argv = [shutil.which("mariadb-dump") or "mysqldump", "--single-transaction", "--no-tablespaces",
                    "--routines", "-h", db["HOST"] or "localhost", "-P", str(db["PORT"] or 3306), "-u", db["USER"],
                    db["NAME"]]
        else:
            argv = None
            rc, err = 2, f"no backup tool for a {vendor} database"
        if argv:
            try:
                proc = subprocess.run(argv, stdout=fd, stderr=subprocess.PIPE, env=env)
                rc, err = proc.returncode, proc.stderr.decode(errors="replace")
            except OSError as exc:
                rc, err = 2, f"{argv[0]}: {exc.strerror} (install the database client on the host)"
    if rc != 0:
        last = ([ln for ln in err.splitlines() if ln.strip()] or [f"status {rc}"])[-1]
        say("error", f"the backup before migrate failed ({vendor}), nothing was migrated: {last}")
        sys.exit(1)
    print(DUMP_OK + ext, file=sys.stderr, flush=True)
    return f"{m['backup']}.{ext}.gz"


def locked(name, wait):
    """Take the migration lock of the default database (app hosts sharing it migrate one after another):
    the function that releases it."""
    import fcntl
    from django.db import connection
    vendor, db = connection.vendor, connection.settings_dict
    t0 = time.monotonic()

    def waited():
        say("error", f"waited {wait}s for the migration lock {name} ({vendor}): another host is still "
                      "migrating this database")
        sys.exit(1)
    if vendor == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        with connection.cursor() as c:
            while True:
                c.execute("SELECT pg_try_advisory_lock(%s)", [key])
                if c.fetchone()[0]:
                    break
                if time.monotonic() - t0 > wait:
                    waited()
                time.sleep(0.5)
        return lambda: connection.cursor().execute("SELECT pg_advisory_unlock(%s)", [key])
    if vendor == "mysql":
        with connection.cursor() as c:
            c.execute("SELECT GET_LOCK(%s, %s)", [name[:64], wait])
            if c.fetchone()[0] != 1:
                waited()
        return lambda: connection.cursor().execute("SELECT RELEASE_LOCK(%s)", [name[:64]])
    if vendor == "sqlite" and str(db.get("NAME", ":memory:")) != ":memory:" and "mode=memory" not in str(db["NAME"]):
        fd = os.open(os.path.join(os.path.dirname(os.path.abspath(str(db["NAME"]))), ".migrate.lock"),
                     os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return lambda: os.close(fd)
            except OSError:
                if time.monotonic() - t0 > wait:
                    waited()
                time.sleep(0.2)
    if vendor != "sqlite":
        say("warn", f"no migration lock for a {vendor} database: app hosts sharing it migrate at once")
    return lambda: None


def migrate(m, fd):
    """The backup when migrations are pending (m['backup']: the dump's path without extension), then
    migrate under the lock; notes: "N migrations applied", where the dump went."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor
    path, pending = "", 0
    if m.get("backup"):
        ex = MigrationExecutor(connection)
        pending = len(ex.migration_plan(ex.loader.graph.leaf_nodes()))
        # (a database no migration was ever applied to holds nothing to back up: a first deploy takes none)
        if pending and any(n in ex.loader.applied_migrations for n in ex.loader.graph.nodes):
            path = dump(m, pending, fd)
    os.close(fd)  # the dump stream ends here
    if m.get("backup") and not pending and m.get("skip_empty"):
        # (a database no other host migrates, nothing to apply: `migrate` would only run the system checks,
        # which check --deploy runs, and its post_migrate handlers, which have nothing new to create)
        say("note", "0 migrations applied")
        return
    unlock = locked(m["lock"], m["wait"])
    out, exc = command("migrate", interactive=False, skip_checks=False)
    unlock()
    if exc is not None:
        failed(out, exc)
        if path:
            print(f"the database was dumped before migrate: {path}", file=sys.stderr, flush=True)
        sys.exit(1)
    applied = len(re.findall(r"^  Applying .* OK", out.getvalue(), re.M))
    say("note", f"{applied} migrations applied")
    if path:
        say("note", f"backup before migrate ({pending} to apply): {path}")


def sha256_of(f):
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def static_hash():
    """sha256 of the static inputs: what collectstatic would collect (the first file found per path, by
    content) and the settings that decide how (the release's own id and path replaced); and each path's
    content hash."""
    import django
    from django.apps import apps
    from django.conf import settings
    from django.contrib.staticfiles.finders import get_finders
    ignore = list(apps.get_app_config("staticfiles").ignore_patterns)
    found = {}
    for finder in get_finders():
        for path, storage in finder.list(ignore):
            prefixed = os.path.join(storage.prefix, path) if getattr(storage, "prefix", None) else path
            if prefixed not in found:
                with storage.open(path) as f:
                    found[prefixed] = sha256_of(f)
    storage = getattr(settings, "STORAGES", {}).get("staticfiles") or getattr(settings, "STATICFILES_STORAGE", "")
    conf = repr([django.get_version(), settings.STATIC_URL, settings.STATIC_ROOT, settings.STATICFILES_FINDERS,
                 settings.STATICFILES_DIRS, storage, ignore])
    release = os.environ.get("FABDEPLOY_RELEASE", "")
    conf = conf.replace(release, "<release>") if release else conf
    return hashlib.sha256(json.dumps([conf, sorted(found.items())]).encode()).hexdigest(), found


def unlink_changed(root, found):
    """Unlink the seeded files (hard links of the live root's) whose content differs from their source:
    collectstatic compares modification times (to the second), and a release's files carry its commit's time,
    which may be older than the live copy's, so it would keep a changed file as "unmodified"."""
    for path, digest in found.items():
        target = os.path.join(root, path)
        try:
            with open(target, "rb") as f:
                same = sha256_of(f) == digest
        except OSError:
            continue
        if not same:
            os.unlink(target)


def collectstatic():
    from django.conf import settings
    stored = os.path.join(settings.STATIC_ROOT, HASH_FILE)
    new, found = static_hash()
    try:
        with open(stored) as f:
            old = f.read().strip()
    except OSError:
        old = ""
    if old == new:  # the root was seeded from a live one collected from the same inputs
        say("note", "collectstatic: skipped (static files unchanged)")
        return
    if os.path.lexists(stored):
        os.unlink(stored)  # (a hard link to the live root's file: never written in place)
    unlink_changed(settings.STATIC_ROOT, found)
    out, exc = command("collectstatic", interactive=False, skip_checks=False)
    if exc is not None:
        sys.exit(failed(out, exc))
    with open(stored + ".tmp", "w") as f:
        f.write(new + "\n")
    os.replace(stored + ".tmp", stored)
    say("note", (out.getvalue().rstrip("\n").splitlines() or [""])[-1])


def probe_static():
    """collectstatic's skip test alone (the app user's one boot of a redeploy: the static root is the deploy
    user's): unchanged, the note collectstatic would give; changed, PROBE_CHANGED (the deploy user's boot then
    collects)."""
    from django.conf import settings
    new, _ = static_hash()
    try:
        with open(os.path.join(settings.STATIC_ROOT, HASH_FILE)) as f:
            old = f.read().strip()
    except OSError:
        old = ""
    if old == new:
        say("note", "collectstatic: skipped (static files unchanged)")
    else:
        print(PROBE_CHANGED, file=sys.stderr, flush=True)


def check_deploy():
    out, exc = command("check", deploy=True)
    if exc is not None:
        sys.exit(failed(out, exc))
    for line in out.getvalue().splitlines():
        if re.search(r"\([a-z_]+\.[WE][0-9]+\)|issues", line):
            say("warn", line)


def start_early(e, env0):
    """Start the new release's app server master now (appserver/beside.py early), as this process's user
    (the app user: the one-boot case), with the environment this program started with minus what the phase
    added (the env file, the settings module): what the restart would start it with. It daemonizes at once;
    when that worked, EARLY_OK tells the shell, which tells the restart to wait for it instead of starting one."""
    import subprocess
    if os.path.exists(e["unless"]) or not os.path.exists(e["config"]):  # (a key staged for the switch; no config)
        return
    env = {k: v for k, v in env0.items() if k not in set(e["drop"])}
    try:  # (what it says before it daemonizes is lost: a master that does not start here is started by the
        # restart, which reports why)
        rc = subprocess.run(e["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd=e["cwd"], start_new_session=True,
                            timeout=60).returncode
    except (OSError, subprocess.SubprocessError):
        return
    if rc == 0:
        print(EARLY_OK, file=sys.stderr, flush=True)


def main():
    # (registered first, run last: the interpreter's teardown then finds no object for its collections to walk,
    # 40 ms of a boot's 230 on the sample project; the atexit functions, the flushes and the frees by reference
    # count (the database connections closed) still happen: fabfile/quick_exit.py does this for fab itself)
    atexit.register(gc.freeze)
    env0 = dict(os.environ)
    p = json.loads(sys.argv[1])
    dump_fd = os.dup(1)  # (not inherited by the project's subprocesses)
    os.dup2(2, 1)  # whatever the project prints goes to stderr, never into the dump
    if "import" in p:
        import_app(p)
    import django
    from django.apps import apps
    if not apps.ready:  # (importing the WSGI module usually did it)
        django.setup()
    if "migrate" in p:
        migrate(p["migrate"], dump_fd)
        if p["migrate"].get("record"):
            record_migrations()  # noqa: F821 (steps/migration_record.RECORD_PY, put before this text)
    else:
        os.close(dump_fd)
    if "early" in p:
        start_early(p["early"], env0)
    if p.get("static"):
        collectstatic()
    if p.get("probe"):
        probe_static()
    if p.get("check"):
        check_deploy()


if __name__ == "__main__":
    main()
