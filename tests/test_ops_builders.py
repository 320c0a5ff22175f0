"""The day-two builders (lock and audit log, keep_going scripts, the health check, rollback's selection and
switch), run for real with /bin/sh in temp dirs. Nothing here uses SSH.
"""
from __future__ import annotations

import http.server
import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from fabdeploy.appserver.uwsgi import UWSGI as UwsgiServer
from fabdeploy.steps import health

from fabdeploy import hooks

from fabdeploy.steps import lock

from fabdeploy.steps import code

from fabdeploy.steps import django_app
from fabdeploy.errors import FabdeployError
from fabdeploy.hosts.layout import SETTINGS_MODULE, Layout
from fabdeploy.steps.lock import LockOwner
from fabdeploy.remote.markers import MARK
from fabdeploy.remote.script import Phase, Script
from fabdeploy.remote.shell import link_name_word, q
from test_phases import REL_ID, _fresh_release, _sample_bundle, err, make_cfg, make_rel, notes, out, sh

# the rollback's phases, and the task's logic (the package exports the `rollback` task under the module's name)
rollback = importlib.import_module("fabdeploy.steps.rollback")
rollback_ops = importlib.import_module("fabdeploy.ops.rollback")

# === lock =====================================================================================================

ALICE = LockOwner("deploy", "alice", "a1a1a1a1a1a1a1a1", 4242, "2026-01-01T00:00:00Z")
BOB = LockOwner("rollback", "bob", "b2b2b2b2b2b2b2b2", 5151, "2026-01-01T00:05:00Z")


class LockLab:
    def __init__(self, tmp_path, **lock_section):
        self.tmp = tmp_path
        deploy_to = tmp_path / "app"
        deploy_to.mkdir(exist_ok=True)
        self.cfg = make_cfg(deploy_to, **({"lock": lock_section} if lock_section else {}))
        self.dir = Path(lock.lock_dir(self.cfg))
        self.audit = Path(lock.audit_file(self.cfg))

    def run(self, *phases_or_lines, name="lock"):
        built = [p if isinstance(p, Phase) else Phase(name, p) for p in phases_or_lines]
        return sh(Script(built), self.tmp)

    def acquire(self, owner, wait=0):
        return self.run(lock.acquire(self.cfg, owner, wait))

    def token(self) -> str:
        return (self.dir / "token").read_text().strip()

    def age(self, seconds: int) -> None:
        """Make the lock look `seconds` old (the age is the lock directory's mtime)."""
        subprocess.run(["touch", "-d", f"@{int(time.time()) - seconds}", str(self.dir)], check=True)


def test_lock_dir_and_audit_file_paths():
    cfg = make_cfg("/srv/shop")
    assert lock.lock_dir(cfg) == "/srv/shop/.fabdeploy-lock"
    assert lock.audit_file(cfg) == "/srv/shop/shared/log/audit.jsonl"


def test_lock_owner_new_and_describe():
    owner = LockOwner.new("deploy", "carol")
    assert re.fullmatch(r"[0-9a-f]{16}", owner.token) and owner.pid == os.getpid()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", owner.since)
    assert LockOwner.new("deploy", "carol").token != owner.token
    assert ALICE.describe() == "alice (pid 4242, deploy, since 2026-01-01T00:00:00Z)"


def test_acquire_takes_the_lock_and_records_the_holder(tmp_path):
    lab = LockLab(tmp_path)
    proc = lab.acquire(ALICE)
    assert proc.returncode == 0, err(proc)
    assert lab.dir.is_dir()
    assert (lab.dir / "info").read_text() == ALICE.describe() + "\n"
    assert lab.token() == ALICE.token
    assert abs(int((lab.dir / "started").read_text()) - time.time()) < 5
    assert sorted(os.listdir(lab.dir)) == ["info", "started", "token"]


def test_second_acquire_fails_fast_naming_the_holder(tmp_path):
    lab = LockLab(tmp_path)
    assert lab.acquire(ALICE).returncode == 0
    start = time.monotonic()
    proc = lab.acquire(BOB, wait=0)
    assert time.monotonic() - start < 1  # no sleeping with wait=0
    assert proc.returncode == 75
    line = next(ln for ln in err(proc).splitlines() if ln.startswith(f"{MARK} error "))
    assert re.fullmatch(re.escape(f"{MARK} error deploy lock held by {ALICE.describe()} for ")
                        + r"[0-9]+s; retry later or pass --wait SECONDS", line), line
    assert lab.token() == ALICE.token  # untouched


def test_acquire_waits_for_a_lock_released_meanwhile(tmp_path):
    lab = LockLab(tmp_path)
    assert lab.acquire(ALICE).returncode == 0
    releaser = subprocess.Popen(["sh", "-c", f"sleep 1; rm -rf {q(str(lab.dir))}"])
    try:
        start = time.monotonic()
        proc = lab.acquire(BOB, wait=2)
        elapsed = time.monotonic() - start
    finally:
        releaser.wait(timeout=30)
    assert proc.returncode == 0, err(proc)
    assert 0.9 < elapsed < 4, elapsed
    assert lab.token() == BOB.token
    assert (lab.dir / "info").read_text() == BOB.describe() + "\n"


def test_acquire_gives_up_after_waiting(tmp_path):
    lab = LockLab(tmp_path)
    assert lab.acquire(ALICE).returncode == 0
    start = time.monotonic()
    proc = lab.acquire(BOB, wait=1)
    assert 0.9 < time.monotonic() - start < 4
    assert proc.returncode == 75 and f"deploy lock held by {ALICE.describe()}" in err(proc)
    assert lab.token() == ALICE.token


def test_stale_lock_is_reported_not_ignored(tmp_path):
    lab = LockLab(tmp_path, ttl=10)
    assert lab.acquire(ALICE).returncode == 0
    lab.age(120)
    proc = lab.acquire(BOB)
    assert proc.returncode == 75
    line = next(ln for ln in err(proc).splitlines() if ln.startswith(f"{MARK} error "))
    m = re.fullmatch(re.escape(f"{MARK} error deploy lock is STALE: held by {ALICE.describe()} for ")
                     + r"([0-9]+)s \(older than lock\.ttl = 10s\); if that run is gone, break it with: fab unlock",
                     line)
    assert m, line
    assert 118 <= int(m.group(1)) <= 130
    assert lab.token() == ALICE.token


def test_acquire_without_deploy_to_says_why(tmp_path):
    cfg = make_cfg(tmp_path / "missing")
    proc = sh(Script([Phase("lock", lock.acquire(cfg, ALICE))]), tmp_path)
    assert proc.returncode == 1
    assert f"{MARK} error cannot take the deploy lock: mkdir: cannot create directory" in err(proc)


def test_acquire_takes_a_lock_released_right_after_its_mkdir_failed(tmp_path):
    """The race made deterministic: the first mkdir fails with EEXIST, as if the holder released just after."""
    lab = LockLab(tmp_path)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    flag = tmp_path / "raced"
    (bindir / "mkdir").write_text(
        "#!/bin/sh\n"
        f"if [ ! -e {q(str(flag))} ]; then : > {q(str(flag))}; "
        "echo \"mkdir: cannot create directory '$1': File exists\" >&2; exit 1; fi\n"
        f"exec {q(shutil.which('mkdir'))} \"$@\"\n")
    (bindir / "mkdir").chmod(0o755)
    proc = sh(Script([Phase("lock", lock.acquire(lab.cfg, BOB, wait=2))]), tmp_path,
              env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    assert flag.exists()
    assert proc.returncode == 0, err(proc)
    assert lab.token() == BOB.token


def test_release_only_with_the_holders_token(tmp_path):
    lab = LockLab(tmp_path)
    assert lab.acquire(ALICE).returncode == 0
    assert lab.run(lock.release(lab.cfg, BOB)).returncode == 0
    assert lab.dir.is_dir() and lab.token() == ALICE.token
    assert lab.run(lock.release(lab.cfg, ALICE)).returncode == 0
    assert not lab.dir.exists()
    assert lab.run(lock.release(lab.cfg, ALICE)).returncode == 0  # not locked: nothing to do, no error


# --- audit log -------------------------------------------------------------------------------------------------

def _audit_lines(lab) -> list[dict]:
    return [json.loads(line) for line in lab.audit.read_text().splitlines()]


def _iso_now_ok(value: str) -> bool:
    when = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    return abs(when.timestamp() - time.time()) < 60


def test_audit_appends_one_json_line_per_call_with_dynamic_fields(tmp_path):
    lab = LockLab(tmp_path)
    lay = Layout(lab.cfg.paths.deploy_to)
    Path(lay.release(REL_ID)).mkdir(parents=True)
    os.symlink(lay.release(REL_ID), lay.current)
    assert lab.acquire(ALICE).returncode == 0
    (lab.dir / "started").write_text(f"{int(time.time()) - 42}\n")
    dynamic = {"release": link_name_word(lay.current)}  # (what control's and rollback's finish give)
    for result in ("ok", "failed"):
        proc = lab.run(lock.audit(lab.cfg, ALICE, {"result": result, "revision": "a" * 40}, dynamic))
        assert proc.returncode == 0, err(proc)
    lines = _audit_lines(lab)
    assert len(lines) == 2
    for line, result in zip(lines, ("ok", "failed")):
        assert set(line) == {"action", "who", "result", "revision", "release", "time", "duration"}
        assert (line["action"], line["who"], line["result"], line["release"]) == ("deploy", "alice", result, REL_ID)
        assert line["revision"] == "a" * 40
        assert _iso_now_ok(line["time"])
        assert isinstance(line["duration"], int) and 42 <= line["duration"] <= 50


def test_audit_without_a_lock_has_zero_duration_and_creates_the_log_dir(tmp_path):
    lab = LockLab(tmp_path)
    proc = lab.run(lock.audit(lab.cfg, BOB, {"result": "ok", "release": REL_ID}))
    assert proc.returncode == 0, err(proc)
    (line,) = _audit_lines(lab)
    # (no lock: counted from the same `date` that gave the time)
    assert line["action"] == "rollback" and line["release"] == REL_ID and line["duration"] == 0


@pytest.mark.parametrize("value", ["50% off %s %d %% %", "it's \"quoted\" 'twice'", "$(touch PWNED) `touch PWNED` $HOME",
                                   "h\u00e9llo \u2713", "a;b|c&d>e"])
def test_audit_keeps_awkward_values_exact(tmp_path, value):
    lab = LockLab(tmp_path)
    who = LockOwner("deploy", "o'neil %s", "c3c3c3c3c3c3c3c3", 1, "x")
    proc = lab.run(lock.audit(lab.cfg, who, {"result": "failed", "error": value}))
    assert proc.returncode == 0, err(proc)
    (line,) = _audit_lines(lab)
    assert line["error"] == value and line["who"] == "o'neil %s"
    assert not list(tmp_path.rglob("PWNED"))


@pytest.mark.parametrize("value", ["C:\\deploy\\new", "tab\there", "literal \\n not a newline"])
def test_audit_keeps_backslashes_and_tabs_exact(tmp_path, value):
    lab = LockLab(tmp_path)
    proc = lab.run(lock.audit(lab.cfg, ALICE, {"result": "failed", "error": value}))
    assert proc.returncode == 0, err(proc)
    (line,) = _audit_lines(lab)
    assert line["error"] == value


def test_finish_writes_the_audit_line_then_releases(tmp_path):
    lab = LockLab(tmp_path)
    assert lab.acquire(ALICE).returncode == 0
    phase = lock.finish(lab.cfg, ALICE, {"result": "ok", "release": REL_ID})
    assert phase.name == "finish"
    proc = lab.run(phase)
    assert proc.returncode == 0, err(proc)
    assert not lab.dir.exists()
    assert [ln["result"] for ln in _audit_lines(lab)] == ["ok"]


def test_failed_finish_releases_the_lock_even_when_the_audit_log_cannot_be_written(tmp_path):
    lab = LockLab(tmp_path)
    assert lab.acquire(ALICE).returncode == 0
    (tmp_path / "app" / "shared").write_text("a file where the shared dir should be\n")  # mkdir -p fails
    proc = lab.run(lock.failed_finish(lab.cfg, ALICE, {"result": "failed", "error": "boom"}))
    assert proc.returncode == 0, err(proc)
    assert not lab.dir.exists()
    assert err(proc).splitlines() == [f"{MARK} begin finish", f"{MARK} end finish 0"]  # best effort, silent


def test_failed_finish_writes_the_audit_line(tmp_path):
    lab = LockLab(tmp_path)
    assert lab.acquire(ALICE).returncode == 0
    proc = lab.run(lock.failed_finish(lab.cfg, ALICE, {"result": "failed", "error": 'nginx: unexpected "}"'}))
    assert proc.returncode == 0, err(proc)
    assert not lab.dir.exists()
    (line,) = _audit_lines(lab)
    assert (line["result"], line["error"], line["action"]) == ("failed", 'nginx: unexpected "}"', "deploy")


def test_failed_finish_leaves_someone_elses_lock(tmp_path):
    lab = LockLab(tmp_path)
    assert lab.acquire(BOB).returncode == 0
    assert lab.run(lock.failed_finish(lab.cfg, ALICE, {"result": "failed"})).returncode == 0
    assert lab.token() == BOB.token


# --- unlock ------------------------------------------------------------------------------------------------------

def test_unlock_when_not_locked(tmp_path):
    lab = LockLab(tmp_path)
    for force in (False, True):
        proc = lab.run(lock.unlock(lab.cfg, force))
        assert proc.returncode == 0, err(proc)
        assert notes(out(proc)) == ["not locked"]


def test_unlock_refuses_a_young_lock_without_force(tmp_path):
    lab = LockLab(tmp_path, ttl=600)
    assert lab.acquire(ALICE).returncode == 0
    proc = lab.run(lock.unlock(lab.cfg, force=False))
    assert proc.returncode == 1
    line = next(ln for ln in err(proc).splitlines() if ln.startswith(f"{MARK} error "))
    assert re.fullmatch(re.escape(f"{MARK} error deploy lock held by {ALICE.describe()} for ")
                        + r"[0-9]+s is younger than lock\.ttl = 600s; if that run is really gone: "
                          r"fab unlock --force", line), line
    assert lab.token() == ALICE.token


def test_unlock_removes_an_old_lock_without_force(tmp_path):
    lab = LockLab(tmp_path, ttl=10)
    assert lab.acquire(ALICE).returncode == 0
    lab.age(60)
    proc = lab.run(lock.unlock(lab.cfg, force=False))
    assert proc.returncode == 0, err(proc)
    assert not lab.dir.exists()
    (note,) = notes(out(proc))
    assert re.fullmatch(re.escape(f"removed the lock held by {ALICE.describe()} for ") + r"(5[89]|6[0-9])s", note)


def test_unlock_force_removes_a_young_lock(tmp_path):
    lab = LockLab(tmp_path)
    assert lab.acquire(ALICE).returncode == 0
    proc = lab.run(lock.unlock(lab.cfg, force=True))
    assert proc.returncode == 0, err(proc)
    assert not lab.dir.exists()
    assert notes(out(proc))[0].startswith(f"removed the lock held by {ALICE.describe()} for ")
    assert lab.acquire(BOB).returncode == 0  # free again


# === Script: keep_going =========================================================================================

def _body(proc) -> list[str]:
    return out(proc).splitlines()


def test_keep_going_failure_lets_the_script_continue_and_is_reported(tmp_path):
    script = Script([Phase("a", ["echo A", "false", "echo not-reached"], keep_going=True),
                     Phase("b", ['echo "failed=[$fabdeploy_failed]"'])])
    proc = sh(script, tmp_path)
    assert proc.returncode == 0, err(proc)
    assert _body(proc) == [f"{MARK} begin a", "A", f"{MARK} end a 1",
                           f"{MARK} begin b", "failed=[ a]", f"{MARK} end b 0"]


def test_keep_going_success_leaves_the_list_empty(tmp_path):
    proc = sh(Script([Phase("a", ["true"], keep_going=True), Phase("b", ['echo "failed=[$fabdeploy_failed]"'])]),
              tmp_path)
    assert proc.returncode == 0 and "failed=[]" in _body(proc)


def test_several_keep_going_failures_accumulate(tmp_path):
    script = Script([Phase("a", ["exit 3"], keep_going=True), Phase("ok", ["true"]),
                     Phase("c", ["exit 4"], keep_going=True), Phase("b", ['echo "failed=[$fabdeploy_failed]"'])])
    proc = sh(script, tmp_path)
    assert proc.returncode == 0
    assert f"{MARK} end a 3" in _body(proc) and f"{MARK} end c 4" in _body(proc)
    assert "failed=[ a c]" in _body(proc)


def test_a_later_phase_decides_on_the_failure_and_its_status_ends_the_script(tmp_path):
    """The deploy's shape: restart (keep_going) fails, health sees it and fails the run; nothing runs after."""
    script = Script([Phase("restart", ["exit 1"], keep_going=True),
                     Phase("health", ['case " $fabdeploy_failed " in *" restart "*) exit 5;; esac']),
                     Phase("cleanup", ["echo cleanup-ran"])])
    proc = sh(script, tmp_path)
    assert proc.returncode == 5
    assert "cleanup-ran" not in out(proc) and f"{MARK} end health 5" in _body(proc)


def test_a_plain_failure_after_a_keep_going_one_still_stops_the_script(tmp_path):
    proc = sh(Script([Phase("a", ["false"], keep_going=True), Phase("b", ["exit 7"]), Phase("c", ["echo C"])]),
              tmp_path)
    assert proc.returncode == 7 and "C" not in _body(proc)


def test_hooks_keep_a_phase_keep_going(tmp_path):
    (tmp_path / "app").mkdir()
    cfg = make_cfg(tmp_path / "app", hooks={"after_restart": ["echo after"]})
    lay = Layout(cfg.paths.deploy_to)
    ctx = hooks.HookContext(cfg, "web1", REL_ID, lay.release(REL_ID), lay.venv("v"))
    hooks.clear()
    try:
        wrapped = hooks.wrap(Phase("restart", ["exit 1"], sudo=True, keep_going=True), cfg, ctx)
    finally:
        hooks.clear()
    proc = sh(Script([wrapped, Phase("health", ['echo "failed=[$fabdeploy_failed]"'])]), tmp_path)
    assert wrapped.keep_going is True
    assert proc.returncode == 0 and "failed=[ restart]" in _body(proc)


# === health =====================================================================================================

@pytest.mark.parametrize("listen,server_name,expected", [
    (80, "_", ("127.0.0.1", 80, "web1.example.net")),
    ("127.0.0.1:8000", "example.com www.example.com", ("127.0.0.1", 8000, "example.com")),
    ("[::]:8080", "_", ("::1", 8080, "web1.example.net")),
    ("0.0.0.0:81", "*.x.org", ("127.0.0.1", 81, "web1.example.net")),
    ("[::1]:8443", "_ shop.example.org", ("::1", 8443, "shop.example.org")),
    ("localhost:8000", "~^api[0-9]*\\.x\\.org$ *.x.org api.x.org", ("localhost", 8000, "api.x.org")),
    ("8080", "example.com", ("127.0.0.1", 8080, "example.com")),
])
def test_http_target(listen, server_name, expected):
    cfg = make_cfg(nginx={"listen": listen, "server_name": server_name})
    assert health.http_target(cfg, "web1.example.net") == expected


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        srv = self.server
        with srv.lock:
            srv.seen.append((self.path, self.headers.get("Host"), self.headers.get("User-Agent")))
            srv.hits[self.path] = srv.hits.get(self.path, 0) + 1
            n = srv.hits[self.path]
        route = self.path.split("?")[0]
        status = {"/ok": 200, "/boom": 500, "/empty": 204, "/gone": 404}.get(route, 200)
        if route == "/flaky":
            status = 503 if n <= 2 else 200
        self.send_response(status)
        self.send_header("Content-Length", "0" if status == 204 else "2")
        self.end_headers()
        if status != 204:
            self.wfile.write(b"xx")

    def log_message(self, *args):
        pass


class _V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


@pytest.fixture(params=["127.0.0.1"])
def web(request):
    """A small local HTTP server (in a thread, stopped after the test) answering per path."""
    cls = _V6Server if ":" in request.param else http.server.ThreadingHTTPServer
    srv = cls((request.param, 0), _Handler)
    srv.seen, srv.hits, srv.lock = [], {}, threading.Lock()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.addr = request.param
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


def check(addr, port, path, want=(), timeout=1, host="example.com"):
    start = time.monotonic()
    spec = {"proto": "http", "addr": addr, "port": port, "hosts": [host], "path": path, "accept": list(want),
            "tls": False, "timeout": timeout}
    proc = subprocess.run([sys.executable, "-c", health.check_program(make_cfg()), json.dumps(spec)],
                          capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - start


def test_check_py_healthy_answer(web):
    proc, elapsed = check(web.addr, web.server_port, "/ok")
    assert (proc.returncode, proc.stdout) == (0, "GET /ok (Host: example.com) -> 200\n"), proc.stderr
    assert elapsed < 5
    assert web.seen == [("/ok", "example.com", "fabdeploy-health")]  # one request, the configured Host


def test_check_py_a_4xx_is_unhealthy_by_default(web):
    proc, _ = check(web.addr, web.server_port, "/gone")
    assert (proc.returncode, proc.stdout) == (1, "GET /gone (Host: example.com) -> 404\n")


def test_check_py_retries_a_500_until_the_timeout_and_prints_the_last_answer(web):
    proc, elapsed = check(web.addr, web.server_port, "/boom", timeout=1)
    assert (proc.returncode, proc.stdout) == (1, "GET /boom (Host: example.com) -> 500\n")
    assert 1 <= elapsed < 8
    assert web.hits["/boom"] >= 3  # retried (every 0.3 s)


def test_check_py_retries_until_healthy(web):
    proc, _ = check(web.addr, web.server_port, "/flaky", timeout=10)
    assert (proc.returncode, proc.stdout) == (0, "GET /flaky (Host: example.com) -> 200\n")
    assert web.hits["/flaky"] == 3


def test_check_py_exact_status(web):
    proc, _ = check(web.addr, web.server_port, "/empty", want=[204])
    assert (proc.returncode, proc.stdout) == (0, "GET /empty (Host: example.com) -> 204\n")
    proc, elapsed = check(web.addr, web.server_port, "/ok", want=[204], timeout=1)
    # 200 is not the 204 asked for
    assert (proc.returncode, proc.stdout) == (1, "GET /ok (Host: example.com) -> 200 (health.status accepts 204)\n")
    assert elapsed >= 1


def test_check_py_without_a_server(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, elapsed = check("127.0.0.1", port, "/", timeout=1)
    assert proc.returncode == 1
    assert proc.stdout.startswith("GET / (Host: example.com): ") and "refused" in proc.stdout and proc.stdout.count("\n") == 1
    assert 1 <= elapsed < 8


@pytest.mark.parametrize("web", ["::1"], indirect=True)
def test_check_command_over_ipv6_from_the_nginx_listen(web, tmp_path):
    cfg = make_cfg(nginx={"listen": f"[::]:{web.server_port}", "server_name": "_"},
                   project={"python": sys.executable}, health={"path": "/empty", "status": 204, "timeout": 2})
    proc = sh(health.check_command(cfg, "web1"), tmp_path)
    assert (proc.returncode, proc.stdout.decode()) == (0, "GET /empty (Host: web1) -> 204\n"), err(proc)
    assert web.seen == [("/empty", "web1", "fabdeploy-health")]


def test_check_command_quotes_the_path(web, tmp_path):
    path = "/ok?x=1&y='a'&z=$(pwd)&w=;id"
    cfg = make_cfg(nginx={"listen": f"127.0.0.1:{web.server_port}", "server_name": "shop.test www.shop.test"},
                   project={"python": sys.executable}, health={"path": path, "timeout": 2})
    proc = sh(health.check_command(cfg, "web1"), tmp_path)
    assert proc.returncode == 0, err(proc)
    # literally, not expanded by the shell; each name of server_name as the Host
    assert web.seen == [(path, "shop.test", "fabdeploy-health"), (path, "www.shop.test", "fabdeploy-health")]


# === rollback: selection and switch =============================================================================

R1, R2, R3, R4, R5, R6 = (f"2026010{i}T000000Z-abcdef{i}" for i in range(1, 7))


class RollbackLab:
    """A deploy_to with releases R1..R6 (current = R5 unless told); each knows its venv and saved uWSGI ini.

    R1 good; R2 marked bad; R3's venv incomplete; R4 without a saved ini; R5 current; R6 newer than current.
    The venvs' python is a shell script standing in for the target's Django: it logs how it was run and prints
    what `unknown` holds (the applied migrations the target does not know).
    """

    def __init__(self, tmp_path, current=R5, unknown="", python_exit=0, python_stderr=""):
        self.tmp = tmp_path
        self.cfg = make_cfg(tmp_path / "app")
        self.lay = lay = Layout(self.cfg.paths.deploy_to)
        self.calls = tmp_path / "python-calls"
        venv_of = {R1: "v-good", R2: "v-good", R3: "v-half", R4: "v-good", R5: "v-cur", R6: "v-cur"}
        for rid, v in venv_of.items():
            meta = Path(lay.release(rid), ".fabdeploy")
            meta.mkdir(parents=True)
            (meta / "venv").write_text(v + "\n")
            if rid != R4:
                (meta / "uwsgi.ini").write_text(f"ini of {rid}\n")
            Path(lay.static, rid).mkdir(parents=True)
        Path(lay.release(R2), ".fabdeploy", "bad").touch()
        for v in ("v-good", "v-half", "v-cur"):
            bindir = Path(lay.venv(v), "bin")
            bindir.mkdir(parents=True)
            py = bindir / "python"
            py.write_text("#!/bin/sh\n"
                          f'printf "%s|%s|%s|%s\\n" "$(pwd)" "$DJANGO_SETTINGS_MODULE" "$FROM_ENV_FILE" "$1" '
                          f">> {q(str(self.calls))}\n"
                          + (f"printf '%s\\n' {q(python_stderr)} >&2\n" if python_stderr else "")
                          + (f"printf '%s\\n' {q(unknown)}\n" if unknown else "")
                          + f"exit {python_exit}\n")
            py.chmod(0o755)
            if v != "v-half":
                Path(lay.venv(v), ".fabdeploy-complete").touch()
        Path(lay.config).mkdir(parents=True)
        Path(lay.env_file).write_text("FROM_ENV_FILE='from app.env'\n")
        Path(UwsgiServer().paths(lay).config).write_text(f"ini of {current}\n")
        os.symlink(lay.release(current), lay.current)
        os.symlink(current, Path(lay.static, "current"))
        self.before = self.state()

    def run(self, to=None, strict=False):
        return sh(Script([rollback.select_and_switch(self.cfg, to, strict)]), self.tmp)

    def state(self) -> dict:
        lay = self.lay
        return {"current": os.readlink(lay.current), "ini": Path(UwsgiServer().paths(lay).config).read_text(),
                "static": os.readlink(Path(lay.static, "current")),
                "bad": sorted(r for r in os.listdir(lay.releases) if Path(lay.release(r), ".fabdeploy", "bad").exists())}

    def calls_made(self) -> list[list[str]]:
        return [ln.split("|", 3) for ln in self.calls.read_text().splitlines()] if self.calls.exists() else []


def _error(proc) -> str:
    lines = [ln for ln in err(proc).splitlines() if ln.startswith(f"{MARK} error ")]
    assert lines, err(proc)
    return lines[-1][len(f"{MARK} error "):]


def test_rollback_picks_the_newest_older_good_release_and_switches(tmp_path):
    lab = RollbackLab(tmp_path)
    proc = lab.run()
    assert proc.returncode == 0, err(proc)
    assert lab.state() == {"current": lab.lay.release(R1), "ini": f"ini of {R1}\n", "static": R1,
                           "bad": sorted([R2, R5])}
    assert notes(out(proc)) == [f"{R5} -> {R1} ({R5} marked bad)"]
    assert not os.path.lexists(lab.lay.current + ".fabdeploy-tmp")
    assert not os.path.lexists(Path(lab.lay.static, "current.fabdeploy-tmp"))
    # the target's own python was asked, in the target, with the production settings and app.env
    assert lab.calls_made() == [[lab.lay.release(R1), SETTINGS_MODULE, "from app.env", "-c"]]
    assert f"{MARK} warn" not in out(proc)


def test_rollback_twice_walks_further_back_past_bad_releases(tmp_path):
    lab = RollbackLab(tmp_path, current=R6)
    proc = lab.run()
    assert proc.returncode == 0, err(proc)
    assert lab.state()["current"] == lab.lay.release(R5)  # R6's predecessor
    proc = lab.run()
    assert proc.returncode == 0, err(proc)
    assert lab.state() == {"current": lab.lay.release(R1), "ini": f"ini of {R1}\n", "static": R1,
                           "bad": sorted([R2, R5, R6])}


def test_rollback_never_picks_a_release_that_never_went_live(tmp_path):
    """A release left complete by a deploy killed after its config phase (venv and ini present) is pending:
    rollback skips it; --to may still name it, with a warning."""
    lab = RollbackLab(tmp_path, current=R6)
    Path(lab.lay.release(R5), ".fabdeploy", "pending").touch()
    proc = lab.run()
    assert proc.returncode == 0, err(proc)
    assert lab.state()["current"] == lab.lay.release(R1)
    lab = RollbackLab(tmp_path / "again", current=R6)
    Path(lab.lay.release(R5), ".fabdeploy", "pending").touch()
    proc = lab.run(to=R5)
    assert proc.returncode == 0, err(proc)
    assert lab.state()["current"] == lab.lay.release(R5)
    assert f"{MARK} warn release {R5} never went live" in out(proc)
    assert not Path(lab.lay.release(R5), ".fabdeploy", "pending").exists()  # it is live now


def test_rollback_to_an_explicit_release_even_one_marked_bad(tmp_path):
    lab = RollbackLab(tmp_path)
    proc = lab.run(to=R2)
    assert proc.returncode == 0, err(proc)
    assert lab.state() == {"current": lab.lay.release(R2), "ini": f"ini of {R2}\n", "static": R2, "bad": [R5]}
    assert notes(out(proc)) == [f"{R5} -> {R2} ({R5} marked bad)"]


@pytest.mark.parametrize("to,message", [
    ("20250101T000000Z-deadbee", "release 20250101T000000Z-deadbee is not on the host (see fab releases)"),
    (R5, f"release {R5} is already current"),
    (R3, f"the virtualenv of release {R3} was removed; deploy it again instead"),
    (R4, f"release {R4} has no saved uWSGI config; deploy it again instead"),
])
def test_rollback_to_refusals_change_nothing(tmp_path, to, message):
    lab = RollbackLab(tmp_path)
    proc = lab.run(to=to)
    assert proc.returncode == 1
    assert _error(proc) == message
    assert lab.state() == lab.before
    assert lab.calls_made() == []  # refused before asking about migrations


def test_rollback_with_nothing_older(tmp_path):
    lab = RollbackLab(tmp_path, current=R1)
    proc = lab.run()
    assert proc.returncode == 1
    assert _error(proc) == "nothing to roll back to: no older good release on disk (see fab releases)"
    assert lab.state() == lab.before


def test_rollback_with_nothing_deployed(tmp_path):
    lab = RollbackLab(tmp_path)
    os.unlink(lab.lay.current)
    proc = lab.run()
    assert proc.returncode == 1 and _error(proc) == "nothing is deployed here (no current release)"
    cfg = make_cfg(tmp_path / "empty")
    proc = sh(Script([rollback.select_and_switch(cfg, None, False)]), tmp_path)
    assert proc.returncode == 1 and _error(proc) == "nothing is deployed here"


def test_rollback_strict_refuses_an_unknown_migration_before_switching(tmp_path):
    lab = RollbackLab(tmp_path, unknown="pages 0002_tag")
    proc = lab.run(strict=True)
    assert proc.returncode == 1
    assert _error(proc) == f"refusing (--strict): the database has migrations release {R1} does not know: pages.0002_tag"
    assert lab.state() == lab.before


def test_rollback_strict_lists_every_unknown_migration(tmp_path):
    lab = RollbackLab(tmp_path, unknown="pages 0002_tag\npages 0003_more\nshop 0007_x")
    proc = lab.run(strict=True)
    assert proc.returncode == 1
    assert _error(proc).endswith(f"release {R1} does not know: pages.0002_tag pages.0003_more shop.0007_x")
    assert lab.state() == lab.before


def test_rollback_warns_about_an_unknown_migration_and_switches(tmp_path):
    lab = RollbackLab(tmp_path, unknown="pages 0002_tag")
    proc = lab.run()
    assert proc.returncode == 0, err(proc)
    warns = [ln for ln in out(proc).splitlines() if ln.startswith(f"{MARK} warn ")]
    assert warns == [f"{MARK} warn the database has migration pages.0002_tag that {R1} does not know "
                     "(left applied; fabdeploy never unapplies migrations)",
                     f"{MARK} warn no dump in {lab.lay.shared}/backups matches release {R1} (taken before those "
                     "migrations)"]  # (fab db: the matching dump, when there is one, is named)
    assert lab.state()["current"] == lab.lay.release(R1)


def test_rollback_stops_when_the_migrations_cannot_be_compared(tmp_path):
    lab = RollbackLab(tmp_path, python_exit=1, python_stderr="django.db.utils.OperationalError: no such table")
    proc = lab.run()
    assert proc.returncode == 1
    assert _error(proc) == f"could not compare the migrations of release {R1} with the database"
    assert "OperationalError: no such table" in err(proc)
    assert lab.state() == lab.before


@pytest.mark.parametrize("strict", [True, False])
def test_rollback_ignores_stderr_noise_of_a_successful_comparison(tmp_path, strict):
    lab = RollbackLab(tmp_path, python_stderr="UserWarning: something at import time")
    proc = lab.run(strict=strict)
    assert proc.returncode == 0, err(proc)
    assert f"{MARK} warn" not in out(proc)
    assert lab.state()["current"] == lab.lay.release(R1)


def test_rollback_script_lock_select_finish_audits_the_target(tmp_path):
    """The whole rollback script minus the uWSGI restart and its health check: locked, switched, audited with the
    target, unlocked."""
    lab = RollbackLab(tmp_path)
    owner = LockOwner("rollback", "alice", "d4d4d4d4d4d4d4d4", 1, "now")
    full = rollback_ops.rollback_script(lab.cfg, owner, None, False, 0)
    assert full.names == ["lock", "rollback", "restart", "health", "finish"]
    proc = sh(Script([p for p in full.phases if p.name not in ("restart", "health")]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert lab.state()["current"] == lab.lay.release(R1)
    assert not Path(lock.lock_dir(lab.cfg)).exists()
    (line,) = [json.loads(ln) for ln in Path(lock.audit_file(lab.cfg)).read_text().splitlines()]
    assert (line["action"], line["who"], line["result"], line["release"]) == ("rollback", "alice", "ok", R1)


def test_rollback_script_refuses_while_locked(tmp_path):
    lab = RollbackLab(tmp_path)
    assert sh(Script([Phase("lock", lock.acquire(lab.cfg, ALICE))]), tmp_path).returncode == 0
    owner = LockOwner("rollback", "bob", "e5e5e5e5e5e5e5e5", 1, "now")
    proc = sh(rollback_ops.rollback_script(lab.cfg, owner, None, False, 0), tmp_path)
    assert proc.returncode == 75
    assert lab.state() == lab.before


@pytest.mark.parametrize("to", ["../../etc", "20260101T000000Z-abcdef1/../../x", "current", "2026; rm -rf /", "-rf"])
def test_rollback_all_refuses_a_to_that_is_not_a_release_id(to):
    with pytest.raises(FabdeployError, match="is not a release id"):
        rollback_ops.rollback_all([], make_cfg(), None, to, False)


# --- rollback against a real Django database ---------------------------------------------------------------------

MIGRATION_0002 = """\
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("pages", "0001_initial")]
    operations = []
"""


def migrated_then_one_more(tmp_path):
    """Release A of the sample project migrated (its django phase run for real), then release B's code with
    one more migration on disk (pages.0002_tag), its django phase not run: (cfg, lay, a, b)."""
    flags = {"collectstatic": False, "check_deploy": False}
    a, b = make_rel(R1), make_rel(R2)
    cfg, lay, _ = _fresh_release(tmp_path, rel=a, django=flags)
    assert sh(Script([django_app.django(cfg, a)]), tmp_path).returncode == 0
    assert sh(Script([code.code(cfg, b)]), tmp_path, stdin=_sample_bundle()).returncode == 0
    Path(lay.release(b.id), "pages", "migrations", "0002_tag.py").write_text(MIGRATION_0002)
    return cfg, lay, a, b


def test_rollback_sees_the_real_migration_the_target_does_not_know(tmp_path):
    """Release A migrates; release B adds pages.0002_tag and migrates; rolling back to A names it."""
    cfg, lay, a, b = migrated_then_one_more(tmp_path)
    proc = sh(Script([django_app.django(cfg, b)]), tmp_path)
    assert proc.returncode == 0 and notes(out(proc))[0] == "1 migrations applied", err(proc)
    for r in (a, b):
        Path(lay.release(r.id), ".fabdeploy", "uwsgi.ini").write_text(f"ini of {r.id}\n")
    Path(lay.venv(a.venv_hash), ".fabdeploy-complete").touch()
    Path(lay.config, "uwsgi.ini").write_text(f"ini of {b.id}\n")
    os.symlink(lay.release(b.id), lay.current)

    proc = sh(Script([rollback.select_and_switch(cfg, None, True)]), tmp_path)
    assert proc.returncode == 1
    assert _error(proc) == f"refusing (--strict): the database has migrations release {a.id} does not know: pages.0002_tag"
    assert os.readlink(lay.current) == lay.release(b.id)

    proc = sh(Script([rollback.select_and_switch(cfg, None, False)]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert f"{MARK} warn the database has migration pages.0002_tag that {a.id} does not know" in out(proc)
    assert os.readlink(lay.current) == lay.release(a.id)
    assert Path(UwsgiServer().paths(lay).config).read_text() == f"ini of {a.id}\n"
