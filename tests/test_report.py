"""`fab status` / `fab releases`: formatting and drift detection, and their two remote programs run for real
by this interpreter on a host layout in a temp dir (every host path a parameter)."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fabdeploy.appserver.uwsgi import UWSGI as UwsgiServer
from fabdeploy.config import parse_config
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.roles import Server
from fabdeploy.ops import report, report_text
from fabdeploy.remote.runner import RunResult
from fabdeploy.steps import lock
from fabdeploy.steps.health import check_spec

UP = {"app": {"pid": 5, "workers": 2, "on_current": True}, "nginx": {"pid": 7, "site_enabled": True},
      "http": {"ok": True, "status": 200, "answer": "GET / (Host: a.test) -> 200", "ms": 5, "error": ""}, "disk_free_bytes": 1 << 30, "lock": None, "last": None,
      "revision": "abcdef1234567", "branch": "main"}


def test_drift_only_when_hosts_differ():
    same = [{"host": "a", "current": "R1", **UP}, {"host": "b", "current": "R1", **UP}]
    assert report_text.drift(same) == ""
    differ = same + [{"host": "c", "current": "R2", **UP}, {"host": "d", "error": "unreachable"}]
    assert report_text.drift(differ) == "DRIFT: hosts are not on the same release: a=R1, b=R1, c=R2"
    assert report_text.format_status(differ).endswith(report_text.drift(differ))


def test_status_lines_and_health():
    down = {"host": "b", "current": "", **UP, "app": {"pid": None, "workers": 0, "on_current": False},
            "http": {"status": None, "ms": 3, "error": "refused"}}
    text = report_text.format_status([{"host": "a", "current": "R1", **UP}, down, {"host": "c", "error": "boom"}])
    assert "  release   R1  (abcdef1234, main)" in text and "uWSGI master 5 up, 2 workers" in text
    assert "uWSGI DOWN" in text and "http      FAILED: refused" in text and "c\n  error: boom" in text
    assert report_text.healthy({"host": "a", "current": "R1", **UP})
    assert not report_text.healthy(down) and not report_text.healthy({"host": "c", "error": "x"})
    five = {"host": "a", "current": "R1", **UP, "http": {"ok": False, "status": 502, "ms": 1, "error": "",
                                                          "answer": "GET / (Host: a.test) -> 502"}}
    assert not report_text.healthy(five)
    assert "  http      GET / (Host: a.test) -> 200 in 5 ms" in text


def test_unhealthy_says_why():
    bad = {"ok": False, "status": 400, "ms": 1, "error": "",
           "answer": "GET / (Host: a.test) -> 400: Bad Request; does ALLOWED_HOSTS ..."}
    rep = {"host": "a", "current": "R1", **UP, "http": bad}
    assert report_text.unhealthy(rep) == "http: GET / (Host: a.test) -> 400: Bad Request; does ALLOWED_HOSTS ..."
    assert "  http      UNHEALTHY: GET / (Host: a.test) -> 400: Bad Request" in report_text.format_status([rep])
    assert report_text.unhealthy({"host": "a", "current": "R1", **UP}) == ""
    assert report_text.unhealthy({"host": "c", "error": "unreachable"}) == "unreachable"
    down = {**UP, "app": {"pid": None, "workers": 0, "on_current": False}}
    assert report_text.unhealthy(down) == "uWSGI is down"
    assert report_text.unhealthy({**UP, "nginx": {"pid": None, "site_enabled": True}}) == "nginx is down"


def test_releases_table():
    rel = {"id": "20260101T000000Z-abcdef0", "revision": "a" * 40, "branch": "", "deployed_at": "t",
           "deployed_by": "me@box", "status": "current", "venv_present": False}
    text = report_text.format_releases([{"host": "a", "releases": [rel]}, {"host": "b", "releases": []}])
    lines = text.splitlines()
    assert lines[0] == "a" and lines[1].split() == ["RELEASE", "REVISION", "BRANCH", "DEPLOYED", "AT", "DEPLOYED",
                                                    "BY", "STATUS", "VENV"]
    assert lines[2].split() == ["20260101T000000Z-abcdef0", "aaaaaaaaaa", "-", "t", "me@box", "current", "removed"]
    assert lines[3:] == ["b", "  no releases"]


# --- the two remote programs, run for real by this interpreter on a layout in a temp dir ------------------------

R0, R1, R2, R3 = (f"2026010{i}T000000Z-abcdef{i}" for i in range(4))
OWNER = "alice@box (pid 7, deploy, since 2026-01-04T00:00:00Z)"


def make_cfg(deploy_to):
    return parse_config({"project": {"name": "shop", "django_settings": "shop.settings",
                                     "wsgi": "shop.wsgi:application", "python": sys.executable},
                         "paths": {"deploy_to": str(deploy_to)}})


def meta(**fields) -> str:
    return json.dumps({"revision": "", "branch": "", "deployed_at": "", "deployed_by": "", **fields})


@pytest.fixture
def site(tmp_path):
    """A host's deploy_to as deploys leave it: R0 ok (its virtualenv removed), R1 bad, R2 never live, R3 current;
    an audit log, a secret key, the deploy lock held, the balancer's static link."""
    cfg = make_cfg(tmp_path / "srv" / "shop")
    lay = Layout(cfg.paths.deploy_to)
    for rid, extra in ((R0, {}), (R1, {"bad": ""}), (R2, {"pending": ""}), (R3, {})):
        d = Path(lay.release(rid)) / ".fabdeploy"
        d.mkdir(parents=True)
        n = rid[-1]
        (d / "release.json").write_text(meta(revision=n * 40, branch="main", deployed_at=f"t{n}",
                                             deployed_by="me@box", **({"venv": f"V{n}"} if rid != R1 else {})))
        (d / "venv").write_text(f"V{n}\n")
        for name, text in extra.items():
            (d / name).write_text(text)
    for v in ("V1", "V2", "V3"):
        (Path(lay.venv(v))).mkdir(parents=True)
        (Path(lay.venv(v)) / ".fabdeploy-complete").touch()
    (Path(lay.releases) / "not-a-release").mkdir()
    os.symlink(lay.release(R3), lay.current)
    Path(lay.log).mkdir(parents=True)
    Path(lock.audit_file(cfg)).write_text("\n".join([json.dumps({"action": "deploy", "release": R2}), "not json",
                                                      json.dumps({"action": "deploy", "release": R3, "who": "me",
                                                                  "result": "ok", "time": "t3"})]) + "\n")
    Path(lay.secret_key).write_text("k3y\n")
    Path(lay.static, R3).mkdir(parents=True)
    os.symlink(f"{lay.static}/{R3}", f"{lay.static}/current")
    Path(lock.lock_dir(cfg)).mkdir()
    Path(lock.lock_dir(cfg), "info").write_text(OWNER + "\n")
    return cfg, lay, tmp_path


def run_program(cfg, code: str, params: dict) -> dict:
    """As `fab releases`/`fab status` run it (report._program's command, in sh), read as the runner reads it."""
    proc = subprocess.run(report._program(cfg, code, params).command(), shell=True, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return RunResult(proc.returncode, {}, proc.stdout, proc.stderr, "h").json()


def test_report_programs_get_every_host_path_as_a_parameter():
    for code in (report.RELEASES_PY, report.STATUS_PY):
        for literal in ("/shared", "/releases", "/venvs", "/current", ".fabdeploy-lock", "audit.jsonl", "/etc/nginx",
                        "/run/nginx.pid", "shared/secret_key", "uwsgi.pid", ', "uwsgi")', "release.json", "D + "):
            assert literal not in code, literal


def test_releases_program_lists_each_release_with_its_status(site):
    cfg, lay, _ = site
    got = run_program(cfg, report.RELEASES_PY, report.releases_params(cfg))

    def rel(rid, status, venv, present):
        n = rid[-1]
        return {"id": rid, "revision": n * 40, "branch": "main", "deployed_at": f"t{n}", "deployed_by": "me@box",
                "status": status, "venv": venv, "venv_present": present}
    assert got == {"current": R3, "releases": [rel(R3, "current", "V3", True), rel(R2, "never live", "V2", True),
                                               rel(R1, "bad", "V1", True), rel(R0, "ok", "V0", False)],
                   "audit": [{"action": "deploy", "release": R2},
                             {"action": "deploy", "release": R3, "who": "me", "result": "ok", "time": "t3"}]}


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_port():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture
def app_server(site):
    """A master named like the app server (its process name) with two workers, started in the current release;
    its pid in the app server's pidfile."""
    cfg, lay, tmp = site
    exe = tmp / "bin" / UwsgiServer.process
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nsleep 60 & sleep 60 & wait\n")
    exe.chmod(0o755)
    proc = subprocess.Popen([str(exe)], cwd=lay.current, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(report_children(proc.pid)) < 2:
        time.sleep(0.05)
    Path(lay.run).mkdir(parents=True)
    Path(UwsgiServer().paths(lay).pidfile).write_text(f"{proc.pid}\n")
    yield proc.pid
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def report_children(pid: int) -> list[str]:
    return [d for d in os.listdir("/proc") if d.isdigit() and f"\nPPid:\t{pid}\n" in _read(f"/proc/{d}/status")]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def status_params(cfg, tmp, role: str, port: int) -> dict:
    server = Server("127.0.0.1", role)
    spec = {**check_spec(cfg, "127.0.0.1", server), "proto": "http", "addr": "127.0.0.1", "port": port}
    params = report.status_params(cfg, server, spec)
    # this machine's own nginx is not the host's: its config and site paths are parameters too
    (tmp / "nginx.conf").write_text(f"user www-data;\npid {tmp}/nginx.pid;\n")
    (tmp / "conf.d").mkdir(exist_ok=True)
    (tmp / "conf.d" / "shop.conf").touch()
    return {**params, "nginx_conf": str(tmp / "nginx.conf"),
            "site_enabled": [str(tmp / "sites-enabled" / "shop"), str(tmp / "conf.d" / "shop.conf")]}


def test_status_params_come_from_layout_lock_and_nginx_site_paths(site):
    cfg, lay, _ = site
    p = report.status_params(cfg, Server("h", "app"), {"hosts": []})
    assert (p["current"], p["releases"], p["venvs"], p["pidfile"], p["secret_key"], p["static_current"]) == (
        lay.current, lay.releases, lay.venvs, UwsgiServer().paths(lay).pidfile, lay.secret_key, lay.static + "/current")
    assert (p["audit"], p["lock"], p["lock_info"]) == (lock.audit_file(cfg), lock.lock_dir(cfg),
                                                       lock.lock_dir(cfg) + "/info")
    assert p["site_enabled"] == ["/etc/nginx/sites-enabled/shop", "/etc/nginx/conf.d/shop.conf"]
    assert (p["app_process"], p["nginx_conf"], p["nginx_pid"]) == ("uwsgi", "/etc/nginx/nginx.conf", "/run/nginx.pid")


def test_status_program_reports_an_app_host(site, app_server, http_port):
    cfg, lay, tmp = site
    got = run_program(cfg, report.STATUS_PY, status_params(cfg, tmp, "app", http_port))
    assert list(got) == ["current", "revision", "branch", "app", "nginx", "role", "nginx_expected", "secret_key_fp",
                         "http", "disk_free_bytes", "tls", "lock", "last"]
    assert got["tls"] == {}  # (no TLS: no certificate line)
    assert (got["current"], got["revision"], got["branch"]) == (R3, "3" * 40, "main")
    assert got["app"] == {"server": "uWSGI", "manager": "pidfile", "running_under": "pidfile", "manager_state": "",
                          "pid": app_server, "workers": 2, "on_current": True}
    assert got["nginx"] == {"pid": None, "site_enabled": True}
    assert (got["role"], got["nginx_expected"]) == ("app", True)
    assert got["secret_key_fp"] == hashlib.sha256(b"fabdeploy-secret-key:k3y").hexdigest()[:16]
    http = got["http"]
    assert (http["ok"], http["status"], http["answer"], http["via"], http["error"]) == (
        True, 200, "GET / (Host: 127.0.0.1) -> 200", "http", "")
    assert got["lock"]["holder"] == OWNER and got["lock"]["age_s"] >= 0
    assert got["last"]["release"] == R3 and isinstance(got["disk_free_bytes"], int)
    text = report_text.format_status([{"host": "h", **got}])
    assert f"  app       uWSGI master {app_server} up, 2 workers" in text
    assert f"  lock      held by {OWNER} for " in text and "site enabled" in text


def test_status_program_reports_a_balancer(site, http_port):
    cfg, lay, tmp = site
    got = run_program(cfg, report.STATUS_PY, status_params(cfg, tmp, "lb", http_port))
    assert "secret_key_fp" not in got and got["static"] == R3 and got["role"] == "lb"
    assert got["app"] == {"server": "uWSGI", "manager": "pidfile", "running_under": "", "manager_state": "",
                          "pid": None, "workers": 0, "on_current": False}
