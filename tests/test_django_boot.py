"""The django phase in one Django boot (steps/django_program.py) and collectstatic skipped when the static
inputs are unchanged: the phase run for real with /bin/sh and this interpreter's Django on the sample project's
releases in temp dirs (the SSH user is the app user here: one boot; two users: tests/test_boot_e2e.py)."""
from __future__ import annotations

import gzip
import os
import sqlite3
import sys
from pathlib import Path

from fabdeploy.hosts.layout import Layout
from fabdeploy.model import Release
from fabdeploy.remote.markers import MARK
from fabdeploy.remote.script import Phase, Script
from fabdeploy.remote.shell import q
from fabdeploy.steps import code, django_app, static
from fabdeploy.steps.django_program import HASH_FILE

from test_phases import _fresh_release, _sample_bundle, err, make_rel, notes, out, sh

A, B, C = "20260101T000000Z-aaaaaa1", "20260102T000000Z-bbbbbb2", "20260103T000000Z-cccccc3"
SKIPPED = "collectstatic: skipped (static files unchanged)"
MANIFEST = '\nSTORAGES = {"default": {"BACKEND": "django.core.files.storage.FileSystemStorage"}, "staticfiles": ' \
           '{"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"}}\n'


def counting_python(lay: Layout, rel: Release, log: Path) -> None:
    """The release's virtualenv python: this interpreter, each start logged (one line per process)."""
    python = Path(lay.venv(rel.venv_hash), "bin", "python")
    python.write_text(f"#!/bin/sh\necho \"$$\" >> {q(str(log))}\nexec {q(sys.executable)} \"$@\"\n")


def next_release(cfg, lay: Layout, rel_id: str, tmp_path, edit=None) -> Release:
    """The code phase of another release (its static root seeded from the live one), `edit`(release dir) after."""
    rel = make_rel(rel_id)
    proc = sh(Script([code.code(cfg, rel)]), tmp_path, stdin=_sample_bundle())
    assert proc.returncode == 0, err(proc)
    if edit:
        edit(Path(lay.release(rel.id)))
    return rel


def deploy(cfg, rel: Release, tmp_path):
    """The django phase of `rel`, then its static root goes live (as the switch does)."""
    proc = sh(Script([django_app.django(cfg, rel), Phase("live", static.static_switch(cfg, q(rel.id)))]), tmp_path)
    assert proc.returncode == 0, err(proc) + out(proc)
    return notes(out(proc))


def test_one_boot_does_import_backup_migrate_collectstatic_and_check(tmp_path):
    cfg, lay, a = _fresh_release(tmp_path, rel=make_rel(A))
    log = tmp_path / "boots.log"
    counting_python(lay, a, log)
    first = deploy(cfg, a, tmp_path)
    assert first[0].endswith(" migrations applied") and int(first[0].split()[0]) > 0
    assert "static files copied" in first[1]
    assert len(log.read_text().split()) == 1  # one python process for the whole phase
    # a release with one more migration: backed up (one boot still), the project's prints kept out of the dump
    MIGRATION = ("from django.db import migrations\n\n\nclass Migration(migrations.Migration):\n"
                 "    dependencies = [('pages', '0001_initial')]\n    operations = []\n")

    def edit(release):
        (release / "pages" / "migrations" / "0002_more.py").write_text(MIGRATION)
        with open(release / "sampleproject" / "settings.py", "a") as f:
            f.write("\nprint('chatty settings')\n")
    b = next_release(cfg, lay, B, tmp_path, edit)
    log.unlink()
    proc = sh(Script([django_app.django(cfg, b)]), tmp_path)
    assert proc.returncode == 0, err(proc)
    dump = f"{lay.shared}/backups/{B}.sqlite3.gz"
    assert notes(out(proc))[:3] == ["1 migrations applied", f"backup before migrate (1 to apply): {dump}", SKIPPED]
    assert len(log.read_text().split()) == 1
    assert oct(os.stat(dump).st_mode & 0o777) == "0o600" and os.listdir(f"{lay.shared}/backups") == [f"{B}.sqlite3.gz"]
    copy = tmp_path / "copy.sqlite3"
    copy.write_bytes(gzip.decompress(Path(dump).read_bytes()))
    assert sqlite3.connect(copy).execute("SELECT COUNT(*) FROM django_migrations WHERE name = '0002_more'"
                                         ).fetchone() == (0,)  # taken before migrate


def test_a_failing_migrate_names_the_backup_and_stops(tmp_path):
    flags = {"collectstatic": False, "check_deploy": False}
    cfg, lay, a = _fresh_release(tmp_path, rel=make_rel(A), django=flags)
    deploy(cfg, a, tmp_path)
    BAD = ("from django.db import migrations\n\n\nclass Migration(migrations.Migration):\n"
           "    dependencies = [('pages', '0001_initial')]\n"
           "    operations = [migrations.RunSQL('SELECT no_such_column_fabdeploy FROM nowhere')]\n")
    b = next_release(cfg, lay, B, tmp_path,
                     lambda r: (r / "pages" / "migrations" / "0002_bad.py").write_text(BAD))
    proc = sh(Script([django_app.django(cfg, b)]), tmp_path)
    assert proc.returncode == 1 and notes(out(proc)) == []
    lines = err(proc).strip().splitlines()
    assert "nowhere" in err(proc) and "Traceback" in err(proc)  # migrate's error, as manage.py shows it
    assert lines[-2] == f"the database was dumped before migrate: {lay.shared}/backups/{B}.sqlite3.gz"
    assert os.path.isfile(f"{lay.shared}/backups/{B}.sqlite3.gz")


def test_collectstatic_is_skipped_when_the_static_inputs_are_unchanged(tmp_path):
    flags = {"migrate": False, "check_deploy": False}
    cfg, lay, a = _fresh_release(tmp_path, rel=make_rel(A), django=flags)
    assert "static files copied" in deploy(cfg, a, tmp_path)[0]
    stored = Path(lay.static, A, HASH_FILE).read_text()
    # only Python changed: the seeded root (hard links of the live one) is this release's, as it is
    b = next_release(cfg, lay, B, tmp_path, lambda r: (r / "pages" / "views.py").open("a").write("\n# edited\n"))
    assert deploy(cfg, b, tmp_path) == [SKIPPED]
    css = Path(lay.static, B, "pages", "site.css")
    assert css.read_bytes() == (Path(lay.release(B)) / "pages/static/pages/site.css").read_bytes()
    assert css.stat().st_ino == Path(lay.static, A, "pages", "site.css").stat().st_ino
    assert Path(lay.static, B, HASH_FILE).read_text() == stored
    # a changed CSS file: collected, a new hash; the live root's files and hash are untouched
    def older_css(r):  # (a commit older than the live copy: collectstatic's mtime test alone would keep it)
        (r / "pages/static/pages/site.css").write_text("/* changed in C */\n")
        os.utime(r / "pages/static/pages/site.css", (946684800, 946684800))
    c = next_release(cfg, lay, C, tmp_path, older_css)
    assert "1 static file copied" in deploy(cfg, c, tmp_path)[0]
    assert Path(lay.static, C, "pages", "site.css").read_text() == "/* changed in C */\n"
    assert Path(lay.static, C, "pages", "site.css").stat().st_mode & 0o040  # the web server's group reads it
    assert Path(lay.static, C, HASH_FILE).read_text() != stored
    assert Path(lay.static, B, HASH_FILE).read_text() == stored
    assert Path(lay.static, B, "pages", "site.css").read_text() != "/* changed in C */\n"


def test_a_changed_static_setting_is_collected_again(tmp_path):
    flags = {"migrate": False, "check_deploy": False}
    cfg, lay, a = _fresh_release(tmp_path, rel=make_rel(A), django=flags)
    deploy(cfg, a, tmp_path)
    b = next_release(cfg, lay, B, tmp_path, lambda r: (r / "sampleproject" / "settings.py").open("a").write(MANIFEST))
    assert "post-processed" in deploy(cfg, b, tmp_path)[0]  # the storage changed: not skipped
    assert Path(lay.static, B, "staticfiles.json").is_file()


def test_manifest_storage_keeps_working_when_collectstatic_is_skipped(tmp_path):
    flags = {"migrate": False, "check_deploy": False}
    manifest = lambda r: (r / "sampleproject" / "settings.py").open("a").write(MANIFEST)  # noqa: E731
    cfg, lay, a = _fresh_release(tmp_path, rel=make_rel(A), django=flags)
    manifest(Path(lay.release(A)))
    assert "post-processed" in deploy(cfg, a, tmp_path)[0]
    b = next_release(cfg, lay, B, tmp_path, manifest)
    assert deploy(cfg, b, tmp_path) == [SKIPPED]
    # release B's own settings resolve the CSS through its root's staticfiles.json to a file that is there
    proc = sh(f"cd {q(lay.release(B))} && DJANGO_SETTINGS_MODULE=fabdeploy_settings {q(sys.executable)} -c "
              + q("import django; django.setup(); from django.templatetags.static import static; "
                  "print(static('pages/site.css'))"), tmp_path)
    url = proc.stdout.decode().strip()
    assert proc.returncode == 0 and url.startswith("/static/pages/site.") and url != "/static/pages/site.css", err(proc)
    assert Path(lay.static, B, url.removeprefix("/static/")).read_bytes() == \
        (Path(lay.release(B)) / "pages/static/pages/site.css").read_bytes()


def test_the_import_check_failure_is_unchanged_in_one_boot(tmp_path):
    cfg, lay, rel = _fresh_release(tmp_path, project={"wsgi": "sampleproject.nosuchmodule:application"})
    proc = sh(Script([django_app.django(cfg, rel)]), tmp_path)
    assert proc.returncode == 1 and notes(out(proc)) == []
    last = [ln for ln in err(proc).splitlines() if ln.startswith(f"{MARK} error ")]
    assert last == [f"{MARK} error the WSGI application sampleproject.nosuchmodule:application does not import "
                    "with the production settings: ModuleNotFoundError: No module named 'sampleproject.nosuchmodule'"]
    assert not Path(lay.shared, "db", "default.sqlite3").exists()


def _sudo_dropping_user(tmp_path) -> dict:
    """A PATH whose `sudo -n -u USER cmd...` runs cmd as this user (logged): the two-user phase, in one user."""
    bindir = tmp_path / "sudobin"
    bindir.mkdir()
    (bindir / "sudo").write_text(f"#!/bin/sh\necho \"$*\" >> {q(str(tmp_path / 'sudo.log'))}\n"
                                 "[ \"$1\" = -n ] && shift; [ \"$1\" = -u ] && shift 2; exec \"$@\"\n")
    (bindir / "sudo").chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


def test_two_users_boot_side_by_side_and_report_in_order(tmp_path):
    # the app user is not the SSH user: its boot (import check, migrate) and the deploy user's (collectstatic,
    # check --deploy) run at once; what they said comes in the one-boot order
    cfg, lay, a = _fresh_release(tmp_path, rel=make_rel(A), app={"user": "daemon"})
    log = tmp_path / "boots.log"
    counting_python(lay, a, log)
    env = _sudo_dropping_user(tmp_path)
    proc = sh(Script([django_app.django(cfg, a)]), tmp_path, env=env)
    assert proc.returncode == 0, err(proc) + out(proc)
    said = notes(out(proc))
    assert said[0].endswith(" migrations applied") and "static files copied" in said[1], said
    assert len(log.read_text().split()) == 2
    assert "-n -u daemon sh -c" in (tmp_path / "sudo.log").read_text()
    assert Path(lay.static, a.id, "pages", "site.css").exists() or any(Path(lay.static, a.id).rglob("*.css"))


def test_two_users_a_failing_import_check_stops_after_the_other_boot_ended(tmp_path):
    cfg, lay, rel = _fresh_release(tmp_path, app={"user": "daemon"},
                                   project={"wsgi": "sampleproject.nosuchmodule:application"})
    proc = sh(Script([django_app.django(cfg, rel)]), tmp_path, env=_sudo_dropping_user(tmp_path))
    assert proc.returncode == 1 and notes(out(proc)) == []  # nothing of the other boot is reported as done
    last = [ln for ln in err(proc).splitlines() if ln.startswith(f"{MARK} error ")]
    assert last == [f"{MARK} error the WSGI application sampleproject.nosuchmodule:application does not import "
                    "with the production settings: ModuleNotFoundError: No module named 'sampleproject.nosuchmodule'"]
    assert not Path(lay.shared, "db", "default.sqlite3").exists()
    # the deploy user's boot ran to its end (its exit status written): the phase waits for it (test_phases)
    assert Path(lay.staging(rel.id), "django-static.out.rc").exists()


def test_two_users_a_redeploy_boots_once_and_collects_only_what_changed(tmp_path):
    """Two users, a redeploy (the seeded static root holds the live hash): one boot as the app user (import
    check, migrate, the static inputs compared, check --deploy); a changed CSS file makes the deploy user's
    collectstatic boot follow, in that order."""
    flags = {"check_deploy": False}
    cfg, lay, a = _fresh_release(tmp_path, rel=make_rel(A), app={"user": "daemon"}, django=flags)
    env = _sudo_dropping_user(tmp_path)
    run = lambda rel: sh(Script([django_app.django(cfg, rel), Phase("live", static.static_switch(cfg, q(rel.id)))]),  # noqa: E731
                         tmp_path, env=env)
    assert run(a).returncode == 0
    b = next_release(cfg, lay, B, tmp_path, lambda r: (r / "pages" / "views.py").open("a").write("\n# edited\n"))
    log = tmp_path / "boots.log"
    counting_python(lay, b, log)
    proc = run(b)
    assert proc.returncode == 0, err(proc) + out(proc)
    assert notes(out(proc)) == ["0 migrations applied", SKIPPED]
    assert len(log.read_text().split()) == 1  # one python process: the app user's
    assert "fabdeploy-static-changed" not in out(proc) + err(proc)
    c = next_release(cfg, lay, C, tmp_path, lambda r: (r / "pages/static/pages/site.css").write_text("/* C */\n"))
    log.unlink()
    counting_python(lay, c, log)
    proc = run(c)
    assert proc.returncode == 0, err(proc) + out(proc)
    said = notes(out(proc))
    assert said[0] == "0 migrations applied" and "1 static file copied" in said[1], said
    assert len(log.read_text().split()) == 2  # the app user's boot, then the deploy user's collectstatic
    assert Path(lay.static, C, "pages", "site.css").read_text() == "/* C */\n"
    assert "fabdeploy-static-changed" not in out(proc) + err(proc)
