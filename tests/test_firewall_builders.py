"""The app host's uWSGI port behind load balancers (issue 11.13): balancer names resolved on the host into
IPv4 and IPv6 rules that real nft accepts, and balancer.port refused when another program listens on it.
Run for real with /bin/sh (root: a private mount namespace gives the script its own /etc/hosts)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from fabdeploy.appserver.uwsgi import UWSGI as UwsgiServer
from fabdeploy.front import firewall

from fabdeploy.hosts import roles

from fabdeploy.front import firewall
from fabdeploy.hosts.layout import Layout
from fabdeploy.remote.markers import MARK
from fabdeploy.remote.script import Phase, Script
from fabdeploy.remote.shell import q
from test_phases import err, fakebin, make_cfg, out  # noqa: F401 (a fixture)
from test_roles import lb_cfg

HOSTS = "127.0.0.1 localhost\n10.9.9.9 lb.example.test\nfd00::9 lb.example.test\nfd00::8 lb6.example.test\n"


def run_with_hosts(tmp_path, lines: list[str], env: dict) -> subprocess.CompletedProcess:
    """The lines as one phase, in a mount namespace whose /etc/hosts is HOSTS."""
    (tmp_path / "hosts").write_text(HOSTS)
    script = Script([Phase("config", lines)])
    wrapper = f"mount --bind {q(str(tmp_path / 'hosts'))} /etc/hosts && {script.command()}"
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", wrapper], cwd=tmp_path,
                          capture_output=True, env={**os.environ, **env}, timeout=60)


def errors(proc) -> list[str]:
    return [ln for ln in err(proc).splitlines() if ln.startswith(f"{MARK} error ")]


def test_literal_and_named_balancers_become_v4_and_v6_rules_nft_accepts(tmp_path, fakebin):
    cfg = lb_cfg(lb=("deploy@10.0.0.10", {"host": "deploy@lb2", "address": "lb.example.test"},
                     {"host": "deploy@lb3", "address": "lb6.example.test"}, {"host": "deploy@lb4", "address": "[fd00::7]"}),
                 paths={"deploy_to": str(tmp_path / "srv")})
    (tmp_path / "srv/shared/config").mkdir(parents=True)  # (where root's nft reads the staged rules)
    assert firewall.lb_sources(cfg) == (["10.0.0.10"], ["fd00::7"], ["lb.example.test", "lb6.example.test"])
    app = roles.servers(cfg)[0]
    proc = run_with_hosts(tmp_path, firewall.firewall(cfg, app, str(tmp_path)), fakebin.env)
    assert proc.returncode == 0, err(proc)
    rules = (tmp_path / "firewall.nft").read_text()
    assert "tcp dport 8001 ip saddr { 10.0.0.10 } accept" in rules
    assert "tcp dport 8001 ip6 saddr { fd00::7 } accept" in rules
    assert "insert rule inet fabdeploy_shop input tcp dport 8001 ip saddr { 10.9.9.9 } accept" in rules
    assert "insert rule inet fabdeploy_shop input tcp dport 8001 ip6 saddr { fd00::8,fd00::9 } accept" in rules
    assert "lb.example.test" not in rules  # nft never resolves a name itself
    assert f"-n /usr/sbin/nft -c -f {tmp_path}/srv/shared/config/firewall.nft" in fakebin.log()  # (checked by the real nft: a failure would have stopped it)
    assert f"{MARK} note load balancer names resolved here: 10.9.9.9, fd00::8, fd00::9" in out(proc)


def test_a_balancer_name_that_does_not_resolve_is_one_line(tmp_path, fakebin):
    cfg = lb_cfg(lb=({"host": "deploy@lb2", "address": "nowhere.invalid"},))
    proc = run_with_hosts(tmp_path, firewall.firewall(cfg, roles.servers(cfg)[0], str(tmp_path)), fakebin.env)
    assert proc.returncode == 1
    assert errors(proc) == [f"{MARK} error load balancer nowhere.invalid does not resolve on this host (getent "
                            "ahosts nowhere.invalid): its firewall could not let it in to uWSGI port 8001; give "
                            "its address in roles.lb (address = ...) or fix the name"]
    assert "nft -c" not in fakebin.log()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_cfg(tmp_path, port: int):
    return lb_cfg(paths={"deploy_to": str(tmp_path / "app")}, balancer={"port": port})


def run(tmp_path, lines):
    return subprocess.run(Script([Phase("config", lines)]).command(), shell=True, cwd=tmp_path,
                          capture_output=True, timeout=60)


def test_a_port_another_program_listens_on_is_refused_naming_it(tmp_path):
    with socket.socket(socket.AF_INET6) as s:  # (any address, IPv6 too)
        s.bind(("::1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run(tmp_path, firewall.port_free(port_cfg(tmp_path, port)))
    assert proc.returncode == 1
    (line,) = errors(proc)
    comm = open("/proc/self/comm").read().strip()
    assert line == (f"{MARK} error balancer.port {port} is in use on this host by {comm} (pid {os.getpid()}), "
                    "not by this site's uWSGI: choose another balancer.port")


def test_a_free_port_and_our_own_uwsgi_on_it_pass(tmp_path):
    port = free_port()
    cfg = port_cfg(tmp_path, port)
    assert run(tmp_path, firewall.port_free(cfg)).returncode == 0
    # "our uWSGI": a process named uwsgi, the pid in shared/run/uwsgi.pid, holding the listening socket
    fake = tmp_path / "uwsgi"
    shutil.copy(sys.executable, fake)
    pidfile = UwsgiServer().paths(Layout(cfg.paths.deploy_to)).pidfile
    os.makedirs(os.path.dirname(pidfile))
    code = textwrap.dedent(f"""\
        import os, socket, time
        s = socket.socket(); s.bind(("127.0.0.1", {port})); s.listen()
        open({pidfile!r}, "w").write(str(os.getpid())); time.sleep(60)
        """)
    proc = subprocess.Popen([str(fake), "-c", code])
    try:
        for _ in range(100):
            if os.path.exists(pidfile) and os.path.getsize(pidfile):
                break
            time.sleep(0.1)
        res = run(tmp_path, firewall.port_free(cfg))
        assert res.returncode == 0, err(res)
        os.remove(pidfile)  # a uWSGI that is not this site's is another program
        res = run(tmp_path, firewall.port_free(cfg))
        assert res.returncode == 1 and f"in use on this host by uwsgi (pid {proc.pid})" in err(res)
    finally:
        proc.kill()
        proc.wait()


def test_the_port_is_checked_on_balanced_app_hosts_only():
    cfg = lb_cfg()
    app, lb = roles.servers(cfg)[0], roles.servers(cfg)[-1]
    assert firewall.port_check(cfg, app) == firewall.port_free(cfg)
    assert firewall.port_check(cfg, lb) == []
    single = make_cfg(project={"hosts": ["deploy@10.0.0.1"]})  # no balancer: uWSGI on its unix socket
    assert firewall.port_check(single, roles.servers(single)[0]) == []
