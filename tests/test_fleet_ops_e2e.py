"""Two hosts from deploy.toml: one deploy for both (same release id, in parallel), logs merged with a host
prefix, and `fab status` flagging drift when one host is rolled back alone."""
from __future__ import annotations

import re

import pytest

from conftest import make_project, run_fab, sample_config


@pytest.fixture(scope="module")
def fleet(make_host, tmp_path_factory, wheel_cache):
    a, b = make_host("fleet-a"), make_host("fleet-b")
    proj = make_project(tmp_path_factory.mktemp("fleet"))
    cfg = sample_config(a).replace(f'hosts = ["{a.ssh_target()}"]', f'hosts = ["{a.ssh_target()}", "{b.ssh_target()}"]')
    cfg = cfg.replace(f'server_name = "{a.address}"', f'server_name = "{a.address} {b.address}"')
    proj.write_config(cfg)
    return a, b, proj, wheel_cache


def page(host) -> bytes:
    status, _, body = host.http("/", host_header=host.address)
    assert status == 200
    return body


def test_one_deploy_for_both_hosts_with_the_same_release(fleet):
    a, b, proj, cache = fleet
    res = run_fab(proj.root, "deploy", cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    ids = set(re.findall(r"deployed (\S+) in", res.stdout))
    assert len(ids) == 1 and re.search(rf"^{re.escape(a.address)}: deployed", res.stdout, re.M) \
        and re.search(rf"^{re.escape(b.address)}: deployed", res.stdout, re.M)
    rel = ids.pop()
    assert f"Release: {rel}".encode() in page(a) and f"Release: {rel}".encode() in page(b)
    proj.commit("second", {"pages/message.txt": "fleet second\n"})
    res = run_fab(proj.root, "deploy", cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    assert b"fleet second" in page(a) and b"fleet second" in page(b)


def test_logs_are_merged_with_the_host_prefix(fleet):
    a, b, proj, cache = fleet
    res = run_fab(proj.root, "logs", "-n", "3", "--which", "access")
    assert res.returncode == 0, res.stderr
    hosts = set(re.findall(r"^(\S+)\s+access\s+\|", res.stdout, re.M))
    assert hosts == {a.address, b.address}


def test_status_flags_drift(fleet):
    a, b, proj, cache = fleet
    res = run_fab(proj.root, "status")
    assert res.returncode == 0 and "DRIFT" not in res.stdout, res.stdout
    res = run_fab(proj.root, "-H", b.ssh_target(), "rollback", cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    res = run_fab(proj.root, "status")
    assert "DRIFT: hosts are not on the same release" in res.stdout, res.stdout
    assert a.address in res.stdout.split("DRIFT")[1] and b.address in res.stdout.split("DRIFT")[1]


def test_parallel_dash_h_with_the_fleet_executor(fleet):
    """With fabric.yaml selecting FleetExecutor, `fab -H a,b deploy` is one two-phase deploy of both hosts
    (Fabric alone would call the task once per host, one after another)."""
    a, b, proj, cache = fleet
    (proj.root / "fabric.yaml").write_text("tasks:\n  executor_class: fabdeploy.executor.FleetExecutor\n")
    try:
        proj.commit("dash-h", {"pages/message.txt": "deployed with -H a,b\n"})
        res = run_fab(proj.root, "-H", f"{a.ssh_target()},{b.ssh_target()}", "deploy", cache=cache)
        assert res.returncode == 0, res.stdout + res.stderr
        ids = set(re.findall(r"deployed (\S+) in", res.stdout))
        assert len(ids) == 1
        table = res.stdout[res.stdout.index("HOST "):].splitlines()
        assert table[0].split() == ["HOST", "RELEASE", "DURATION", "RESULT", "ERROR"]
        assert sorted(line.split()[0] for line in table[1:]) == sorted([a.address, b.address])
        assert all(line.split()[3] == "ok" for line in table[1:])
        assert b"deployed with -H a,b" in page(a) and b"deployed with -H a,b" in page(b)
    finally:
        (proj.root / "fabric.yaml").unlink()
