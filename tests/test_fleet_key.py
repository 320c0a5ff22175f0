"""The fleet's one SECRET_KEY, without hosts: which key each app host gets (secret_key.decide), the
fingerprint line run in a real sh, the code phase installing a given key, and [django] env refusing the
names the production settings take from shared/secret_key."""
from __future__ import annotations

import subprocess

import pytest

from fabdeploy.steps import secret_key

from fabdeploy.steps import activate

from fabdeploy.steps import code

from fabdeploy.steps import django_app
from fabdeploy.errors import FabdeployError
from fabdeploy.remote.markers import MARK
from fabdeploy.remote.runner import RunResult
from fabdeploy.remote.script import Script
from test_config import config_error, raw
from test_phases import _sample_bundle, _sample_cfg, make_rel


@pytest.mark.parametrize("name", ["SECRET_KEY", "DJANGO_SECRET_KEY"])
def test_env_secret_key_is_refused_in_one_line(name):
    msg = config_error(raw(django={"env": {name: "s3cret-value"}}))
    assert msg.startswith(f"django.env must not set {name}: ")
    assert "shared/secret_key" in msg and "s3cret-value" not in msg and "\n" not in msg


def test_no_key_anywhere_one_host_keeps_making_its_own():
    assert secret_key.decide({"a": ""}) == secret_key.KeyPlan()


def test_no_key_anywhere_in_a_fleet_one_new_key_for_all():
    assert secret_key.decide({"a": "", "b": ""}) == secret_key.KeyPlan(["a", "b"], generate=True)


def test_hosts_without_a_key_get_the_holders_key():
    assert secret_key.decide({"a": "", "b": "f1", "c": ""}) == secret_key.KeyPlan(["a", "c"], "b")
    assert secret_key.decide({"a": "f1", "b": "f1"}) == secret_key.KeyPlan()


def test_different_keys_are_refused_in_one_line_naming_the_hosts():
    with pytest.raises(FabdeployError) as exc:
        secret_key.decide({"a": "1111111111111111", "b": "2222222222222222", "c": "1111111111111111", "d": ""})
    msg = str(exc.value)
    assert "\n" not in msg
    assert "a, c (11111111); b (22222222); none on d" in msg
    assert "fab deploy --adopt-secret-key HOST" in msg and "Nothing was changed" in msg


def test_adopt_gives_every_other_host_that_key():
    assert secret_key.decide({"a": "f1", "b": "f2", "c": "", "d": "f1"}, "b") == \
        secret_key.KeyPlan(["a", "c", "d"], "b")
    with pytest.raises(FabdeployError, match=r"--adopt-secret-key x: not an app host of this deploy \(app hosts: a, b\)"):
        secret_key.decide({"a": "f1", "b": "f2"}, "x")
    with pytest.raises(FabdeployError, match="b: that host has no shared/secret_key"):
        secret_key.decide({"a": "f1", "b": ""}, "b")


def _fp(tmp_path, content: str | None) -> str:
    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    if content is not None:
        (shared / "secret_key").write_text(content)
    text = "\n".join(["set -eu", *secret_key.fingerprint_lines(str(tmp_path))])
    proc = subprocess.run(["sh", "-c", text], capture_output=True, text=True, check=True)
    assert content is None or content.strip() not in proc.stdout  # never the key itself
    return RunResult(0, {}, proc.stdout, "").facts[secret_key.FACT]


def test_fingerprint_is_a_hash_of_the_key_as_django_reads_it(tmp_path):
    assert _fp(tmp_path, None) == ""
    a = _fp(tmp_path, "key-one\n")
    assert len(a) == 16 and int(a, 16) >= 0
    assert _fp(tmp_path, "key-one") == a  # the trailing newline does not count (settings strip it)
    assert _fp(tmp_path, "key-two\n") != a


def test_code_phase_installs_the_given_key_and_stages_a_replacement(tmp_path):
    deploy_to = tmp_path / "app"
    for d in ("releases", "shared/config"):  # (what the setup phase creates)
        (deploy_to / d).mkdir(parents=True)
    cfg = _sample_cfg(deploy_to)
    key = "the-fleet-key-" + "x" * 40
    script = Script([code.code(cfg, make_rel(), key)], (key,))
    assert key in script.text() and key not in script.display()
    proc = subprocess.run(["sh", "-c", script.text()], input=_sample_bundle(), capture_output=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    path = deploy_to / "shared" / "secret_key"
    assert path.read_text() == key + "\n" and path.stat().st_mode & 0o777 == 0o600
    assert "secret key installed (the fleet key)" in proc.stdout.decode()
    # a host with another key: staged, and installed by the switch (not before: the live site keeps its key)
    other = make_rel("20260101T000000Z-bbbbbbb")
    path.write_text("old-key\n")
    proc = subprocess.run(["sh", "-c", Script([code.code(cfg, other, key)]).text()], input=_sample_bundle(),
                          capture_output=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert path.read_text() == "old-key\n"
    staged = deploy_to / "tmp" / other.id / "secret_key"
    assert staged.read_text() == key + "\n" and staged.stat().st_mode & 0o777 == 0o600
    switch = "\n".join(ln for ln in activate.switch(cfg, other).lines if "secret_key" in ln)
    proc = subprocess.run(["sh", "-c", f"set -e\n{switch}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert path.read_text() == key + "\n" and not staged.exists()
    assert f"{MARK} note secret key replaced by the fleet key" in proc.stdout


def test_status_names_app_hosts_whose_keys_differ():
    from fabdeploy.ops.report import key_drift
    same = [{"host": "a", "secret_key_fp": "1" * 16}, {"host": "b", "secret_key_fp": "1" * 16},
            {"host": "lb", "role": "lb"}]
    assert key_drift(same) == ""
    differ = [{"host": "a", "secret_key_fp": "1" * 16}, {"host": "b", "secret_key_fp": "2" * 16},
              {"host": "c", "secret_key_fp": ""}, {"host": "d", "error": "unreachable"}]
    assert key_drift(differ) == ("SECRET_KEY DIFFERS between app hosts: c (no key); a (11111111); b (22222222) "
                                 "(fab deploy --adopt-secret-key HOST)")


# --- the migration lock (django_program.locked), run for real with this interpreter's Django and SQLite ---

# (the program's lock around a command instead of call_command("migrate"): its text run as shipped, not main())
LOCKED_COMMAND_PY = """
import subprocess, sys
import django
django.setup()
program = {"__name__": "django_program"}
exec(PROGRAM, program)
unlock = program["locked"](sys.argv[1], int(sys.argv[2]))
sys.stdout.flush()
rc = subprocess.call(sys.argv[3:])
unlock()
sys.exit(rc)
"""


def _lock_env(tmp_path):
    import os
    import shutil
    import sys
    from test_phases import SAMPLE
    src = tmp_path / "src"
    shutil.copytree(SAMPLE, src, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3"))
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "sampleproject.settings"}
    return src, env, [sys.executable, "-c", f"PROGRAM = {django_app.PROGRAM_PY!r}\n" + LOCKED_COMMAND_PY]


def test_migration_lock_lets_one_command_run_at_a_time(tmp_path):
    src, env, wrapper = _lock_env(tmp_path)
    # each command fails if another one is inside at the same moment
    inside = ("if [ -e inside ]; then echo OVERLAP; exit 1; fi; touch inside; sleep 0.5; rm inside; "
              "echo done")
    procs = [subprocess.Popen([*wrapper, "fabdeploy-migrate-sample", "60", "sh", "-c", inside], cwd=src, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert all(o.strip().splitlines()[-1] == "done" for o in outs), outs
    assert (src / ".migrate.lock").exists()  # beside the SQLite database file (BASE_DIR/db.sqlite3)


def test_migration_lock_held_too_long_fails_in_one_line(tmp_path):
    import fcntl
    import os
    src, env, wrapper = _lock_env(tmp_path)
    fd = os.open(src / ".migrate.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.lockf(fd, fcntl.LOCK_EX)  # another host's migrate (a POSIX lock: another process sees it)
    try:
        proc = subprocess.run([*wrapper, "fabdeploy-migrate-sample", "1", "sh", "-c", "echo ran"], cwd=src, env=env,
                              capture_output=True, text=True, timeout=60)
    finally:
        os.close(fd)
    assert proc.returncode == 1 and "ran" not in proc.stdout
    assert proc.stderr.strip() == (f"{MARK} error waited 1s for the migration lock fabdeploy-migrate-sample "
                                   "(sqlite): another host is still migrating this database")
