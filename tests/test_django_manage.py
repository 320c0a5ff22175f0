"""The manage builders (fab manage and <deploy_to>/bin/manage) run for real in /bin/sh against a fake deploy_to."""
from __future__ import annotations

import getpass
import json
import subprocess
import sys

from fabdeploy.config import parse_config
from fabdeploy.ops.manage import remainder, remote_command, wrapper
from fabdeploy.hosts.layout import Layout

HOSTILE = ["shell", "-c", "print('a b'); $(touch PWNED) `touch PWNED`", "it's", "", "-n", "*"]
REPORT = ("import json, os, sys; print(json.dumps({'args': sys.argv[1:], 'cwd': os.getcwd(), "
          "'settings': os.environ['DJANGO_SETTINGS_MODULE'], 'release': os.environ['FABDEPLOY_RELEASE'], "
          "'greeting': os.environ['GREETING']}))")


def fake_deploy_to(tmp_path):
    """deploy_to with a live release whose virtualenv python reports its args and environment as JSON."""
    deploy_to = tmp_path / "app"
    cfg = parse_config({"project": {"name": "shop", "django_settings": "shop.settings", "wsgi": "shop.wsgi"},
                        "paths": {"deploy_to": str(deploy_to)}, "app": {"user": getpass.getuser()}})
    lay = Layout(str(deploy_to))
    rel = deploy_to / "releases" / "20260101T000000Z-abcdef0"
    (rel / ".fabdeploy").mkdir(parents=True)
    (rel / ".fabdeploy" / "venv").write_text("v1\n")
    (rel / "manage.py").write_text(REPORT)
    (deploy_to / "venvs" / "v1" / "bin").mkdir(parents=True)
    python = deploy_to / "venvs" / "v1" / "bin" / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    (deploy_to / "shared" / "config").mkdir(parents=True)
    (deploy_to / "shared" / "config" / "app.env").write_text("GREETING='50% off; $(nope)'\n")
    (deploy_to / "current").symlink_to(rel)
    return cfg, lay, rel


def test_remote_command_runs_manage_py_in_current_with_exact_args(tmp_path):
    cfg, lay, rel = fake_deploy_to(tmp_path)
    proc = subprocess.run(remote_command(cfg, HOSTILE), shell=True, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got == {"args": HOSTILE, "cwd": str(rel), "settings": "fabdeploy_settings",
                   "release": rel.name, "greeting": "50% off; $(nope)"}
    assert not list(tmp_path.rglob("PWNED"))


def test_wrapper_is_the_same_command_as_a_script(tmp_path):
    cfg, lay, rel = fake_deploy_to(tmp_path)
    script = tmp_path / "manage"
    script.write_text(wrapper(cfg))
    script.chmod(0o755)
    proc = subprocess.run([str(script), *HOSTILE], cwd="/", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["args"] == HOSTILE and json.loads(proc.stdout)["cwd"] == str(rel)
    (rel / "manage.py").write_text("raise SystemExit(7)")
    assert subprocess.run([str(script), "check"], capture_output=True).returncode == 7  # status passed through


def test_without_a_live_release_says_so(tmp_path):
    cfg, lay, rel = fake_deploy_to(tmp_path)
    (tmp_path / "app" / "current").unlink()
    proc = subprocess.run(remote_command(cfg, ["check"]), shell=True, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"fabdeploy: no live release in {tmp_path}/app (deploy first)"


def test_remainder_keeps_the_words_after_the_first_double_dash():
    assert remainder(["fab", "-H", "h", "manage", "--", "shell", "-c", "print(1 + 1)", "--", "x"]) == [
        "shell", "-c", "print(1 + 1)", "--", "x"]
    assert remainder(["fab", "manage"]) == []
