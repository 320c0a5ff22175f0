"""fab stop/start/restart/reload end to end (real fab, one real lab host): deploy once, then each task and
what the host shows afterwards. Last, a second host: `fab -H a,b stop|start` acts on both in one call (a row
each in the summary table). Tests run in order and build on each other."""
from __future__ import annotations

import json
import os
import re
import time
from types import SimpleNamespace

import pytest

from conftest import make_project, release_of, run_fab, sample_config
from test_load_e2e import Load

PIDFILE = "/srv/sample/shared/run/uwsgi.pid"


@pytest.fixture(scope="module")
def ctl(make_host, tmp_path_factory, wheel_cache):
    host = make_host("control")
    proj = make_project(tmp_path_factory.mktemp("control"))
    proj.write_config(sample_config(host))
    res = run_fab(proj.root, "deploy", cache=wheel_cache)
    assert res.returncode == 0, res.stdout + res.stderr
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache, release=release_of(res.stdout))


def fab(ctl, *args):
    return run_fab(ctl.proj.root, *args, cache=ctl.cache)


def uwsgi_pids(host) -> list[int]:
    """Every uWSGI process of the host (its network namespace), zombies excluded."""
    pids = []
    for pid in host.pids():
        try:
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            continue
        if re.search(r"^Name:\s+uwsgi$", status, re.M) and not re.search(r"^State:\s+Z", status, re.M):
            pids.append(pid)
    return sorted(pids)


def master(host) -> int:
    return int(host.path(PIDFILE).read_text().strip())


def workers(host) -> list[int]:
    m = master(host)
    return [p for p in uwsgi_pids(host) if p != m]


def cwd(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/cwd")


def page(host) -> tuple[int, str]:
    status, _, body = host.http("/", host_header=host.address)
    m = re.search(r"Release: (\S+)</p>", body.decode(errors="replace"))
    return status, m.group(1) if m else ""


def site_link(host):
    return host.path("/etc/nginx/sites-enabled/sample")


def test_stop_stops_every_uwsgi_process_and_the_site_answers_502(ctl):
    assert uwsgi_pids(ctl.host)
    res = fab(ctl, "stop")
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"stop\s+uwsgi stopped \(master \d+ and 2 workers gone\)", res.stdout), res.stdout
    assert f"{ctl.host.address}: stop ok in" in res.stdout
    assert uwsgi_pids(ctl.host) == []
    assert page(ctl.host)[0] == 502  # the nginx site stays
    assert site_link(ctl.host).is_symlink()
    status = fab(ctl, "status")
    assert "uWSGI DOWN" in status.stdout, status.stdout
    assert status.returncode == 1


def test_stopping_a_stopped_site_is_ok(ctl):
    res = fab(ctl, "stop")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "uwsgi already stopped" in res.stdout


def test_start_serves_the_current_release(ctl):
    res = fab(ctl, "start")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"uwsgi started (master {master(ctl.host)}, 2 workers on {ctl.release})" in res.stdout
    assert re.search(r"health\s+GET / \(Host: [\d.]+\) -> 200", res.stdout), res.stdout
    assert page(ctl.host) == (200, ctl.release)
    ws = workers(ctl.host)
    assert len(ws) == 2 and {cwd(w) for w in ws} == {f"/srv/sample/releases/{ctl.release}"}


def test_reload_puts_new_workers_on_the_release(ctl):
    m, before = master(ctl.host), workers(ctl.host)
    res = fab(ctl, "reload")
    assert res.returncode == 0, res.stdout + res.stderr
    # (no process manager: a fresh master of the live release beside the old one, then the socket swap)
    assert re.search(rf"uwsgi started beside {m}, swapped \(master \d+, 2 workers on {ctl.release}\)", res.stdout), res.stdout
    # the replaced master (the same release: never kept warm) stops gracefully, without the reload waiting
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{m}") and time.monotonic() < deadline:
        time.sleep(0.2)
    after = workers(ctl.host)
    assert master(ctl.host) != m and len(after) == 2 and not set(after) & set(before)
    assert {cwd(w) for w in after} == {f"/srv/sample/releases/{ctl.release}"}
    assert page(ctl.host) == (200, ctl.release)


def test_restart_gives_a_new_master(ctl):
    old = master(ctl.host)
    res = fab(ctl, "restart")
    assert res.returncode == 0, res.stdout + res.stderr
    new = master(ctl.host)
    assert new != old and old not in uwsgi_pids(ctl.host)
    assert f"uwsgi stopped (master {old} and 2 workers gone)" in res.stdout
    assert page(ctl.host) == (200, ctl.release)


def test_stop_nginx_takes_the_site_out_and_start_nginx_puts_it_back(ctl):
    res = fab(ctl, "stop", "--nginx")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "nginx site taken out (/etc/nginx/sites-enabled/sample removed)" in res.stdout
    assert not site_link(ctl.host).is_symlink() and ctl.host.path("/etc/nginx/sites-available/sample").exists()
    assert ctl.host.exec("nginx -t", check=False).returncode == 0
    assert uwsgi_pids(ctl.host) == []
    # a plain start does not put the site back: it says so instead of failing the check
    plain = fab(ctl, "start")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "health check skipped: the nginx site is out (fab start --nginx puts it back)" in plain.stdout
    assert not site_link(ctl.host).is_symlink()
    res = fab(ctl, "start", "--nginx")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "uwsgi already running" in res.stdout and "nginx site put back" in res.stdout
    assert site_link(ctl.host).is_symlink()
    assert page(ctl.host) == (200, ctl.release)


def test_reload_under_load_drops_no_request(ctl):
    with Load(ctl.host.address) as load:
        time.sleep(1)
        for _ in range(3):
            res = fab(ctl, "reload")
            assert res.returncode == 0, res.stdout + res.stderr
            time.sleep(0.5)
        time.sleep(0.5)
    samples = load.samples
    failed = [s for s in samples if s.status is None or not 200 <= s.status < 300]
    assert len(samples) > 50
    assert failed == [], failed[:5]
    assert {s.release for s in samples} == {ctl.release}


def test_each_task_took_the_lock_and_wrote_an_audit_line(ctl):
    lines = [json.loads(ln) for ln in ctl.host.path("/srv/sample/shared/log/audit.jsonl").read_text().splitlines()]
    actions = [(ln["action"], ln["result"], ln.get("release")) for ln in lines if ln["action"] != "deploy"]
    assert actions[:6] == [(a, "ok", ctl.release) for a in ("stop", "stop", "start", "reload", "restart", "stop")]
    assert not ctl.host.path("/srv/sample/.fabdeploy-lock").exists()


def test_a_deploy_holding_the_lock_refuses_stop(ctl):
    ctl.host.path("/srv/sample/.fabdeploy-lock").mkdir()
    try:
        res = fab(ctl, "stop")
        assert res.returncode == 1
        err = res.stderr.strip().splitlines()
        assert len(err) == 1 and "deploy lock held by" in err[0] and "Traceback" not in res.stderr, res.stderr
        assert uwsgi_pids(ctl.host)  # still running
    finally:
        ctl.host.path("/srv/sample/.fabdeploy-lock").rmdir()


@pytest.fixture(scope="module")
def second(ctl, make_host):
    """A second app host; the project deployed to both in one call (nginx answers to both addresses)."""
    b = make_host("control-b")
    cfg = sample_config(ctl.host).replace(f'server_name = "{ctl.host.address}"',
                                          f'server_name = "{ctl.host.address} {b.address}"')
    ctl.proj.write_config(cfg)
    res = fab(ctl, "-H", f"{ctl.host.ssh_target()},{b.ssh_target()}", "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    ctl.release = release_of(res.stdout)
    return b


def rows(out: str, action: str) -> dict[str, str]:
    """The summary table's rows: the host's address -> DETAIL (RESULT ok)."""
    lines = out.splitlines()
    head = [i for i, ln in enumerate(lines) if re.fullmatch(r"HOST\s+ACTION\s+DURATION\s+RESULT\s+DETAIL", ln)]
    assert len(head) == 1, out
    found = {}
    for ln in lines[head[0] + 1:]:
        m = re.fullmatch(rf"\S*?(\d+\.\d+\.\d+\.\d+)\S*\s+{action}\s+\d+\.\ds\s+ok\s+(.*)", ln)
        if not m:
            break
        found[m.group(1)] = m.group(2)
    return found


def test_stop_and_start_two_hosts_in_one_call(ctl, second):
    a, b = ctl.host, second
    both = f"{a.ssh_target()},{b.ssh_target()}"
    assert uwsgi_pids(a) and uwsgi_pids(b)
    res = fab(ctl, "-H", both, "stop")
    assert res.returncode == 0, res.stdout + res.stderr
    table = rows(res.stdout, "stop")
    assert sorted(table) == sorted([a.address, b.address]), res.stdout
    assert all(re.fullmatch(r"uwsgi stopped \(master \d+ and 2 workers gone\)", d) for d in table.values()), table
    assert uwsgi_pids(a) == [] and uwsgi_pids(b) == []
    assert page(a)[0] == 502 and b.http("/", host_header=b.address)[0] == 502

    res = fab(ctl, "-H", both, "stop")
    assert res.returncode == 0, res.stdout + res.stderr
    assert rows(res.stdout, "stop") == {a.address: "uwsgi already stopped", b.address: "uwsgi already stopped"}, \
        res.stdout

    res = fab(ctl, "-H", both, "start")
    assert res.returncode == 0, res.stdout + res.stderr
    table = rows(res.stdout, "start")
    assert sorted(table) == sorted([a.address, b.address]), res.stdout
    for host in (a, b):
        m = re.match(rf"uwsgi started \(master (\d+), 2 workers on {ctl.release}\)", table[host.address])
        assert m and int(m.group(1)) == master(host), table
        status, _, body = host.http("/", host_header=host.address)
        assert status == 200 and f"Release: {ctl.release}" in body.decode(), body[:300]
        assert {cwd(w) for w in workers(host)} == {f"/srv/sample/releases/{ctl.release}"}


def test_a_script_over_128_kib_runs_over_ssh(ctl):
    """The runner's one channel with a script over Linux's 128 KiB limit of one argument (sshd runs the command
    with `$SHELL -c`): sent packed, it runs on the host with its stdin, phases and exit status
    (test_script_pack.py shows it as unit)."""
    from fabric import Connection

    import hostlab
    from fabdeploy.remote.runner import run_script
    from test_script_pack import big_script

    script = big_script()
    assert len(script.text()) > 131072
    conn = Connection(ctl.host.ssh_target(), connect_kwargs={"key_filename": [str(hostlab.client_key())],
                                                             "look_for_keys": False, "allow_agent": False})
    conn.client.load_host_keys(str(hostlab.known_hosts()))
    try:
        conn.open()
        res = run_script(conn, script, host=ctl.host.address, stdin=b"x" * 100_000, timeout=120)
    finally:
        conn.close()
    assert res.rc == 0 and [p.rc for p in res.phases.values()] == [0, 0]
    assert res.phases["big"].stdout == ["stdin: 100000", "done"] and res.phases["after"].stdout == ["after"]
