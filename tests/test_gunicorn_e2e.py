"""gunicorn end to end: `[app] server = "gunicorn"` deploys the sample project on one lab host (real fab, sshd,
nginx, gunicorn from the offline wheel). The page is served through nginx's proxy_pass from a unix socket
that is 660 with the nginx group; a deploy that changes the code and the virtualenv, then a rollback, run
under bounded load without a failed request, and once each returns every response names its release (the
master started beside the old one loads the new release and virtualenv); status and logs are sane.

The tests run in order against one host and build on each other.
"""
from __future__ import annotations

import json
import re
import time

import pytest

from e2e_site import D, children, deploy, fab, master, new_site, page, seen_lines, sh, workers
from test_load_e2e import Load, broken_deploy_under_load

GUNICORN = """\
    [app]
    server = "gunicorn"
    [gunicorn]
    workers = 2
    threads = 2
    graceful_timeout = 10
    reload_timeout = 20
    [health]
    path = "/seen"
    """  # (/seen: the sample's view that logs "<pid> <User-Agent> <css> <first>" of every request: the warm-up shows)


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    return new_site(make_host("gunicorn"), tmp_path_factory, wheel_cache, "gunicorn", GUNICORN)


def test_first_deploy_serves_the_page_through_nginx_proxy_pass(site):
    rel, out = deploy(site)
    assert re.search(rf"restart\s+gunicorn started \(master \d+, 2 workers on {rel}\)", out), out
    assert f"Release: {rel}" in page(site)
    conf = site.host.path("/etc/nginx/sites-available/sample")
    if not conf.exists():
        conf = site.host.path("/etc/nginx/conf.d/sample.conf")
    text = conf.read_text()
    assert f"proxy_pass http://unix:{D}/shared/run/gunicorn.sock:;" in text and "uwsgi" not in text
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in text


def test_the_socket_is_660_with_the_nginx_group_and_every_worker_runs_the_release(site):
    assert sh(site, f"stat -c '%F %a %U %G' {D}/shared/run/gunicorn.sock") == "socket 660 sample www-data"  # (the app user)
    pid = master(site, "gunicorn")
    assert sh(site, f"cat /proc/{pid}/comm") == "gunicorn"
    assert workers(site, pid) == [f"{D}/releases/{site.releases[-1]}"] * 2
    # the gthread worker (threads = 2), the release's own config, the production settings
    conf = site.host.path(f"{D}/shared/config/gunicorn.conf.py").read_text()
    assert "worker_class = 'gthread'" in conf and f"chdir = '{D}/releases/{site.releases[-1]}'" in conf
    assert "'DJANGO_SETTINGS_MODULE=fabdeploy_settings'" in conf


def test_the_master_answered_the_warm_up_get_before_its_workers_answered_anything(site):
    """[app] warm_workers: gunicorn preloads the app (the pidfile manager's daemon mode); its config's
    when_ready GETs health.path in the master, in process, before it forks: the workers' answers (the check
    through nginx came after) show the view had already run in their memory (the master's pid), and none of
    them answered a warm-up of its own."""
    m = master(site, "gunicorn")
    lines = seen_lines(site)
    mine = [ln for ln in lines if ln[0] == m]
    assert mine and mine[0][1] == "fabdeploy-warm" and mine[0][3] == m, (m, lines)
    pids = children(site, m)
    served = [ln for ln in lines if ln[0] in pids]
    assert len(pids) == 2 and served and all(ln[3] == m and ln[1] != "fabdeploy-warm" for ln in served), lines
    conf = site.host.path(f"{D}/shared/config/gunicorn.conf.py").read_text()
    assert "def when_ready(server):" in conf and "preload_app = True" in conf
    assert "fabdeploy: warming" not in site.host.path(f"{D}/shared/log/gunicorn.log").read_text()


def test_deploy_and_rollback_under_load_drop_nothing_and_load_the_new_release(site):
    first = site.releases[-1]
    old_master = master(site, "gunicorn")
    sock_inode = sh(site, f"stat -c %i {D}/shared/run/gunicorn.sock")
    old_venv = sh(site, f"readlink {D}/shared/config/gunicorn-venv")
    switches: list[tuple[float, float, str]] = []  # (op started, op returned, release now expected)
    with Load(site.host.address) as load:
        time.sleep(1)
        # new code and a new virtualenv (changed requirements): the new master must load both
        req = (site.proj.src / "requirements.txt").read_text()
        site.proj.commit("second", {"pages/message.txt": "Second revision under gunicorn\n",
                                    "requirements.txt": req + "sqlparse\n"})
        t0 = time.monotonic()
        rel, out = deploy(site)
        switches.append((t0, time.monotonic(), rel))
        # (no process manager: the new release's master starts beside the old one, then the socket swap)
        assert re.search(rf"restart\s+gunicorn started beside {old_master}, swapped \(master \d+, 2 workers on {rel}\)",
                         out), out
        new_master = master(site, "gunicorn")
        new_venv = sh(site, f"readlink {D}/shared/config/gunicorn-venv")
        new_workers = workers(site, new_master)
        time.sleep(2)
        t0 = time.monotonic()
        res = fab(site, "rollback")
        assert res.returncode == 0, res.stdout + res.stderr
        assert re.search(rf"rolled back to {first} in", res.stdout), res.stdout
        assert f"gunicorn swapped to its warm master (master {old_master}, 2 workers on {first})" in res.stdout
        switches.append((t0, time.monotonic(), first))
        time.sleep(2)
    samples = load.samples
    failed = [s for s in samples if s.status is None or not 200 <= s.status < 300]
    assert len(samples) > 50 and failed == [], failed[:5]
    # once an operation returned (and before the next began), every response names its release
    for (_, returned, expected), nxt in zip(switches, switches[1:] + [(float("inf"), 0, "")]):
        window = [s for s in samples if s.start > returned and s.end < nxt[0]]
        assert window, f"no requests observed after the switch to {expected}"
        wrong = [s for s in window if s.release != expected]
        assert wrong == [], f"after switching to {expected}: {wrong[:3]}"
    # a new master (on its own socket), running the new virtualenv, every worker on the release; the rollback
    # put the first master's socket back
    assert new_master != old_master and sh(site, f"stat -c %i {D}/shared/run/gunicorn.sock") == sock_inode
    assert new_venv != old_venv and new_venv == f"{D}/venvs/" + sh(site, f"cat {D}/releases/{rel}/.fabdeploy/venv")
    assert new_workers == [f"{D}/releases/{rel}"] * 2
    # after the rollback: the first release's master (kept warm) serves again, the second one is warm now
    pid = master(site, "gunicorn")
    assert pid == old_master and workers(site, pid) == [f"{D}/releases/{first}"] * 2
    assert sh(site, f"readlink {D}/shared/config/gunicorn-venv") == old_venv
    assert workers(site, new_master) == [f"{D}/releases/{rel}"] * 2
    assert not site.host.path(f"{D}/shared/run/gunicorn.pid.2").exists()
    assert f"Release: {first}" in page(site)


def test_status_and_logs_are_sane(site):
    res = fab(site, "status", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    [st] = json.loads(res.stdout)
    assert st["app"]["server"] == "gunicorn" and st["app"]["pid"] and st["app"]["workers"] == 2
    assert st["app"]["on_current"], st["app"]
    assert st["current"] == site.releases[0] and st["http"]["status"] == 200 and st["nginx"]["site_enabled"]
    assert (st["last"]["action"], st["last"]["result"], st["last"]["release"]) == ("rollback", "ok", site.releases[0])
    text = fab(site, "status").stdout
    assert f"http      GET /seen (Host: {site.host.address}) -> 200 in" in text, text
    assert re.search(r"app       gunicorn master \d+ up, 2 workers$", text, re.M), text
    res = fab(site, "logs", "-n", "20", "--which", "app")
    assert res.returncode == 0, res.stderr
    app_lines = [ln for ln in res.stdout.splitlines() if re.match(r"^\S+\s+app\s+\| ", ln)]
    assert any("Booting worker" in ln for ln in app_lines), res.stdout
    assert "Traceback" not in res.stdout


def test_stop_and_start_work_for_gunicorn_too(site):
    """fab stop / fab start come from the seam (AppServer.stop_lines: the server's stop signal, then wait)."""
    old = master(site, "gunicorn")
    res = fab(site, "stop")
    assert res.returncode == 0 and "gunicorn stopped" in res.stdout, res.stdout + res.stderr
    # (gone, or a zombie its parent has not reaped yet)
    assert sh(site, f"grep -qs '^State:[[:space:]]*[A-Y]' /proc/{old}/status && echo alive || echo gone") == "gone"
    assert not site.host.path(f"{D}/shared/run/gunicorn.pid").exists()
    res = fab(site, "stop")
    assert res.returncode == 0 and "gunicorn already stopped" in res.stdout, res.stdout + res.stderr
    res = fab(site, "start")
    assert res.returncode == 0, res.stdout + res.stderr
    assert master(site, "gunicorn") != old and f"Release: {site.releases[0]}" in page(site)


def test_a_release_that_cannot_load_never_serves_and_is_reverted_under_load(site):
    served = site.releases[0]
    wsgi = (site.proj.src / "sampleproject" / "wsgi.py").read_text()
    # (it imports in the deploy's own check; it fails only in the server, as a missing resource would)
    broken = wsgi + ('\nif os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn"):\n'
                     '    raise RuntimeError("this release cannot load")\n')
    res, out, samples, failed = broken_deploy_under_load(site, fab, broken)
    assert res.returncode != 0, out
    # the new master failed to load the app (preload_app): the old one never stopped serving
    assert re.search(r"restart\s+FAILED", out) and f"reverted to {served}" in out and "Traceback" not in out, out
    log = site.host.path(f"{D}/shared/log/gunicorn.log").read_text()
    assert "this release cannot load" in log and "still serves, untouched" in out
    assert len(samples) > 20 and failed == [], failed[:5]
    assert {s.release for s in samples} == {served}
    assert workers(site, master(site, "gunicorn")) == [f"{D}/releases/{served}"] * 2
