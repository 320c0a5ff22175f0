"""[tls] mode = "acme" in a fleet, on real lab hosts: one app host behind one lb host, pebble
(tests/pebblelab.py) running in the lb host. The balancer issues the certificate through its own webroot
(the name resolves to it) and serves it; the app host gets no certificate, no certbot, no renewal."""
from __future__ import annotations

import subprocess

import pytest

import pebblelab
from conftest import make_project, run_fab
from test_lb_e2e import fleet_config

NAME = "fleet.lab.test"


@pytest.fixture(scope="module")
def fleet(make_host, tmp_path_factory, wheel_cache):
    app, lb = make_host("acmeapp"), make_host("acmelb")
    pebblelab.start(lb, [NAME], tmp_path_factory.mktemp("pebble"))
    proj = make_project(tmp_path_factory.mktemp("acmefleet"))
    text = fleet_config([app], lb, f'[tls]\nmode = "acme"\nserver = "{pebblelab.DIRECTORY}"\n'
                                   f'ca_bundle = "{pebblelab.CA_BUNDLE}"\n')
    proj.write_config(text.replace(f'server_name = "{lb.address}"', f'server_name = "{NAME}"'))
    return app, lb, proj, wheel_cache, tmp_path_factory.mktemp("pebble-root") / "root.pem"


def test_the_balancer_issues_and_serves_the_certificate_and_the_app_host_has_none(fleet):
    app, lb, proj, cache, root_pem = fleet
    res = run_fab(proj.root, "deploy", cache=cache)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"ACME certificate sample issued for {NAME}" in out
    assert f"through the balancer: GET / (Host: {NAME}) -> 200" in out  # (https, certbot's chain trusted)
    pebblelab.issuing_root(lb, root_pem)
    got = subprocess.run(["curl", "-sS", "-o", "/dev/null", "--cacert", str(root_pem), "--resolve",
                          f"{NAME}:443:{lb.address}", "-w", "%{http_code} %{ssl_verify_result}", f"https://{NAME}/"],
                         capture_output=True, text=True, timeout=30)
    assert got.returncode == 0 and got.stdout == "200 0", got.stdout + got.stderr
    assert lb.path("/etc/cron.d/fabdeploy_sample_certbot").exists()
    # the app host: no certificate, no renewal
    assert not app.path("/etc/letsencrypt/live/sample").exists()
    assert not app.path("/etc/cron.d/fabdeploy_sample_certbot").exists()
    assert not app.path("/etc/fabdeploy/acme").exists()
    res = run_fab(proj.root, "status", cache=cache)
    assert res.returncode == 0 and "certificate until" in res.stdout, res.stdout + res.stderr
