"""ASGI end to end on one lab host (real fab, sshd, nginx; the servers from the offline wheels): the sample
project first runs under uWSGI, then the same host is switched, one deploy each, to gunicorn with uvicorn's
worker (`[app] asgi`), uvicorn, hypercorn and daphne. Each switch stops the previous server (master and
workers gone, its pidfile and socket removed); each server serves the async view through nginx from its
660 socket with every worker in the release, reloads (`fab reload`: every worker on the release; a new set of
workers where the server reloads gracefully), stops and starts (uvicorn: a release whose ASGI app fails to
import is refused under load, the previous one serving throughout); WebSockets pass through nginx (a stdlib
client: handshake, one masked text frame, the echo).

The tests run in order against one host and build on each other.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import time
from types import SimpleNamespace

import pytest

from conftest import make_project, release_of, run_fab, sample_config
from test_load_e2e import Load

D = "/srv/sample"
ASGI = 'asgi = "sampleproject.asgi:application"\n'
CONFIGS = {
    "gunicorn": '[app]\nserver = "gunicorn"\n' + ASGI + "[gunicorn]\nworkers = 2\ngraceful_timeout = 5\nreload_timeout = 30\n",
    "uvicorn": '[app]\nserver = "uvicorn"\n' + ASGI + "[uvicorn]\nworkers = 2\ngraceful_timeout = 5\nreload_timeout = 30\n",
    "hypercorn": '[app]\nserver = "hypercorn"\n' + ASGI + "[hypercorn]\nworkers = 2\ngraceful_timeout = 5\nreload_timeout = 30\n",
    "daphne": '[app]\nserver = "daphne"\n' + ASGI + "[daphne]\nreload_timeout = 30\n",
}


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    host = make_host("asgi")
    proj = make_project(tmp_path_factory.mktemp("asgi"))
    # uvicorn speaks WebSocket through the websockets package (hypercorn and daphne bring their own)
    req = (proj.src / "requirements.txt").read_text()
    proj.commit("websockets", {"requirements.txt": req + "websockets\n"})
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache, server="uwsgi", releases=[])


def fab(site, *args):
    return run_fab(site.proj.root, *args, cache=site.cache)


def ok(res) -> str:
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    return out


def sh(site, command: str) -> str:
    return site.host.exec(command).stdout.strip()


def use(site, server: str) -> None:
    site.proj.write_config(sample_config(site.host, extra=CONFIGS.get(server, "")))
    site.server = server


def deploy(site) -> tuple[str, str]:
    out = ok(fab(site, "deploy"))
    site.releases.append(release_of(out))
    return site.releases[-1], out


def master(site) -> int:
    return int(site.host.path(f"{D}/shared/run/{site.server}.pid").read_text())


def workers(site, pid: int) -> dict[int, str]:
    """The master's workers (children named like it; daphne: the master itself) and the cwd of each."""
    if site.server == "daphne":
        kids = [str(pid)]
    else:
        kids = sh(site, f"for c in $(grep -l '^PPid:[[:space:]]*{pid}$' /proc/[0-9]*/status | cut -d/ -f3); do "
                        f"grep -qsx {site.server} /proc/$c/comm && echo $c; done; true").split()
    return {int(k): sh(site, f"readlink /proc/{k}/cwd") for k in kids}


def uid(site, pid: int) -> str:
    """A process's real uid (/proc/<pid>/status Uid)."""
    return sh(site, f"sed -n 's/^Uid:[[:space:]]*\\([0-9]*\\).*/\\1/p' /proc/{pid}/status")


def gone(site, pid: int) -> bool:
    return sh(site, f"grep -qs '^State:[[:space:]]*[A-Y]' /proc/{pid}/status && echo alive || echo gone") == "gone"


def async_view(site) -> dict:
    status, _, body = site.host.http("/async/", host_header=site.host.address)
    assert status == 200, body[:500]
    return json.loads(body)


def websocket_echo(site, text: str) -> str:
    """One WebSocket round trip through nginx with the stdlib: the upgrade handshake, one masked text frame,
    the server's unmasked answer, a close frame."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection((site.host.address, 80), timeout=10) as s:
        s.sendall((f"GET /ws/echo HTTP/1.1\r\nHost: {site.host.address}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, f"connection closed during the handshake: {head!r}"
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].split(" ")[1] == "101", lines
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        assert headers["sec-websocket-accept"] == accept.decode(), headers
        payload, mask = text.encode(), os.urandom(4)
        assert len(payload) < 126
        s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        data = rest
        while len(data) < 2 or len(data) < 2 + (data[1] & 0x7F):
            chunk = s.recv(4096)
            assert chunk, f"connection closed before the echo: {data!r}"
            data += chunk
        assert data[0] == 0x81 and not data[1] & 0x80 and data[1] & 0x7F < 126, data  # FIN text, unmasked
        answer = data[2:2 + data[1]].decode()
        s.sendall(bytes([0x88, 0x80]) + os.urandom(4))  # close (masked, no payload)
    return answer


def test_a_host_switched_from_uwsgi_to_gunicorn_asgi_stops_uwsgi_and_serves_the_async_view(site):
    use(site, "uwsgi")
    deploy(site)
    old = master(site)
    old_workers = sh(site, f"grep -l '^PPid:[[:space:]]*{old}$' /proc/[0-9]*/status | cut -d/ -f3").split()
    assert len(old_workers) == 2
    use(site, "gunicorn")
    rel, out = deploy(site)
    assert re.search(rf"restart\s+uwsgi stopped \(master {old} and 2 workers gone\)", out), out
    assert gone(site, old) and all(gone(site, int(w)) for w in old_workers)
    assert not site.host.path(f"{D}/shared/run/uwsgi.pid").exists()
    assert not site.host.path(f"{D}/shared/run/uwsgi.sock").exists()
    conf = site.host.path(f"{D}/shared/config/gunicorn.conf.py").read_text()
    assert "worker_class = 'uvicorn_worker.UvicornWorker'" in conf
    assert "wsgi_app = 'sampleproject.asgi:application'" in conf
    view = async_view(site)
    assert view["release"] == rel and view["async"] and view["cwd"] == f"{D}/releases/{rel}"
    assert sh(site, f"ls {D}/venvs/$(cat {D}/releases/{rel}/.fabdeploy/venv)/lib/python3*/site-packages "
                    "| grep -c '^uvicorn_worker$'") == "1"


def check_server(site, reload: str) -> None:
    """The served release's async view, the socket, every worker on the release; fab reload (reload "signal":
    a new set of workers under the same master; "beside": gunicorn's new master started beside the live one
    under the pidfile manager, the socket swapped (README "Start beside, swap, keep warm"); "restart":
    daphne's stop and start), fab stop (twice), fab start."""
    rel, name = site.releases[-1], site.server
    sock = f"{D}/shared/run/{name}.sock"
    assert sh(site, f"stat -c '%F %a %U:%G' {sock}") == "socket 660 sample:www-data"
    pid = master(site)
    assert sh(site, f"cat /proc/{pid}/comm") == name
    before = workers(site, pid)
    want = 1 if name == "daphne" else 2
    assert list(before.values()) == [f"{D}/releases/{rel}"] * want, before
    # the master and every worker run as the app user (the default: the project name), never the SSH user
    sample = sh(site, "id -u sample")
    assert {p: uid(site, p) for p in {pid, *before}} == {p: sample for p in {pid, *before}}
    assert sh(site, f"stat -c %U:%G {D}/shared/log/{name}.log") == "sample:sample"  # (the app's own)
    view = async_view(site)
    assert view["release"] == rel and view["cwd"] == f"{D}/releases/{rel}" and view["pid"] in before

    with Load(site.host.address) as load:  # (a graceful reload fails no request; daphne's restart may)
        out = ok(fab(site, "reload"))
    if reload != "restart":
        failed = [s for s in load.samples if s.status is None or not 200 <= s.status < 300]
        assert load.samples and failed == [], failed[:5]
    after_pid = master(site)
    after = workers(site, after_pid)
    assert list(after.values()) == [f"{D}/releases/{rel}"] * want, after
    if reload == "signal":
        assert re.search(rf"reload\s+{name} reloaded \(master {pid}, {want} workers on {rel}\)", out), out
        assert after_pid == pid and not set(after) & set(before)
        assert all(gone(site, w) for w in before)
    elif reload == "beside":
        assert re.search(rf"reload\s+{name} started beside {pid}, swapped \(master {after_pid}, {want} workers on "
                         rf"{rel}\)", out), out
        # the replaced master (the same release: never kept warm) stops gracefully; the reload does not wait
        deadline = time.monotonic() + 30
        while not (gone(site, pid) and all(gone(site, w) for w in before)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert after_pid != pid and gone(site, pid) and all(gone(site, w) for w in before)
    else:
        # (under load daphne never exits on SIGTERM: killed after application_close_timeout + 5 s)
        assert re.search(rf"{name} stopped \(master {pid} and 0 workers gone(, killed after 15s)?\); {name} "
                         rf"restarted \(master \d+, 1 workers on {rel}\)", out), out
        assert after_pid != pid and gone(site, pid)
    assert async_view(site)["release"] == rel

    out = ok(fab(site, "stop"))
    assert f"{name} stopped" in out and gone(site, after_pid) and all(gone(site, w) for w in after)
    assert not site.host.path(f"{D}/shared/run/{name}.pid").exists()
    assert "already stopped" in ok(fab(site, "stop"))
    ok(fab(site, "start"))
    started = master(site)
    assert started != after_pid and async_view(site)["release"] == rel
    assert sh(site, f"stat -c '%a' {sock}") == "660"
    ok(fab(site, "restart"))
    assert master(site) != started and gone(site, started) and async_view(site)["release"] == rel
    # nothing changed: the next deploy finds every worker of the live master on the release
    assert "already live" in ok(fab(site, "deploy"))


def test_gunicorn_with_uvicorns_worker_reloads_stops_starts_and_passes_websockets(site):
    check_server(site, "beside")
    assert websocket_echo(site, "hello gunicorn") == f"{site.releases[-1]}: hello gunicorn"


def traceback_ends(logs: str) -> list[str]:
    """The exception named at the end of each traceback in `fab logs` output (the tail of the log: a traceback
    cut at the window's start shows its end only, and has no start to count)."""
    lines = [re.sub(r"^\S+\s+app\s+\| ", "", ln) for ln in logs.splitlines()]
    ends = []
    for i, ln in enumerate(lines):
        if ln.startswith("Traceback (most recent call last)"):
            end = next((x for x in lines[i + 1:] if x and not x[0].isspace()), "(cut)")
            ends.append(end.split(":")[0])
    return ends


@pytest.mark.parametrize("server,reload", [("uvicorn", "signal"), ("hypercorn", "signal"), ("daphne", "restart")])
def test_each_asgi_server_takes_over_the_host_serves_reloads_stops_starts_and_passes_websockets(site, server,
                                                                                                  reload):
    previous = site.server
    old = master(site)
    use(site, server)
    rel, out = deploy(site)
    assert re.search(rf"restart\s+{previous} stopped \(master {old} and", out), out
    assert re.search(rf"stopped \(master {old} and \d+ workers gone\); {server} started \(master \d+, {1 if server == 'daphne' else 2} workers on {rel}\)",
                     out), out
    assert gone(site, old) and not site.host.path(f"{D}/shared/run/{previous}.pid").exists()
    assert not site.host.path(f"{D}/shared/run/{previous}.sock").exists()
    live = site.host.path(f"{D}/shared/config/fabdeploy_{server}.py").read_text()
    assert f"RELEASE = '{D}/releases/{rel}'" in live and re.search(rf'^# run: "\$V"/bin/{server} ', live, re.M)
    check_server(site, reload)
    assert websocket_echo(site, f"hello {server}") == f"{rel}: hello {server}"
    res = fab(site, "status", "--json")
    ok(res)
    [st] = json.loads(res.stdout)
    assert st["app"]["server"] == server and st["app"]["on_current"], st["app"]
    assert st["app"]["workers"] == (1 if server == "daphne" else 2) and st["http"]["status"] == 200
    logs = ok(fab(site, "logs", "-n", "50", "--which", "app"))
    # (daphne's restart under the load above aborts requests in flight: Django logs each RequestAborted with its
    # traceback; any other traceback is a failure)
    assert [ln for ln in logs.splitlines() if re.match(r"^\S+\s+app\s+\| ", ln)], logs
    allowed = {"django.core.exceptions.RequestAborted"} if server == "daphne" else set()
    assert set(traceback_ends(logs)) <= allowed and logs.count("Traceback") == logs.count("Traceback (most"), logs
    FOLLOW_UP.get(server, lambda site: None)(site)


def new_code_reloads_gracefully_and_rolls_back(site):
    """uvicorn: a deploy of new code is SIGHUP (the same master and socket, new workers in the new release),
    and so is the rollback."""
    first, pid = site.releases[-1], master(site)
    inode = sh(site, f"stat -c %i {D}/shared/run/uvicorn.sock")
    site.proj.commit("second", {"pages/message.txt": "Second revision under uvicorn\n"})
    with Load(site.host.address) as load:
        rel, out = deploy(site)
        assert re.search(rf"restart\s+uvicorn reloaded \(master {pid}, 2 workers on {rel}\)", out), out
        assert async_view(site)["release"] == rel and master(site) == pid
        assert list(workers(site, pid).values()) == [f"{D}/releases/{rel}"] * 2
        out = ok(fab(site, "rollback"))
    failed = [s for s in load.samples if s.status is None or not 200 <= s.status < 300]
    assert len(load.samples) > 20 and failed == [], failed[:5]
    assert {s.release for s in load.samples} == {first, rel}
    assert re.search(rf"uvicorn reloaded \(master {pid}, 2 workers on {first}\)", out), out
    assert async_view(site)["release"] == first and list(workers(site, pid).values()) == [f"{D}/releases/{first}"] * 2
    assert sh(site, f"stat -c %i {D}/shared/run/uvicorn.sock") == inode


def a_changed_command_line_restarts(site):
    """hypercorn: a deploy that changes the server's own options cannot be a SIGHUP (the master keeps its
    command line): a stop and a start, on the new options."""
    pid = master(site)
    site.proj.write_config(sample_config(site.host, extra=CONFIGS["hypercorn"].replace("workers = 2", "workers = 3")))
    rel, out = deploy(site)
    assert re.search(rf"hypercorn stopped \(master {pid} and 2 workers gone\); hypercorn restarted \(master \d+, "
                     rf"3 workers on {rel}\)", out), out
    assert gone(site, pid) and list(workers(site, master(site)).values()) == [f"{D}/releases/{rel}"] * 3
    assert async_view(site)["release"] == rel


def a_release_whose_app_fails_to_import_is_refused(site):
    """uvicorn: a release whose ASGI application raises on import (Django's checks pass: they never import
    asgi.py) gets no worker up: uvicorn brings each new worker into service before it retires an old one and
    aborts its reload when one is not ready, so the previous release serves throughout; the deploy fails in
    one line and the health gate reverts `current`."""
    good = async_view(site)["release"]
    asgi = (site.proj.src / "sampleproject" / "asgi.py").read_text()
    site.proj.commit("broken", {"sampleproject/asgi.py": "raise RuntimeError('broken on purpose')\n" + asgi})
    site.proj.write_config(sample_config(site.host, extra=CONFIGS["uvicorn"].replace("reload_timeout = 30",
                                                                                   "reload_timeout = 10")))
    try:
        with Load(site.host.address) as load:
            res = fab(site, "deploy")
    finally:
        site.proj.commit("fixed", {"sampleproject/asgi.py": asgi})
        use(site, "uvicorn")
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "Traceback" not in out, out
    assert re.search(r"restart\s+FAILED", res.stdout), out
    [err] = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert re.search(rf"health check failed: .*; reverted to {good} \(GET / \(Host: [^)]+\) -> 200\); the new "
                     "release is marked bad", err), err
    assert site.host.path(f"{D}/current").resolve().name == good
    assert async_view(site)["release"] == good
    assert list(workers(site, master(site)).values()) == [f"{D}/releases/{good}"] * 2
    # the previous release kept serving: no request failed, none reached the broken one
    assert load.samples and {(s.status, s.release) for s in load.samples} == {(200, good)}, \
        sorted({(s.status, s.release, s.error) for s in load.samples}, key=str)[:5]


FOLLOW_UP = {"uvicorn": lambda site: (new_code_reloads_gracefully_and_rolls_back(site),
                                      a_release_whose_app_fails_to_import_is_refused(site)),
             "hypercorn": a_changed_command_line_restarts}


def test_two_fabdeploy_sites_with_websocket_maps_pass_nginx_t_on_one_host(site):
    from fabdeploy.config import parse_config
    from fabdeploy.front.nginx import nginx_site
    other = parse_config({"project": {"name": "other", "django_settings": "x.settings", "wsgi": "x.wsgi:application"},
                          "paths": {"deploy_to": "/srv/other"}, "app": {"server": "uvicorn", "asgi": "x.asgi:app"},
                          "nginx": {"server_name": "other.example", "listen": 80}})
    path = "/etc/nginx/sites-enabled/other"
    site.host.path(path).write_text(nginx_site(other))
    try:
        assert "$fabdeploy_sample_upgrade" in site.host.path("/etc/nginx/sites-available/sample").read_text()
        res = site.host.exec("nginx -t", check=False)
        assert res.returncode == 0, res.stderr
    finally:
        site.host.path(path).unlink()
