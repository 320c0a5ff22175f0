"""Day-two operations end to end (real fab, real host): rollback, releases, status, logs, lock, audit log.

Tests run in order on one host and build on each other.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest

from conftest import FAB, make_project, release_of, run_fab, sample_config

MIGRATION = '''from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("pages", "0001_initial")]
    operations = [
        migrations.CreateModel(
            name="Tag",
            fields=[("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
                    ("name", models.CharField(max_length=50))],
        ),
    ]
'''
TAG_MODEL = '''

class Tag(models.Model):
    name = models.CharField(max_length=50)
'''


@pytest.fixture(scope="module")
def ops(make_host, tmp_path_factory, wheel_cache):
    host = make_host("ops")
    proj = make_project(tmp_path_factory.mktemp("ops"))
    proj.write_config(sample_config(host, keep=5))
    # The same project with a slow hook before the django phase: a window to interrupt or to collide with.
    proj.write_config(sample_config(host, keep=5, extra='[hooks]\nbefore_django = ["sleep 30"]\n'),
                      name="slow.toml")
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache, rel={})


def fab(ops, *args, env=None):
    return run_fab(ops.proj.root, *args, cache=ops.cache, env=env)


def deploy(ops, label, message):
    ops.proj.commit(label, {"pages/message.txt": message + "\n"})
    res = fab(ops, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    ops.rel[label] = release_of(res.stdout)
    return ops.rel[label]


def page(ops) -> str:
    status, _, body = ops.host.http("/", host_header=ops.host.address)
    assert status == 200, body[:300]
    return body.decode()


def current(ops) -> str:
    return os.path.basename(os.readlink(ops.host.path("/srv/sample/current")))


def audit(ops) -> list[dict]:
    return [json.loads(ln) for ln in ops.host.path("/srv/sample/shared/log/audit.jsonl").read_text().splitlines()]


def lock_path(ops):
    return ops.host.path("/srv/sample/.fabdeploy-lock")


def test_nothing_to_roll_back_to_is_one_clear_line(ops):
    deploy(ops, "A", "Version A")
    res = fab(ops, "rollback")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "nothing to roll back to" in res.stderr
    assert current(ops) == ops.rel["A"] and not lock_path(ops).exists()


def test_rollback_serves_the_previous_release_again(ops):
    deploy(ops, "B", "Version B")
    assert "Version B" in page(ops)
    res = fab(ops, "rollback")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"rolled back to {ops.rel['A']}" in res.stdout
    assert "Version A" in page(ops) and f"Release: {ops.rel['A']}" in page(ops)
    assert current(ops) == ops.rel["A"]
    assert ops.host.path(f"/srv/sample/releases/{ops.rel['B']}/.fabdeploy/bad").exists()
    # every worker runs A: uWSGI was reloaded with A's own ini (chdir + venv)
    ini = ops.host.path("/srv/sample/shared/config/uwsgi.ini").read_text()
    assert f"chdir = /srv/sample/releases/{ops.rel['A']}" in ini
    last = audit(ops)[-1]
    assert last["action"] == "rollback" and last["result"] == "ok" and last["release"] == ops.rel["A"]
    assert not lock_path(ops).exists()


def test_releases_json_shows_status_and_who(ops):
    res = fab(ops, "releases", "--json")
    assert res.returncode == 0, res.stderr
    [report] = json.loads(res.stdout)
    by_id = {r["id"]: r for r in report["releases"]}
    assert by_id[ops.rel["A"]]["status"] == "current" and by_id[ops.rel["B"]]["status"] == "bad"
    assert all(r["venv_present"] for r in by_id.values())
    assert by_id[ops.rel["A"]]["branch"] == "main" and len(by_id[ops.rel["A"]]["revision"]) == 40
    assert "@" in by_id[ops.rel["A"]]["deployed_by"]
    text = fab(ops, "releases").stdout
    assert re.search(rf"{ops.rel['B']}\s+\w+\s+main\s+\S+\s+\S+\s+bad\s+yes", text), text


def test_rollback_to_a_named_release(ops):
    res = fab(ops, "rollback", "--to", ops.rel["B"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Version B" in page(ops) and current(ops) == ops.rel["B"]
    res = fab(ops, "rollback", "--to", "20200101T000000Z-0000000")
    assert res.returncode == 1 and "is not on the host" in res.stderr and "Traceback" not in res.stderr
    res = fab(ops, "rollback", "--to", "../../etc")
    assert res.returncode == 1 and "is not a release id" in res.stderr
    assert current(ops) == ops.rel["B"]


def test_rollback_over_a_newer_migration_warns_and_strict_refuses(ops):
    models = (ops.proj.src / "pages" / "models.py").read_text()
    ops.proj.commit("M", {"pages/migrations/0002_tag.py": MIGRATION, "pages/models.py": models + TAG_MODEL})
    deploy(ops, "C", "Version C")
    res = fab(ops, "rollback", "--strict")
    assert res.returncode == 1
    assert "refusing (--strict)" in res.stderr and "pages.0002_tag" in res.stderr
    assert current(ops) == ops.rel["C"] and "Version C" in page(ops)  # nothing changed
    assert not lock_path(ops).exists()
    res = fab(ops, "rollback")
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"migration pages\.0002_tag that \S+ does not know", res.stdout), res.stdout
    assert current(ops) == ops.rel["B"] and "Version B" in page(ops)
    # never unapplied: the table is still there
    db = ops.host.path("/srv/sample/shared/db/default.sqlite3")
    out = subprocess.run(["python3", "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]);"
                          "print(c.execute(\"select count(*) from django_migrations where name='0002_tag'\").fetchone()[0])",
                          str(db)], capture_output=True, text=True)
    assert out.stdout.strip() == "1"


def log_pythons(ops) -> tuple[str, str]:
    """From now on each start of the live virtualenv's python is logged ("<user> <first argument>"): the log's
    path and the python's (tests/test_boot_e2e.py's trick)."""
    d = "/srv/sample"
    bin_dir = f"{d}/venvs/" + ops.host.exec(["cat", f"{d}/current/.fabdeploy/venv"]).stdout.strip() + "/bin"
    ops.host.exec(f"mv {bin_dir}/python {bin_dir}/python.real && printf '%s\\n' '#!/bin/sh' "
                  "'echo \"$(id -un) $1\" >> /tmp/pythons/log' 'exec \"$(dirname \"$0\")/python.real\" \"$@\"' "
                  f"> {bin_dir}/python && chmod 755 {bin_dir}/python && mkdir -m 777 /tmp/pythons "
                  "&& : > /tmp/pythons/log && chmod 666 /tmp/pythons/log")
    return "/tmp/pythons/log", f"{bin_dir}/python"


def test_rollback_with_the_migration_record_starts_no_python_and_warns_the_same(ops):
    """Deploy C migrated pages.0002_tag and recorded it (.fabdeploy/migrations.*): --strict still asks C's
    successor's Django (one python start), a plain rollback answers from the records (none) and warns the
    same. The fallback: after `fab manage` (which may migrate) the live record is gone, and a rollback asks
    the target's Django again, with the same warning."""
    rel = f"/srv/sample/releases/{ops.rel['C']}/.fabdeploy"
    assert "pages 0002_tag" in ops.host.path(f"{rel}/migrations.applied").read_text().splitlines()
    assert "pages 0002_tag" not in ops.host.path(
        f"/srv/sample/releases/{ops.rel['B']}/.fabdeploy/migrations.disk").read_text().splitlines()
    assert ok_rollback(ops, "--to", ops.rel["C"]) and current(ops) == ops.rel["C"]
    log, python = log_pythons(ops)
    try:
        res = fab(ops, "rollback", "--strict", "--to", ops.rel["B"])
        assert res.returncode == 1 and "pages.0002_tag" in res.stderr, res.stderr
        assert ops.host.path(log).read_text().split() == ["sample", "-c"]  # the target's Django asked
        ops.host.path(log).write_text("")
        res = ok_rollback(ops, "--to", ops.rel["B"])
        assert re.search(rf"migration pages\.0002_tag that {ops.rel['B']} does not know", res.stdout), res.stdout
        assert ops.host.path(log).read_text() == ""  # no python started: the records answered
        assert current(ops) == ops.rel["B"] and "Version B" in page(ops)
        print("record path:", next(ln for ln in res.stdout.splitlines() if " rollback " in ln))
        # fab manage may migrate: the live record is removed, the next rollback asks Django
        assert fab(ops, "manage", "--", "showmigrations", "pages").returncode == 0
        assert not ops.host.path(f"/srv/sample/releases/{ops.rel['B']}/.fabdeploy/migrations.applied").exists()
        ops.host.path(log).write_text("")
        res = ok_rollback(ops, "--to", ops.rel["A"])
        assert re.search(rf"migration pages\.0002_tag that {ops.rel['A']} does not know", res.stdout), res.stdout
        assert ops.host.path(log).read_text().split() == ["sample", "-c"]
        print("boot path:", next(ln for ln in res.stdout.splitlines() if " rollback " in ln))
        assert ok_rollback(ops, "--to", ops.rel["B"]) and current(ops) == ops.rel["B"]
    finally:
        ops.host.exec(f"mv -f {python}.real {python}")


def ok_rollback(ops, *args):
    res = fab(ops, "rollback", *args)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def start_slow_deploy(ops):
    proc = subprocess.Popen([FAB, "deploy", "--config", "slow.toml"], cwd=ops.proj.root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "XDG_CACHE_HOME": str(ops.cache)})
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the remote side is in the slow hook
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(r"^\S+\s+venv\s", line):  # code and venv done: the django phase (slow hook) is running
            return proc, lines
    proc.kill()
    raise AssertionError("slow deploy did not reach the django phase:\n" + "".join(lines))


def test_concurrent_deploy_gets_the_lock_error_naming_the_holder(ops):
    ops.proj.commit("D", {"pages/message.txt": "Version D\n"})
    slow, _ = start_slow_deploy(ops)
    try:
        res = fab(ops, "deploy")
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert "deploy lock held by" in res.stderr and f"pid {slow.pid}, deploy" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    finally:
        slow.send_signal(signal.SIGINT)
        slow.wait(timeout=60)


def test_ctrl_c_leaves_no_lock_and_the_old_release(ops):
    before = current(ops)
    releases_before = sorted(p.name for p in ops.host.path("/srv/sample/releases").iterdir())
    slow, lines = start_slow_deploy(ops)
    slow.send_signal(signal.SIGINT)
    rest, _ = slow.communicate(timeout=60)
    out = "".join(lines) + rest
    assert slow.returncode != 0
    assert "interrupted during prepare" in out and "Traceback" not in out, out
    assert not lock_path(ops).exists()
    assert current(ops) == before and f"Release: {before}" in page(ops)
    assert sorted(p.name for p in ops.host.path("/srv/sample/releases").iterdir()) == releases_before
    # the remote half was stopped: no `sleep 30` left on the host
    assert not [p for p in ops.host.pids() if "sleep" in ops.host.exec(["cat", f"/proc/{p}/comm"], check=False).stdout]
    assert audit(ops)[-1]["result"] == "interrupted"
    # and the next deploy simply works
    rel = deploy(ops, "E", "Version E")
    assert f"Release: {rel}" in page(ops)


def test_stale_lock_is_reported_and_unlock_breaks_it(ops):
    lock = lock_path(ops)

    def make_lock(holder: str, age: str) -> None:  # as the deploy user, as a crashed run would leave it
        ops.host.exec(f"L=/srv/sample/.fabdeploy-lock; mkdir $L && echo '{holder}' > $L/info && "
                      f"touch -d '{age}' $L", user="deploy")

    make_lock("ghost@elsewhere (pid 999999, deploy, since 2020-01-01T00:00:00Z)", "2 hours ago")
    res = fab(ops, "deploy")
    assert res.returncode == 1 and "STALE" in res.stderr and "ghost@elsewhere" in res.stderr
    assert "fab unlock" in res.stderr
    res = fab(ops, "unlock")
    assert res.returncode == 0 and "removed the lock held by ghost@elsewhere" in res.stdout
    assert not lock.exists()
    # a young lock needs --force
    make_lock("someone@else (pid 1, deploy, since now)", "now")
    res = fab(ops, "unlock")
    assert res.returncode == 1 and "--force" in res.stderr and lock.exists()
    res = fab(ops, "unlock", "--force")
    assert res.returncode == 0 and not lock.exists()


def test_status_reports_the_site(ops):
    res = fab(ops, "status", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    [st] = json.loads(res.stdout)
    assert st["current"] == current(ops)
    assert st["app"]["pid"] and st["app"]["workers"] == 2 and st["app"]["on_current"]
    assert st["nginx"]["pid"] and st["nginx"]["site_enabled"]
    assert st["http"]["status"] == 200
    assert st["disk_free_bytes"] > 0 and st["lock"] is None
    # status shows the last audited run; a deploy refused by the (stale) lock changed nothing on the host,
    # not even the audit log
    last = audit(ops)[-1]
    assert (st["last"]["action"], st["last"]["result"]) == (last["action"], last["result"])
    assert not [a for a in audit(ops) if "STALE" in a.get("error", "") or "lock held" in a.get("error", "")]
    ok = [a for a in audit(ops) if a["result"] == "ok"]
    assert ok[-1]["release"] == current(ops) and ok[-1]["duration"] >= 0
    text = fab(ops, "status").stdout
    assert "uWSGI master" in text and f"http      GET / (Host: {ops.host.address}) -> 200 in" in text


def test_logs_show_each_source(ops):
    ops.host.http("/static/no-such-file.css", host_header=ops.host.address)  # an nginx error-log line
    ops.host.http("/", host_header=ops.host.address)
    res = fab(ops, "logs", "-n", "5")
    assert res.returncode == 0, res.stderr
    for which in ("app", "access", "error"):
        assert re.search(rf"^\S+\s+{which}\s+\| ", res.stdout, re.M), f"no {which} line:\n{res.stdout}"
    res = fab(ops, "logs", "-n", "3", "--which", "access")
    assert res.returncode == 0
    assert {m for m in re.findall(r"^\S+\s+(\w+)\s+\|", res.stdout, re.M)} == {"access"}


def test_logs_follow_streams_new_requests_and_leaves_no_tail(ops):
    proc = subprocess.Popen([FAB, "logs", "-f", "-n", "0", "--which", "access"], cwd=ops.proj.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)  # let the remote tail start
        probe = f"/follow-probe-{os.getpid()}"
        ops.host.http(probe, host_header=ops.host.address)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 20
        while not any(probe in ln for ln in list(lines)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any(probe in ln and "access |" in ln for ln in lines), lines
        assert tails_on(ops), "the remote tail should be running while following"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    assert proc.returncode == 0
    deadline = time.monotonic() + 5
    while tails_on(ops) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tails_on(ops) == []


def tails_on(ops) -> list[int]:
    return [p for p in ops.host.pids()
            if ops.host.exec(["cat", f"/proc/{p}/comm"], check=False).stdout.strip() == "tail"]
