"""A fleet behind a load balancer, on real hosts: three app hosts (uWSGI over TCP) and one lb host (nginx
with an upstream of the three), four network namespaces.

- one `fab deploy` deploys all four in parallel, with one release id, and prints the summary table; the
  wall time of a sequential run (--parallel 1) is measured beside it and printed (never asserted);
- requests through the balancer reach all three app hosts (each reports the socket it serves on);
  static files come from the balancer's own disk; media from a shared mount reach every app host;
- ip_hash keeps one client on one app host; least_conn with weights renders and is live;
- a rolling deploy (--rolling 1) under bounded load through the balancer drops no request;
- hooks run wherever their phase runs: on the balancer (setup, config, restart, cleanup; a per-role table
  only on its role) and in a rollback of the app hosts (switch and restart, with the release rolled to);
- one app host unreachable: no host switches, and the summary says why.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import FAB, make_project, run_fab, sample_config
from test_load_e2e import Load  # constant GETs, bounded in count and time


def fleet_config(apps, lb, extra: str = "") -> str:
    base = sample_config(lb)
    base = base.replace(f'hosts = ["{lb.ssh_target()}"]\n', "")
    roles = ("[roles]\napp = [" + ", ".join(f'"{a.ssh_target()}"' for a in apps) + "]\n"
             f'lb = ["{lb.ssh_target()}"]\n')
    return base + roles + extra


@pytest.fixture(scope="module")
def fleet(make_host, tmp_path_factory, wheel_cache):
    apps = [make_host(f"lbapp{i}") for i in (1, 2, 3)]
    lb = make_host("lbfront")
    proj = make_project(tmp_path_factory.mktemp("lbfleet"))
    # media on a "shared mount": one directory outside the hosts' private paths, linked from every app host
    media = Path(f"/var/tmp/fabdeploy-lb-media-{os.getpid()}")
    media.mkdir(mode=0o755, exist_ok=True)
    shutil.chown(media, "deploy", "deploy")
    for a in apps:
        a.exec("mkdir -p /srv/sample/shared && chown -R deploy:deploy /srv/sample", user="root")
        a.exec(["ln", "-sfn", str(media), "/srv/sample/shared/media"], user="deploy")
    proj.write_config(fleet_config(apps, lb))
    yield apps, lb, proj, wheel_cache
    shutil.rmtree(media, ignore_errors=True)


def get(lb, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    status, _, body = lb.http(path, host_header=lb.address, headers=headers)
    return status, body


def whoami(lb, headers: dict | None = None) -> dict:
    status, body = get(lb, "/whoami", headers)
    assert status == 200, body[:300]
    return json.loads(body)


def table(stdout: str) -> dict[str, list[str]]:
    lines = stdout[stdout.index("HOST "):].splitlines()
    assert lines[0].split() == ["HOST", "RELEASE", "DURATION", "RESULT", "ERROR"]
    return {ln.split()[0]: ln.split() for ln in lines[1:] if ln.strip()}


def test_fleet_deploys_in_parallel_and_the_balancer_reaches_every_app_host(fleet, capsys):
    apps, lb, proj, cache = fleet
    res = run_fab(proj.root, "deploy", cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = table(res.stdout)
    assert sorted(rows) == sorted([a.address for a in apps] + [lb.address])
    assert all(r[3] == "ok" for r in rows.values()), res.stdout
    assert len({r[1] for r in rows.values()}) == 1  # one release id everywhere
    rel = rows[lb.address][1]

    # each app host: uWSGI on its own address and port 8001, no nginx site of its own, and the port open to
    # the balancer only: from this machine (not a balancer) the connection is reset
    for a in apps:
        ini = a.path("/srv/sample/shared/config/uwsgi.ini").read_text()
        assert f"socket = {a.address}:8001" in ini
        assert not a.path("/etc/nginx/sites-enabled/sample").exists()
        assert f"ip saddr {lb.address} accept" in a.exec("nft list table inet fabdeploy_sample").stdout
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((a.address, 8001), timeout=5).close()
    assert f"will be open to {lb.address} only (nftables table inet fabdeploy_sample, applied at the switch)" \
        in res.stdout
    site = lb.path("/etc/nginx/sites-available/sample").read_text()
    for a in apps:
        assert f"server {a.address}:8001 max_fails=1 fail_timeout=10s;" in site

    seen = Counter(whoami(lb)["socket"] for _ in range(30))
    assert set(seen) == {f"{a.address}:8001" for a in apps}, seen
    assert min(seen.values()) >= 5, seen  # round robin spreads the requests
    assert all(whoami(lb)["release"] == rel for _ in range(6))

    # static files: served by the balancer from its own copy of this release's files
    status, css = get(lb, "/static/pages/site.css")
    assert status == 200
    assert lb.path(f"/srv/sample/shared/static/{rel}/pages/site.css").read_bytes() == css
    assert os.readlink(lb.path("/srv/sample/shared/static/current")) == rel

    # media: uploaded through the balancer to one app host, reachable through every app host
    name = f"m{os.getpid()}.txt"
    conn = http.client.HTTPConnection(lb.address, 80, timeout=10)
    boundary = "fabdeploy-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: text/plain\r\n\r\nshared media\r\n--{boundary}--\r\n").encode()
    conn.request("POST", "/upload", body=body, headers={
        "Host": lb.address, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    resp = conn.getresponse()
    saved = resp.read().decode()
    assert resp.status == 200, saved
    conn.close()
    for _ in range(6):
        status, data = get(lb, f"/media/{saved}")
        assert (status, data) == (200, b"shared media")

    # status: every host healthy, the lb's line says what it is
    st = run_fab(proj.root, "status")
    assert st.returncode == 0, st.stdout + st.stderr
    assert "load balancer; static files of " + rel in st.stdout
    assert "uwsgi protocol, straight to uWSGI" in st.stdout
    assert "DRIFT" not in st.stdout

    # parallel vs one host after another: a code-only redeploy each way, timed side by side
    times = {}
    for label, args in (("sequential", ["--parallel", "1"]), ("parallel", [])):
        proj.commit(label, {"pages/message.txt": f"{label} run\n"})
        start = time.monotonic()
        r = run_fab(proj.root, "deploy", *args, cache=cache)
        times[label] = time.monotonic() - start
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"{label} run".encode() in get(lb, "/")[1]
    with capsys.disabled():
        print(f"\nfleet of 3 app + 1 lb, code-only redeploy: one host at a time {times['sequential']:.1f}s, "
              f"in parallel {times['parallel']:.1f}s (ratio {times['sequential'] / times['parallel']:.2f})")


def test_ip_hash_keeps_a_client_on_one_app_host_and_least_conn_with_weights_is_live(fleet):
    apps, lb, proj, cache = fleet
    proj.write_config(fleet_config(apps, lb, '[balancer]\nmethod = "ip_hash"\n'))
    res = run_fab(proj.root, "deploy", cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ip_hash;" in lb.path("/etc/nginx/sites-available/sample").read_text()
    assert len({whoami(lb)["socket"] for _ in range(12)}) == 1  # this machine is one client address

    weighted = fleet_config(apps, lb, '[balancer]\nmethod = "least_conn"\n').replace(
        f'"{apps[0].ssh_target()}"', f'{{ host = "{apps[0].ssh_target()}", weight = 3, max_fails = 2 }}')
    proj.write_config(weighted)
    res = run_fab(proj.root, "deploy", cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    site = lb.path("/etc/nginx/sites-available/sample").read_text()
    assert "least_conn;" in site and f"server {apps[0].address}:8001 weight=3 max_fails=2" in site
    assert lb.exec("nginx -t", user="root").returncode == 0
    assert len({whoami(lb)["socket"] for _ in range(30)}) == 3
    proj.write_config(fleet_config(apps, lb))


def test_rolling_deploy_under_load_drops_no_request(fleet):
    apps, lb, proj, cache = fleet
    proj.commit("rolling", {"pages/message.txt": "rolled out\n"})
    with Load(lb.address) as load:  # GET / through the balancer, each answer naming its release
        time.sleep(1)
        res = run_fab(proj.root, "deploy", "--rolling", "1", cache=cache)
        done = time.monotonic()
        time.sleep(1)
    assert res.returncode == 0, res.stdout + res.stderr
    for n in (1, 2, 3):
        assert f"rolling: batch {n}/3" in res.stdout
    assert res.stdout.count("out of the upstream:") >= 3
    rel = table(res.stdout)[lb.address][1]
    failed = [s for s in load.samples if s.status != 200]
    assert len(load.samples) > 50 and not failed, (len(load.samples), failed[:5])
    after = [s.release for s in load.samples if s.start > done]
    assert after and set(after) == {rel}
    site = lb.path("/etc/nginx/sites-available/sample").read_text()
    assert " down;" not in site  # every host back in the upstream


FAIL_MARK = "/srv/fabdeploy-test-fail-health"  # a host with this file answers 500 on / (new code below)
FAIL_CODE = f"""def index(request):
    if Path({FAIL_MARK!r}).exists():
        return HttpResponse("failing on purpose", status=500)
"""


def test_a_failing_rolling_batch_stops_the_rollout_and_is_reverted(fleet):
    apps, lb, proj, cache = fleet
    before = whoami(lb)["release"]
    views = (proj.src / "pages" / "views.py").read_text()
    broken = views.replace("def index(request):\n", FAIL_CODE)
    assert broken != views
    proj.commit("fails on one host", {"pages/views.py": broken, "pages/message.txt": "half rolled\n"})
    apps[1].exec(["touch", FAIL_MARK])
    try:
        res = run_fab(proj.root, "deploy", "--rolling", "2", cache=cache)
    finally:
        apps[1].exec(["rm", "-f", FAIL_MARK])
    assert res.returncode == 1, res.stdout + res.stderr
    assert "rolling: batch 1/2" in res.stdout and "rolling: batch 2/2" not in res.stdout
    rows = table(res.stdout)
    err = {h: " ".join(r[4:]) for h, r in rows.items()}
    assert rows[apps[1].address][3] == "FAILED" and "health check failed" in err[apps[1].address], res.stdout
    assert rows[apps[0].address][3] == "FAILED" and "reverted: rolling deploy stopped: batch 1 failed" in \
        err[apps[0].address], res.stdout
    assert rows[apps[2].address][3] == "FAILED" and "not switched: rolling deploy stopped" in \
        err[apps[2].address], res.stdout
    assert rows[lb.address][3] == "ok", res.stdout
    # every app host serves the release from before, and all are back in the upstream
    assert {whoami(lb)["release"] for _ in range(12)} == {before}
    assert len({whoami(lb)["socket"] for _ in range(30)}) == 3
    assert " down;" not in lb.path("/etc/nginx/sites-available/sample").read_text()
    for a in apps:
        assert os.path.basename(os.readlink(a.path("/srv/sample/current"))) == before
    proj.commit("repaired", {"pages/views.py": views})


def test_ctrl_c_during_a_rolling_deploy_stops_the_rollout_and_puts_the_balancer_back(fleet):
    apps, lb, proj, cache = fleet
    before = whoami(lb)["release"]
    proj.commit("interrupted rollout", {"pages/message.txt": "interrupted rollout\n"})
    proj.write_config(fleet_config(apps, lb, '[hooks]\nbefore_switch = ["sleep 2"]\n'), name="slow.toml")
    proc = subprocess.Popen([FAB, "deploy", "--config", "slow.toml", "--rolling", "1"], cwd=proj.root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    seen = []
    deadline = time.monotonic() + 180
    for line in proc.stdout:  # bounded: fab ends by itself; the deadline only guards the test
        seen.append(line)
        if line.startswith("rolling: batch 2/3") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    out = "".join(seen) + out
    assert proc.returncode == 130, out
    new = re.search(r"upload\s+release (\S+)", out).group(1)
    assert os.path.basename(os.readlink(apps[0].path("/srv/sample/current"))) == new
    assert os.path.basename(os.readlink(apps[2].path("/srv/sample/current"))) == before
    assert not apps[2].path(f"/srv/sample/releases/{new}").exists()  # its prepared release was removed
    site = lb.path("/etc/nginx/sites-available/sample").read_text()
    assert " down;" not in site
    assert len({whoami(lb)["socket"] for _ in range(30)}) == 3  # every app host answers again
    # the balancer keeps the new static root (app host 1 serves pages that need it; it holds the old files too)
    assert os.readlink(lb.path("/srv/sample/shared/static/current")) == new
    for h in (*apps, lb):
        assert not h.path("/srv/sample/.fabdeploy-lock").exists(), h
    # back to one release everywhere for the next test
    res = run_fab(proj.root, "deploy", cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr


HOOK_LOG = "/tmp/fabdeploy-hooks.log"  # in each lab host's private /tmp


def hook_line(phase: str, extra: str = "") -> str:
    """A hook command (a TOML literal string) that appends "role action release phase[ extra]" to HOOK_LOG."""
    return f"'echo \"$FABDEPLOY_ROLE $FABDEPLOY_ACTION $FABDEPLOY_RELEASE {phase}{extra}\" >> {HOOK_LOG}'"


# after_switch also records where the release is and whether its virtualenv is there (a rollback reads both
# from `current` when the hook runs)
SWITCHED = ' $FABDEPLOY_RELEASE_PATH $(test -x "$FABDEPLOY_VENV/bin/python" && echo venv-ok || echo no-venv)'
HOOKS = f"""[hooks]
before_setup = [{hook_line("before_setup")}]
after_config = [{hook_line("after_config")}]
before_switch = [{hook_line("before_switch")}]
after_switch = [{hook_line("after_switch", SWITCHED)}]
after_restart = [{hook_line("after_restart")}]
after_cleanup = [{hook_line("after_cleanup")}]
before_restart = {{ lb = [{hook_line("before_restart lb-only")}] }}
before_cleanup = {{ app = [{hook_line("before_cleanup app-only")}] }}
"""


def hook_lines(host) -> list[str]:
    path = host.path(HOOK_LOG)
    return path.read_text().splitlines() if path.exists() else []


def test_hooks_run_on_the_balancer_and_in_a_rollback_where_their_phase_runs(fleet):
    apps, lb, proj, cache = fleet
    for h in (*apps, lb):
        h.exec(["rm", "-f", HOOK_LOG])
    proj.commit("hooked", {"pages/message.txt": "hooked release\n"})
    proj.write_config(fleet_config(apps, lb, HOOKS), name="hooks.toml")
    res = run_fab(proj.root, "deploy", "--config", "hooks.toml", cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    rel = table(res.stdout)[lb.address][1]
    # the balancer: its phases' hooks (config once: the prepare invocation's site install), role lb, the
    # deployed release id; the lb-only table ran here, the app-only one did not
    assert hook_lines(lb) == [f"lb deploy {rel} {p}" for p in (
        "before_setup", "after_config", "before_restart lb-only", "after_restart", "after_cleanup")]
    # each app host: its own phases' hooks, role app; the lb-only table never ran on it
    for a in apps:
        assert hook_lines(a) == [f"app deploy {rel} {p}" for p in (
            "before_setup", "after_config", "before_switch",
            f"after_switch /srv/sample/releases/{rel} venv-ok", "after_restart", "before_cleanup app-only",
            "after_cleanup")], a

    # rollback of the app hosts: the switch hooks around its switch, the restart hooks around its reload, each
    # reading the release from `current` when it runs (before the switch: the abandoned one)
    for h in (*apps, lb):
        h.exec(["rm", "-f", HOOK_LOG])
    back = run_fab(proj.root, "rollback", "--config", "hooks.toml")
    assert back.returncode == 0, back.stdout + back.stderr
    for a in apps:
        target = os.path.basename(os.readlink(a.path("/srv/sample/current")))
        assert target != rel and f"{a.address}: rolled back to {target}" in back.stdout, back.stdout
        assert hook_lines(a) == [f"app rollback {rel} before_switch",
                                 f"app rollback {target} after_switch /srv/sample/releases/{target} venv-ok",
                                 f"app rollback {target} after_restart"], a
    assert hook_lines(lb) == []  # a rollback runs on app hosts only


def test_one_app_host_unreachable_switches_no_host(fleet):
    apps, lb, proj, cache = fleet
    before = whoami(lb)["release"]
    static_before = os.readlink(lb.path("/srv/sample/shared/static/current"))
    down = apps[2]
    os.kill(down.sshd_pid, signal.SIGTERM)  # connection refused from now on (last test of the module)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{down.sshd_pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    proj.commit("never live", {"pages/message.txt": "must not go live\n"})
    # ... with a config whose firewall would let another balancer address in (and so cut this one off):
    # nothing live changes before the switch, so the prepared app hosts keep their table
    moved = (proj.root / "deploy.toml").read_text().replace(
        f'lb = ["{lb.ssh_target()}"]', f'lb = [{{ host = "{lb.ssh_target()}", address = "10.213.249.2" }}]')
    assert moved != (proj.root / "deploy.toml").read_text()
    proj.write_config(moved, name="moved.toml")
    res = run_fab(proj.root, "deploy", "--config", "moved.toml", cache=cache)
    assert res.returncode == 1, res.stdout + res.stderr
    for a in apps[:2]:
        rules = a.exec("nft list table inet fabdeploy_sample").stdout
        assert f"ip saddr {lb.address} accept" in rules and "10.213.249.2" not in rules, rules
    rows = table(res.stdout)
    assert rows[down.address][3] == "FAILED" and "cannot connect" in " ".join(rows[down.address][4:])
    for h in (apps[0], apps[1], lb):
        assert rows[h.address][3] == "FAILED" and "not switched" in " ".join(rows[h.address][4:]), res.stdout
    assert {whoami(lb)["release"] for _ in range(9)} == {before}
    assert os.readlink(lb.path("/srv/sample/shared/static/current")) == static_before
    assert b"must not go live" not in get(lb, "/")[1]
