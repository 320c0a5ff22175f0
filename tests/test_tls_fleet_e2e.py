"""HTTPS in a fleet, on real lab hosts: one app host (uWSGI over TCP, no nginx of its own) behind one lb host
that terminates TLS with [tls] mode = "files" (a CA and a leaf made here with openssl).

- the balancer serves https with a valid chain and HTTP/2 (its health check spoke https with the chain's CA),
  redirects plain http except the ACME path, and the app sees the request as secure (X-Forwarded-Proto from
  the balancer: request.is_secure() in the sample project's /whoami);
- the app host has no certificate and no https of its own.
"""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from conftest import make_project, run_fab
from test_lb_e2e import fleet_config
from tlscerts import make_certs

NAME = "fleet.lab.test"


@pytest.fixture(scope="module")
def fleet(make_host, tmp_path_factory, wheel_cache):
    app, lb = make_host("tlsapp"), make_host("tlslb")
    proj = make_project(tmp_path_factory.mktemp("tlsfleet"))
    certs = make_certs(proj.root / "certs", [NAME])
    text = fleet_config([app], lb, '[tls]\nmode = "files"\ncertificate = "certs/leaf-chain.pem"\n'
                                   'key = "certs/leaf.key"\n')
    proj.write_config(text.replace(f'server_name = "{lb.address}"', f'server_name = "{NAME}"'))
    return app, lb, proj, certs, wheel_cache


def test_the_balancer_terminates_tls_and_the_app_sees_https(fleet):
    app, lb, proj, certs, cache = fleet
    res = run_fab(proj.root, "deploy", cache=cache)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"through the balancer: GET / (Host: {NAME}) -> 200" in out  # (https, the chain's CA trusted)
    assert set(re.findall(r"\(security\.(W0\d\d)\)", out)) == {"W004"}, out

    got = subprocess.run(["curl", "-sS", "--http2", "--cacert", str(certs.ca), "--resolve", f"{NAME}:443:{lb.address}",
                          "-w", r"\n%{http_version} %{http_code} %{ssl_verify_result}", f"https://{NAME}/whoami"],
                         capture_output=True, text=True, timeout=30)
    assert got.returncode == 0, got.stderr
    body, _, info = got.stdout.rpartition("\n")
    assert info == "2 200 0", info
    seen = json.loads(body)
    assert seen["secure"] is True and seen["socket"] == f"{app.address}:8001", seen  # (served by the app host)

    status, headers, _ = lb.http("/whoami", host_header=NAME)
    assert (status, headers["location"]) == (301, f"https://{NAME}/whoami")
    lb.path("/srv/sample/shared/acme/.well-known/acme-challenge/t1").write_text("t1.key")
    assert lb.http("/.well-known/acme-challenge/t1", host_header=NAME)[::2] == (200, b"t1.key")

    # the certificate lives on the balancer only; the app host has no https and no key
    assert lb.path("/etc/fabdeploy/tls/sample/privkey.pem").stat().st_mode & 0o777 == 0o600
    assert not app.path("/etc/fabdeploy/tls/sample").exists()


def test_an_app_host_with_its_own_nginx_trusts_x_forwarded_proto_from_the_balancers_only(fleet):
    app, lb, proj, certs, cache = fleet
    config = proj.root / "deploy.toml"
    config.write_text(config.read_text() + "[balancer]\napp_nginx = true\n")
    res = run_fab(proj.root, "deploy", cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    ask = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "-H", f"Host: {NAME}",
           "-H", "X-Forwarded-Proto: https", f"http://{app.address}/whoami"]
    # from the balancer: its header passes, Django sees https and answers
    assert lb.exec(ask).stdout == "200 ", lb.exec(ask).stdout
    # from anyone else (this machine): the app host's nginx says http, so Django redirects to https
    got = subprocess.run(ask, capture_output=True, text=True, timeout=30)
    assert got.stdout == f"301 https://{NAME}/whoami", got.stdout + got.stderr
