"""`fab manage -- ARGS` and <deploy_to>/bin/manage end to end: management commands in the live release of a
real host, with the production settings, the [django] env and the production database (shared/db)."""
from __future__ import annotations

import fcntl
import os
import select
import sqlite3
import subprocess
import termios
import time
from types import SimpleNamespace

import pytest

from conftest import BIN, FAB, OFFLINE, make_project, run_fab, sample_config

SHOW = ("from django.conf import settings; import os; "
        "print('settings', settings.SETTINGS_MODULE, settings.DEBUG, os.environ['GREETING'])")


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    host = make_host("manage")
    proj = make_project(tmp_path_factory.mktemp("proj"))
    # no fabric.yaml: importing fabdeploy's tasks gives `fab` their executor, which hands the words after
    # `--` to manage (plain Fabric would run them as a shell command, or refuse: "not given any hosts")
    assert not (proj.root / "fabric.yaml").exists()
    proj.write_config(sample_config(host, extra="""\
        [django]
        env = { GREETING = "hello from app.env" }
        """))
    res = run_fab(proj.root, "-H", host.ssh_target(), "deploy", cache=wheel_cache)
    assert res.returncode == 0, res.stdout + res.stderr
    return SimpleNamespace(host=host, proj=proj)


def manage(site, *args, with_host=True):
    hosts = ("-H", site.host.ssh_target()) if with_host else ()
    return run_fab(site.proj.root, *hosts, "manage", "--", *args, timeout=120)


def db_users(site) -> dict[str, int]:
    """username -> is_superuser, read from the production database on the host."""
    with sqlite3.connect(site.host.path("/srv/sample/shared/db/default.sqlite3")) as db:
        return dict(db.execute("select username, is_superuser from auth_user"))


def test_manage_runs_in_the_live_release_with_the_production_settings_and_env(site):
    res = manage(site, "shell", "-c", SHOW)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "settings fabdeploy_settings False hello from app.env" in res.stdout.splitlines()
    # the host it ran on, on stderr (stdout stays the command's own output)
    assert f"{site.host.address}: manage.py shell -c" in res.stderr


def test_manage_uses_the_production_database(site):
    res = manage(site, "migrate", "--check")
    assert res.returncode == 0, res.stdout + res.stderr
    res = manage(site, "showmigrations", "pages")
    assert res.returncode == 0 and "[X] 0001_initial" in res.stdout, res.stdout + res.stderr
    res = manage(site, "shell", "-c",
                 "from django.contrib.auth.models import User; User.objects.create_user('alice', password='x')")
    assert res.returncode == 0, res.stdout + res.stderr
    assert db_users(site) == {"alice": 0}
    # nothing fell back to a development database inside the release
    assert not list(site.host.path("/srv/sample/current").resolve().glob("*.sqlite3"))


def test_manage_passes_the_exit_status_through(site):
    res = manage(site, "shell", "-c", "import sys; print('about to fail'); sys.exit(3)")
    assert res.returncode == 3 and "about to fail" in res.stdout, res.stdout + res.stderr
    res = manage(site, "nosuchcommand")
    assert res.returncode == 1 and "Unknown command: 'nosuchcommand'" in res.stderr


def test_manage_without_a_command_is_one_line(site):
    res = run_fab(site.proj.root, "-H", site.host.ssh_target(), "manage")
    assert res.returncode == 1
    assert res.stderr.strip() == ("fabdeploy: manage needs the command after --, "
                                  "e.g. fab manage -- createsuperuser")


def test_fabdeploy_manage_takes_the_host_from_deploy_toml(site):
    res = subprocess.run([str(BIN / "fabdeploy"), "manage", "--", "shell", "-c", SHOW], cwd=site.proj.root,
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                         env={**os.environ, **OFFLINE})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "settings fabdeploy_settings False hello from app.env" in res.stdout
    res = run_fab(site.proj.root, "manage", "--host", site.host.ssh_target(), "--", "check")
    assert res.returncode == 0 and "System check identified no issues" in res.stdout, res.stdout + res.stderr


def test_bin_manage_on_the_host_uses_the_production_settings(site):
    res = site.host.ssh(f"cd /srv/sample/current && /srv/sample/bin/manage shell -c {SHOW!r}")
    assert "settings fabdeploy_settings False hello from app.env" in res.stdout
    res = site.host.ssh("/srv/sample/bin/manage shell -c "
                        "'from django.contrib.auth.models import User; print(User.objects.count(), \"users\")'")
    assert res.stdout.strip().splitlines()[-1] == f"{len(db_users(site))} users"
    res = site.host.ssh("/srv/sample/bin/manage shell -c 'raise SystemExit(4)'", check=False)
    assert res.returncode == 4


def _controlling_terminal():
    """In the child: a session of its own whose controlling terminal is its stdin, as in a terminal window."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_interactive_createsuperuser_gets_a_terminal(site):
    """Drive `fab manage -- createsuperuser` from a pseudo-terminal and answer its prompts."""
    master, slave = os.openpty()
    proc = subprocess.Popen([FAB, "-H", site.host.ssh_target(), "manage", "--", "createsuperuser",
                             "--username", "boss", "--email", "boss@example.invalid"],
                            cwd=site.proj.root, stdin=slave, stdout=slave, stderr=slave,
                            preexec_fn=_controlling_terminal, env={**os.environ, **OFFLINE})
    os.close(slave)
    seen, answered = b"", 0
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
                # "Password: " then "Password (again): "
                if seen.count(b"Password") > answered:
                    answered += 1
                    os.write(master, b"Corr3ct-Horse-Battery\r")
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        rc = proc.wait()
        os.close(master)
    text = seen.decode(errors="replace")
    assert rc == 0, repr(text)
    assert answered == 2 and "Superuser created successfully." in text, text
    assert db_users(site)["boss"] == 1
