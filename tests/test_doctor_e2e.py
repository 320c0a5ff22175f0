"""`fab doctor` on a real host: one deploy (uWSGI under the pidfile manager, harakiri 3 s, a slow view), then
each test breaks the host in one way, runs the real `fab doctor`, checks that the finding names the cause,
and repairs the host; the healthy host gives "no problems found" and exit 0 (first and last)."""
from __future__ import annotations

import re
import time
from types import SimpleNamespace

import pytest

from conftest import make_project, run_fab, sample_config

D = "/srv/sample"
SOCK = f"{D}/shared/run/uwsgi.sock"
URLS = '''import time

from django.http import HttpResponse
from django.urls import path

from . import views


def slow(request):
    time.sleep(float(request.GET.get("s", "1")))
    return HttpResponse("slow done")


urlpatterns = [
    path("", views.index, name="index"),
    path("health", views.health, name="health"),
    path("slow", slow, name="slow"),
]
'''


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    host = make_host("doctor")
    proj = make_project(tmp_path_factory.mktemp("doctor"))
    proj.commit("a slow view", {"pages/urls.py": URLS})
    proj.write_config(sample_config(host).replace("threads = 2\n", "threads = 2\nharakiri = 3\n"))
    env = SimpleNamespace(host=host, proj=proj, cache=wheel_cache)
    res = fab(env, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    return env


def fab(env, *args):
    return run_fab(env.proj.root, *args, cache=env.cache)


def doctor(env, *needles, ok=False):
    """Run `fab doctor`; it must fail naming every needle (or pass with "no problems found"), never a traceback."""
    res = fab(env, "doctor")
    out = res.stdout + res.stderr
    print(out)
    assert "Traceback" not in res.stderr and not re.search(r"^Traceback", res.stdout, re.M), out
    if ok:
        assert res.returncode == 0 and "no problems found" in res.stdout and "PROBLEM" not in out, out
    else:
        assert res.returncode == 1, out
        for needle in needles:
            assert needle in out, f"{needle!r} not in:\n{out}"
    return out


def serving(env):
    """Wait until the site answers 200 again (after a repair)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if env.host.http("/", host_header=env.host.address)[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the site did not come back"
        time.sleep(0.3)


def clear_logs(env):
    env.host.exec(f": > {D}/shared/log/uwsgi.log; : > /var/log/nginx/sample.error.log")


def background(host, cmd: str) -> int:
    """Start cmd as a daemon on the host; its pid."""
    res = host.exec(f"setsid {cmd} >/dev/null 2>&1 < /dev/null & echo $!")
    pid = int(res.stdout.strip())
    time.sleep(1)
    return pid


def test_a_healthy_host_has_no_problems(site):
    doctor(site, ok=True)


def site_file(env) -> str:
    for path in ("/etc/nginx/sites-available/sample", "/etc/nginx/conf.d/sample.conf"):
        if env.host.path(path).exists():
            return path
    raise AssertionError("no nginx site")


def edit_site(env, old: str, new: str):
    """Replace text in the installed nginx site and reload nginx; returns the undo."""
    path = env.host.path(site_file(env))
    text = path.read_text()
    assert old in text, text
    path.write_text(text.replace(old, new))
    env.host.exec("nginx -s reload")
    time.sleep(1)

    def undo():
        path.write_text(text)
        env.host.exec("nginx -s reload")
        time.sleep(1)
    return undo


def test_another_process_holding_the_socket_path_is_named(site):
    assert fab(site, "stop").returncode == 0
    pid = background(site.host, f"python3 -c \"import socket, time; s = socket.socket(socket.AF_UNIX); "
                           f"s.bind('{SOCK}'); s.listen(); time.sleep(600)\"")
    try:
        doctor(site, "address in use", f"{SOCK} is held by python3 (pid {pid})", f"kill {pid}",
               "uWSGI is not running")
    finally:
        site.host.exec(f"kill {pid}; rm -f {SOCK}", check=False)
    assert fab(site, "start").returncode == 0
    doctor(site, ok=True)


def test_another_process_on_nginx_port_80_is_named(site):
    site.host.exec("nginx -s stop")
    time.sleep(1)
    pid = background(site.host, "python3 -c \"import socket, time; s = socket.socket(); "
                           "s.bind(('0.0.0.0', 80)); s.listen(); time.sleep(600)\"")
    try:
        # (python3 may take more than background's second to bind on a loaded machine: wait for it, 20 s at most)
        for _ in range(100):
            if site.host.exec("ss -Hltn 'sport = :80'", check=False).stdout.strip():
                break
            time.sleep(0.2)
        doctor(site, "port 80 (the nginx site's) is held by python3", f"kill {pid}", "nginx is not running")
    finally:
        site.host.exec(f"kill {pid}", check=False)
        time.sleep(0.5)
        site.host.exec("nginx")
    serving(site)


def test_a_socket_directory_nginx_cannot_enter(site):
    site.host.exec(f"chmod 0750 {D}/shared/run && chgrp sample {D}/shared/run")
    try:
        doctor(site, "socket permission", "cannot connect to the app socket", f"{D}/shared/run is 2750 sample:sample",
               "may not enter it")
    finally:
        site.host.exec(f"chgrp www-data {D}/shared/run && chmod 2750 {D}/shared/run")
    doctor(site, ok=True)


def kill_app(env):
    env.host.exec(f"p=$(cat {D}/shared/run/uwsgi.pid); kill -9 $(ps -o pid= --ppid $p) $p")
    time.sleep(1)


def test_the_app_killed(site):
    kill_app(site)
    try:
        doctor(site, "app down", "uWSGI is not running", "fab start")
    finally:
        clear_logs(site)
        assert fab(site, "start").returncode == 0


def test_a_release_crashing_on_import_shows_the_error(site):
    release = site.host.exec(f"readlink -f {D}/current").stdout.strip()
    wsgi = site.host.path(f"{release}/sampleproject/wsgi.py")
    good = wsgi.read_text()
    wsgi.write_text(good + '\nraise RuntimeError("doctor: broken on purpose")\n')
    try:
        assert fab(site, "restart").returncode != 0
        doctor(site, "app down", "crashed", "RuntimeError: doctor: broken on purpose")
    finally:
        wsgi.write_text(good)
        clear_logs(site)
        assert fab(site, "start").returncode == 0


def test_a_site_passing_requests_elsewhere(site):
    undo = edit_site(site, f"uwsgi_pass unix:{SOCK};", "uwsgi_pass unix:/tmp/elsewhere.sock;")
    try:
        doctor(site, "nginx sends requests to unix:/tmp/elsewhere.sock but uWSGI listens on unix:" + SOCK)
    finally:
        undo()
        clear_logs(site)
    doctor(site, ok=True)


def test_a_slow_view_killed_by_harakiri(site):
    status = site.host.http("/slow?s=8", host_header=site.host.address, timeout=30)[0]
    assert status == 502
    try:
        doctor(site, "1 request(s) killed by uWSGI's timeout ([uwsgi] harakiri)", "GET /slow?s=8")
    finally:
        clear_logs(site)
        serving(site)


def test_static_files_missing_or_unreadable(site):
    static = f"{D}/shared/static"
    site.host.exec(f"mv {static}/current {static}/current.away")
    try:
        doctor(site, "PROBLEM (static)", f"{static}/current/ (location /static/) does not exist")
    finally:
        site.host.exec(f"mv {static}/current.away {static}/current")
    real = site.host.exec(f"readlink -f {static}/current").stdout.strip()
    site.host.exec(f"chmod 0700 {real}")
    try:
        doctor(site, "nginx's user www-data cannot read")
    finally:
        site.host.exec(f"chmod 2755 {real}")
    doctor(site, ok=True)


def test_a_name_not_in_allowed_hosts(site):
    undo = edit_site(site, f"server_name {site.host.address};", f"server_name {site.host.address} other.example;")
    try:
        doctor(site, "Host: other.example", "ALLOWED_HOSTS of the running settings does not contain it")
    finally:
        undo()
    doctor(site, ok=True)


def wait_status(env, want: int):
    deadline = time.monotonic() + 60
    while env.host.http("/", host_header=env.host.address)[0] != want:
        assert time.monotonic() < deadline, f"no {want}"
        time.sleep(0.3)


def test_debug_forced_on_through_the_environment(site):
    # (the live master was started beside: it reads its slot's copy of the ini, appserver/beside.py)
    slot = site.host.path(f"{D}/shared/run/uwsgi.sock.live").read_text().strip()
    ini = site.host.path(f"{D}/shared/config/uwsgi.ini.{slot}")
    good = ini.read_text()
    ini.write_text(good + "env = DJANGO_SETTINGS_MODULE=sampleproject.settings\n")
    site.host.exec(f"kill -HUP $(cat {D}/shared/run/uwsgi.pid)")
    try:
        wait_status(site, 400)  # (the project's own settings: DEBUG on, ALLOWED_HOSTS empty)
        doctor(site, "DEBUG is on in production", "ALLOWED_HOSTS")
    finally:
        ini.write_text(good)
        site.host.exec(f"kill -HUP $(cat {D}/shared/run/uwsgi.pid)")
        wait_status(site, 200)
    clear_logs(site)
    doctor(site, ok=True)


def test_nginx_config_problems(site):
    """Another site claiming the same server_name, a config that fails nginx -t, the site not enabled."""
    other = "/etc/nginx/sites-enabled/zz-other"
    site.host.path(other).write_text(f"server {{ listen 80; server_name {site.host.address}; return 204; }}\n")
    site.host.exec("nginx -s reload")
    try:
        doctor(site, f'conflicting server name "{site.host.address}" on 0.0.0.0:80')
        site.host.path(other).write_text("this is not nginx;\n")  # (not reloaded: nginx keeps its old config)
        doctor(site, "does not pass `nginx -t`", 'unknown directive "this"')
    finally:
        site.host.exec(f"rm -f {other} && nginx -s reload")
    site.host.exec("rm /etc/nginx/sites-enabled/sample && nginx -s reload")
    try:
        doctor(site, "the nginx site /etc/nginx/sites-available/sample is not enabled")
    finally:
        site.host.exec("ln -s /etc/nginx/sites-available/sample /etc/nginx/sites-enabled/sample && nginx -s reload")
    serving(site)
    doctor(site, ok=True)


def test_a_secret_key_readable_by_everyone(site):
    site.host.exec(f"chmod 0644 {D}/shared/secret_key")
    try:
        doctor(site, f"{D}/shared/secret_key is 644", "chmod 0640")
    finally:
        site.host.exec(f"chmod 0640 {D}/shared/secret_key")
    doctor(site, ok=True)


def test_a_host_firewall_dropping_port_80(site):
    site.host.exec("nft add table inet dtest && nft add chain inet dtest input "
                   "'{ type filter hook input priority 0; policy drop; }' && "
                   "nft add rule inet dtest input ct state established,related accept && "
                   "nft add rule inet dtest input iif lo accept && nft add rule inet dtest input tcp dport 22 accept")
    try:
        doctor(site, "the host firewall drops new connections to port 80 (nft table inet dtest, chain input, "
                     "policy drop)")
    finally:
        site.host.exec("nft delete table inet dtest")
    doctor(site, ok=True)


# ---- a second host: gunicorn under systemd (the app server's output in the journal, its own socket and timeout)

GUNICORN_SYSTEMD = """\
    [app]
    server = "gunicorn"
    manager = "systemd"
    [gunicorn]
    workers = 2
    timeout = 3
    """


@pytest.fixture(scope="module")
def gsite(make_host, tmp_path_factory, wheel_cache):
    host = make_host("doctor-g", init="systemd")
    proj = make_project(tmp_path_factory.mktemp("doctor-g"))
    proj.commit("a slow view", {"pages/urls.py": URLS})
    proj.write_config(sample_config(host, extra=GUNICORN_SYSTEMD))
    env = SimpleNamespace(host=host, proj=proj, cache=wheel_cache)
    res = fab(env, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    return env


def test_gunicorn_under_systemd_healthy_then_its_socket_directory(gsite):
    doctor(gsite, ok=True)
    gsite.host.exec(f"chmod 0700 {D}/shared/run")
    try:
        doctor(gsite, "cannot connect to the app socket /srv/sample/shared/run/gunicorn.sock",
               f"{D}/shared/run is 2700 sample:www-data", "may not enter it")
    finally:
        gsite.host.exec(f"chmod 2750 {D}/shared/run")
    doctor(gsite, ok=True)


def test_gunicorn_worker_timeout_read_from_the_journal(gsite):
    status = gsite.host.http("/slow?s=8", host_header=gsite.host.address, timeout=30)[0]
    assert status in (500, 502)  # (the worker aborted mid-request answers 500, a killed one 502)
    doctor(gsite, "killed by gunicorn's timeout ([gunicorn] timeout)", "WORKER TIMEOUT")


# ---- a fleet: one app host (uWSGI over TCP, no nginx) behind one balancer

@pytest.fixture(scope="module")
def fleet(make_host, tmp_path_factory, wheel_cache):
    app, lb = make_host("doctor-app"), make_host("doctor-lb")
    proj = make_project(tmp_path_factory.mktemp("doctor-fleet"))
    text = sample_config(lb).replace(f'hosts = ["{lb.ssh_target()}"]\n', "")
    proj.write_config(text + f'[roles]\napp = ["{app.ssh_target()}"]\nlb = ["{lb.ssh_target()}"]\n')
    env = SimpleNamespace(host=lb, app=app, proj=proj, cache=wheel_cache)
    res = fab(env, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    return env


def test_a_fleet_healthy_then_another_process_on_the_app_port(fleet):
    doctor(fleet, ok=True)
    assert fab(fleet, "stop").returncode == 0
    pid = background(fleet.app, "python3 -c \"import socket, time; s = socket.socket(); "
                                "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 8001)); s.listen(); time.sleep(600)\"")
    try:
        out = doctor(fleet, f"is held by python3 (pid {pid}), not uWSGI", "uWSGI is not running")
        assert out.index(fleet.app.address) < out.index("address in use")  # (named under the app host)
    finally:
        fleet.app.exec(f"kill {pid}", check=False)
    assert fab(fleet, "start").returncode == 0
    doctor(fleet, ok=True)
