"""[tls] mode = "acme" on a lab host where systemd runs (PID 1): the renewal is a systemd timer, not a cron
entry. pebble (tests/pebblelab.py) runs in the host; the first deploy issues; the timer is enabled and
active, its service runs the renew script (`certbot renew`: nothing due, exit 0); a second deploy leaves the
units as they are."""
from __future__ import annotations

import pytest

import pebblelab
from conftest import make_project, run_fab, sample_config

NAME = "unit.lab.test"
UNIT = "fabdeploy-certbot-sample"


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    host = make_host("acmesd", init="systemd")
    pebblelab.start(host, [NAME], tmp_path_factory.mktemp("pebble"))
    proj = make_project(tmp_path_factory.mktemp("acmesd"))
    text = sample_config(host).replace(f'server_name = "{host.address}"', f'server_name = "{NAME}"')
    proj.write_config(text + f'[tls]\nmode = "acme"\nserver = "{pebblelab.DIRECTORY}"\n'
                             f'ca_bundle = "{pebblelab.CA_BUNDLE}"\n')
    return host, proj, wheel_cache


def test_the_renewal_is_a_systemd_timer_whose_service_runs_certbot_renew(site):
    host, proj, cache = site
    res = run_fab(proj.root, "deploy", cache=cache)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"ACME certificate sample issued for {NAME}" in out and f"GET / (Host: {NAME}) -> 200" in out
    assert host.systemctl("is-enabled", f"{UNIT}.timer").stdout.strip() == "enabled"
    assert host.systemctl("is-active", f"{UNIT}.timer").stdout.strip() == "active"
    assert not host.path("/etc/cron.d/fabdeploy_sample_certbot").exists()
    host.systemctl("start", f"{UNIT}.service", timeout=120)  # (oneshot: waits for certbot renew)
    shown = host.systemctl("show", f"{UNIT}.service", "-p", "Result", "-p", "ExecMainStatus").stdout
    assert "Result=success" in shown and "ExecMainStatus=0" in shown, shown
    res = run_fab(proj.root, "deploy", "--force", cache=cache)
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "ACME certificate sample kept" in out and "written" not in out, out
