"""The app host's uWSGI port behind a load balancer, on real hosts (issue 11.13; one app host, one balancer):

- a balancer given by host name: resolved on the app host into IPv4 and IPv6 nft rules (nft itself would
  resolve it once, IPv4 only); a name that does not resolve stops the deploy with one line naming it;
- balancer.port in use by another program on the app host: refused with one line naming host, port and
  program, in the setup phase (before anything is uploaded, migrated or changed); our own uWSGI holding it
  (a redeploy) is fine.
"""
from __future__ import annotations

import re
import subprocess
from types import SimpleNamespace

import pytest

from conftest import make_project, release_of, run_fab, sample_config

LB_NAME = "lb.fabdeploy.test"
LB_V6 = "fd00:213::9"


def config(app, lb, lb_address: str, extra: str = "") -> str:
    base = sample_config(lb).replace(f'hosts = ["{lb.ssh_target()}"]\n', "")
    return (base + f'[roles]\napp = ["{app.ssh_target()}"]\n'
            f'lb = [{{host = "{lb.ssh_target()}", address = "{lb_address}"}}]\n' + extra)


@pytest.fixture(scope="module")
def fleet(make_host, tmp_path_factory, wheel_cache):
    app, lb = make_host("fwapp"), make_host("fwlb")
    # the app host's own /etc/hosts (in its mount namespace only) names the balancer, IPv4 and IPv6
    app.exec(f"cp /etc/hosts /srv/hosts.lab && printf '%s {LB_NAME}\\n{LB_V6} {LB_NAME}\\n' {lb.address} "
             ">> /srv/hosts.lab && mount --bind /srv/hosts.lab /etc/hosts")
    proj = make_project(tmp_path_factory.mktemp("fw"))
    proj.write_config(config(app, lb, LB_NAME))
    proj.write_config(config(app, lb, "nowhere.invalid"), name="unresolved.toml")
    proj.write_config(config(app, lb, LB_NAME, "[balancer]\nport = 8002\n"), name="port.toml")
    return SimpleNamespace(app=app, lb=lb, proj=proj, cache=wheel_cache)


def fab(fleet, *args):
    return run_fab(fleet.proj.root, *args, cache=fleet.cache)


def served_release(fleet) -> str:
    status, _, body = fleet.lb.http("/", host_header=fleet.lb.address)
    assert status == 200, body[:300]
    return re.search(rb"Release: ([0-9]{8}T[0-9]{6}Z-[0-9a-f]+)", body).group(1).decode()


def nft_table(fleet) -> str:
    return fleet.app.exec("nft list table inet fabdeploy_sample").stdout


def test_1_a_balancer_name_that_does_not_resolve_is_one_line(fleet):
    res = fab(fleet, "deploy", "--config", "unresolved.toml")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Traceback" not in out, out
    assert (f"{fleet.app.address}: config failed: load balancer nowhere.invalid does not resolve on this host "
            "(getent ahosts nowhere.invalid)") in out, out
    assert not fleet.app.path("/srv/sample/current").exists()


def test_2_a_balancer_name_becomes_ipv4_and_ipv6_rules(fleet):
    res = fab(fleet, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    rel = release_of(res.stdout)
    table = nft_table(fleet)
    assert re.search(rf"tcp dport 8001 ip saddr {re.escape(fleet.lb.address)} accept", table), table
    assert re.search(rf"tcp dport 8001 ip6 saddr {re.escape(LB_V6)} accept", table), table
    assert LB_NAME not in table
    assert f"load balancer names resolved here: {fleet.lb.address}, {LB_V6}" in res.stdout
    assert served_release(fleet) == rel  # the balancer reaches uWSGI through the firewall
    # a redeploy: our own uWSGI holds the port, which is fine
    again = fab(fleet, "deploy", "--force")
    assert again.returncode == 0, again.stdout + again.stderr
    assert served_release(fleet) == release_of(again.stdout)


def test_3_a_port_another_program_listens_on_is_refused_before_anything_changes(fleet):
    live = served_release(fleet)
    table = nft_table(fleet)
    releases = sorted(p.name for p in fleet.app.path("/srv/sample/releases").iterdir())
    listener = subprocess.Popen(["ip", "netns", "exec", fleet.app.netns, "python3", "-m", "http.server", "8002", "--bind", "0.0.0.0"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        fleet.app.exec("for i in $(seq 50); do ss -ltnH 'sport = :8002' | grep -q . && exit 0; sleep 0.1; done; "
                       "exit 1")
        fleet.proj.commit("port", {"pages/message.txt": "port 8002\n"})
        res = fab(fleet, "deploy", "--config", "port.toml")
        out = res.stdout + res.stderr
        assert res.returncode != 0 and "Traceback" not in out, out
        assert (f"{fleet.app.address}: setup failed: balancer.port 8002 is in use on this host by python3 "
                f"(pid {listener.pid}), not by this site's uWSGI: choose another balancer.port") in out, out
        assert served_release(fleet) == live
        assert nft_table(fleet) == table
        assert sorted(p.name for p in fleet.app.path("/srv/sample/releases").iterdir()) == releases
        assert not fleet.app.path("/srv/sample/.fabdeploy-lock").exists()
        assert "8002" not in fleet.app.path("/srv/sample/shared/config/uwsgi.ini").read_text()
    finally:
        listener.kill()
        listener.wait()
