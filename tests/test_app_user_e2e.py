"""The app user end to end (real fab, one real lab host; tests run in order and build on each other): a host
first deployed with the SSH user as the app user ([app] user = "deploy", the old behaviour) is converted by
the next deploy with the default app user (the project name: created by setup), whose uWSGI master and
workers then run as that user; the app cannot write its code or virtualenv but writes media and its
database; the socket is 660 app:www-data; fab status/logs/stop/start/reload/rollback/manage work; under
supervisor the program names the app user."""
from __future__ import annotations

import json
import re
import time
from types import SimpleNamespace

import pytest

from conftest import make_project, release_of, run_fab, sample_config

D = "/srv/sample"
PIDFILE = f"{D}/shared/run/uwsgi.pid"
AS_DEPLOY = '[app]\nuser = "deploy"\n'


@pytest.fixture(scope="module")
def au(make_host, tmp_path_factory, wheel_cache):
    host = make_host("appuser")
    proj = make_project(tmp_path_factory.mktemp("appuser"))
    proj.write_config(sample_config(host, extra=AS_DEPLOY))
    res = run_fab(proj.root, "deploy", cache=wheel_cache)
    assert res.returncode == 0, res.stdout + res.stderr
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache, releases=[release_of(res.stdout)])


def fab(au, *args):
    return run_fab(au.proj.root, *args, cache=au.cache)


def owner(host, path: str) -> str:
    return host.exec(["stat", "-c", "%U:%G:%a", path]).stdout.strip()


def uid_of(host, user: str) -> int:
    return int(host.exec(["id", "-u", user]).stdout)


def uwsgi_uids(host) -> dict[int, int]:
    """Every live uWSGI process of the host: pid -> real uid (/proc/<pid>/status Uid)."""
    out = {}
    for pid in host.pids():
        try:
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            continue
        if re.search(r"^Name:\s+uwsgi$", status, re.M) and not re.search(r"^State:\s+Z", status, re.M):
            out[pid] = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
    return out


def post(host, path: str, body: bytes, ctype: str):
    return host.http(path, host_header=host.address, method="POST", body=body, headers={"Content-Type": ctype})


def test_the_ssh_user_as_the_app_user_keeps_the_old_behaviour(au):
    uids = uwsgi_uids(au.host)
    assert len(uids) == 3 and set(uids.values()) == {uid_of(au.host, "deploy")}
    assert au.host.exec(["id", "sample"], check=False).returncode != 0  # no user created
    assert owner(au.host, f"{D}/releases").startswith("deploy:") and owner(au.host, f"{D}/shared/run") == \
        "deploy:www-data:2750"


def test_a_deploy_with_the_default_app_user_creates_it_and_converts_the_host(au):
    au.proj.write_config(sample_config(au.host))
    au.proj.commit("B", {"pages/message.txt": "Second revision\n"})
    res = fab(au, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    au.releases.append(release_of(res.stdout))
    out = res.stdout + res.stderr
    assert "app user sample created" in out and "owner and modes set on" in out
    assert "ran as deploy: stopped, to start again as the app user sample" in out
    pw = au.host.exec(["getent", "passwd", "sample"]).stdout.strip().split(":")
    assert pw[5] == D and pw[6] == "/usr/sbin/nologin" and int(pw[2]) < 1000  # a system user
    sample = uid_of(au.host, "sample")
    uids = uwsgi_uids(au.host)
    assert len(uids) == 3 and set(uids.values()) == {sample}  # the master and both workers
    for path, want in ((f"{D}/releases", "deploy:sample:2750"), (f"{D}/venvs", "deploy:sample:2750"),
                       (f"{D}/shared/config", "deploy:sample:2750"), (f"{D}/shared/media", "sample:www-data:2750"),
                       (f"{D}/shared/db", "sample:sample:700"), (f"{D}/shared/run", "sample:www-data:2750"),
                       (f"{D}/shared/log", "deploy:sample:2770"), (f"{D}/shared/static", "deploy:www-data:2755"),
                       (f"{D}/shared/secret_key", "deploy:sample:640"),
                       (f"{D}/shared/config/app.env", "deploy:sample:640"),
                       (f"{D}/shared/run/uwsgi.sock", "sample:www-data:660")):
        assert owner(au.host, path) == want, path
    # the old release (deployed as deploy) is readable by the app too: a rollback target
    assert owner(au.host, f"{D}/releases/{au.releases[0]}").split(":")[1] == "sample"
    status, _, body = au.host.http("/", host_header=au.host.address)
    assert status == 200 and b"Second revision" in body


def test_a_second_deploy_converts_nothing(au):
    res = fab(au, "deploy", "--force")
    assert res.returncode == 0, res.stdout + res.stderr
    au.releases.append(release_of(res.stdout))
    out = res.stdout + res.stderr
    assert "owner and modes set on" not in out and "created" not in out and "ran as deploy" not in out
    assert set(uwsgi_uids(au.host).values()) == {uid_of(au.host, "sample")}


def test_the_app_writes_media_and_its_database(au):
    status, _, body = post(au.host, "/notes/add", b"text=hello", "application/x-www-form-urlencoded")
    assert status == 200 and body.strip().isdigit(), body
    status, _, body = post(au.host, "/upload",
                           b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n"
                           b"Content-Type: text/plain\r\n\r\nby the app\r\n--XyZ--\r\n",
                           "multipart/form-data; boundary=XyZ")
    assert status == 200, body
    assert owner(au.host, f"{D}/shared/media/{body.decode().strip()}") == "sample:www-data:640"
    assert owner(au.host, f"{D}/shared/db/default.sqlite3").startswith("sample:")


@pytest.mark.parametrize("path", ["current/pages/views.py", "current/new-file", "venvs/new-file"])
def test_the_app_cannot_write_its_code_or_virtualenv(au, path):
    code = f"open('{D}/{path}', 'a').write('x')"
    res = fab(au, "manage", "--", "shell", "-c", code)
    assert res.returncode != 0
    assert "PermissionError: [Errno 13] Permission denied" in res.stdout + res.stderr, res.stdout + res.stderr
    res = au.host.exec(["sh", "-c", f"echo x >> {D}/{path}"], user="sample", check=False)
    assert res.returncode != 0 and "Permission denied" in res.stderr


def test_fab_manage_runs_as_the_app_user(au):
    res = fab(au, "manage", "--", "shell", "-c", "import os, pwd; print('user=' + pwd.getpwuid(os.getuid())[0])")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "user=sample" in res.stdout
    # bin/manage, run by the deploy user on the host, runs itself again as the app user
    res = au.host.exec([f"{D}/bin/manage", "shell", "-c", "import os; print(os.getuid())"], user="deploy")
    assert res.stdout.strip().splitlines()[-1] == str(uid_of(au.host, "sample"))


def test_status_and_logs_read_what_only_the_app_user_can(au):
    res = fab(au, "status")
    assert res.returncode == 0, res.stdout + res.stderr
    assert au.releases[-1] in res.stdout and "uWSGI master" in res.stdout and "up, 2 workers" in res.stdout
    res = fab(au, "status", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    app = json.loads(res.stdout)[0]["app"]
    assert app["pid"] == int(au.host.path(PIDFILE).read_text()) and app["workers"] == 2 and app["on_current"]
    res = fab(au, "logs", "-n", "5")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Permission denied" not in res.stdout + res.stderr and res.stdout.strip()


def test_stop_start_reload_as_the_app_user(au):
    res = fab(au, "stop")
    assert res.returncode == 0, res.stdout + res.stderr
    assert uwsgi_uids(au.host) == {}
    res = fab(au, "start")
    assert res.returncode == 0, res.stdout + res.stderr
    before = uwsgi_uids(au.host)
    assert len(before) == 3 and set(before.values()) == {uid_of(au.host, "sample")}
    res = fab(au, "reload")
    assert res.returncode == 0, res.stdout + res.stderr
    # (no process manager: a fresh master beside the old one, then the socket swap; the replaced master, of
    # the same release, never kept warm, stops gracefully without the reload waiting for it)
    deadline = time.monotonic() + 30
    while set(before) & set(uwsgi_uids(au.host)) and time.monotonic() < deadline:
        time.sleep(0.2)
    after = uwsgi_uids(au.host)
    assert len(after) == 3 and set(after.values()) == {uid_of(au.host, "sample")}
    assert set(after) != set(before)  # new workers


def test_rollback_as_the_app_user(au):
    res = fab(au, "rollback")
    assert res.returncode == 0, res.stdout + res.stderr
    assert set(uwsgi_uids(au.host).values()) == {uid_of(au.host, "sample")}
    status, _, body = au.host.http("/", host_header=au.host.address)
    assert status == 200 and f"Release: {au.releases[-2]}".encode() in body


def test_under_supervisor_the_program_names_the_app_user(au):
    au.proj.write_config(sample_config(au.host, extra='[app]\nmanager = "supervisor"\n'))
    res = fab(au, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    conf = au.host.path("/etc/supervisor/conf.d/sample.conf").read_text()
    assert "\nuser=sample\n" in conf
    uids = uwsgi_uids(au.host)
    assert len(uids) == 3 and set(uids.values()) == {uid_of(au.host, "sample")}
    status, _, _ = au.host.http("/", host_header=au.host.address)
    assert status == 200


@pytest.fixture(scope="module")
def sd(make_host, tmp_path_factory, wheel_cache):
    """A systemd lab host (systemd its PID 1) running gunicorn under systemd, deployed once."""
    host = make_host("appuser-sd", init="systemd")
    proj = make_project(tmp_path_factory.mktemp("appuser-sd"))
    proj.write_config(sample_config(host, extra='[app]\nserver = "gunicorn"\nmanager = "systemd"\n'
                                                '[gunicorn]\nworkers = 2\n'))
    res = run_fab(proj.root, "deploy", cache=wheel_cache)
    assert res.returncode == 0, res.stdout + res.stderr
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache, releases=[release_of(res.stdout)])


def gunicorn_uids(host) -> dict[int, int]:
    out = {}
    for pid in host.pids():
        try:
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            continue
        if re.search(r"^Name:\s+gunicorn$", status, re.M) and not re.search(r"^State:\s+Z", status, re.M):
            out[pid] = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
    return out


def test_under_systemd_the_unit_names_the_app_user_and_gunicorn_runs_as_it(sd):
    unit = sd.host.path("/etc/systemd/system/sample.service").read_text()
    assert "\nUser=sample\n" in unit
    sample = uid_of(sd.host, "sample")
    main = int(sd.host.systemctl("show", "-p", "MainPID", "--value", "sample.service").stdout.strip())
    uids = gunicorn_uids(sd.host)
    assert len(uids) == 3 and set(uids.values()) == {sample}  # the master and its two workers
    # (MainPID is a pid of the host's own pid namespace: seen from inside it)
    assert sd.host.exec(["stat", "-c", "%U", f"/proc/{main}"]).stdout.strip() == "sample"
    assert owner(sd.host, f"{D}/shared/run/gunicorn.sock") == "sample:www-data:660"
    status, _, body = sd.host.http("/", host_header=sd.host.address)
    assert status == 200 and b"Release" in body


def test_under_systemd_reload_status_and_logs_work_as_the_app_user(sd):
    sd.proj.commit("B", {"pages/message.txt": "Second revision\n"})
    res = run_fab(sd.proj.root, "deploy", cache=sd.cache)
    assert res.returncode == 0, res.stdout + res.stderr
    rel = release_of(res.stdout)
    status, _, body = sd.host.http("/", host_header=sd.host.address)
    assert status == 200 and f"Release: {rel}".encode() in body
    assert set(gunicorn_uids(sd.host).values()) == {uid_of(sd.host, "sample")}
    res = run_fab(sd.proj.root, "status", "--json", cache=sd.cache)
    assert res.returncode == 0, res.stdout + res.stderr
    app = json.loads(res.stdout)[0]["app"]
    assert app["workers"] == 2 and app["on_current"]
    res = run_fab(sd.proj.root, "logs", "-n", "5", cache=sd.cache)
    assert res.returncode == 0 and res.stdout.strip(), res.stdout + res.stderr
