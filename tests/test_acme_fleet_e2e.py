"""[tls] mode = "acme" in a fleet, on real lab hosts: one app host behind one, then two lb hosts, pebble
(tests/pebblelab.py) running in the first lb host.

- one balancer: it issues the certificate through its own webroot (the name resolves to it) and serves it;
  the app host gets no certificate, no certbot, no renewal;
- a second balancer and a second name that pebble resolves to the SECOND balancer: the first balancer (the
  issuer) expands the certificate, the CA's HTTP-01 request for the new name reaches the second balancer,
  which relays it to the issuer; both balancers then serve the same certificate (one fingerprint) for both
  names, valid with pebble's root; only the issuer runs certbot; `fab status` shows each balancer's expiry;
- a renewal on the issuer (its installed renew command) is served there (once nginx's new workers take over);
  the other balancer keeps the previous certificate until the next `fab deploy`, which copies the renewed one
  (the README's limit).

The tests run in order and build on each other.
"""
from __future__ import annotations

import re
import subprocess
import time

import pytest

import pebblelab
from conftest import make_project, run_fab
from test_lb_e2e import fleet_config

NAME, WWW = "fleet.lab.test", "www.fleet.lab.test"
RENEW = "/etc/fabdeploy/acme/sample/renew"


@pytest.fixture(scope="module")
def fleet(make_host, tmp_path_factory, wheel_cache):
    app, lb, lb2 = make_host("acmeapp"), make_host("acmelb"), make_host("acmelb2")
    pebblelab.start(lb, [NAME], tmp_path_factory.mktemp("pebble"))
    with lb.path("/etc/hosts").open("a") as f:  # (pebble's resolver: the new name is the second balancer's)
        f.write(f"{lb2.address} {WWW}\n")
    proj = make_project(tmp_path_factory.mktemp("acmefleet"))
    text = fleet_config([app], lb, f'[tls]\nmode = "acme"\nserver = "{pebblelab.DIRECTORY}"\n'
                                   f'ca_bundle = "{pebblelab.CA_BUNDLE}"\n')
    proj.write_config(text.replace(f'server_name = "{lb.address}"', f'server_name = "{NAME}"'))
    return app, lb, lb2, proj, wheel_cache, tmp_path_factory.mktemp("pebble-root") / "root.pem"


def served(host, root_pem, name: str) -> str:
    """The SHA-256 fingerprint of the certificate `host` serves for `name`, after curl verified it (pebble's
    root, the name) and got a 200."""
    got = subprocess.run(["curl", "-sS", "-o", "/dev/null", "--cacert", str(root_pem), "--resolve",
                          f"{name}:443:{host.address}", "-w", "%{http_code} %{ssl_verify_result}", f"https://{name}/"],
                         capture_output=True, text=True, timeout=30)
    assert got.returncode == 0 and got.stdout == "200 0", got.stdout + got.stderr
    res = subprocess.run(f"openssl s_client -connect {host.address}:443 -servername {name} </dev/null 2>/dev/null "
                         "| openssl x509 -noout -fingerprint -sha256", shell=True, capture_output=True, text=True,
                         timeout=30)
    assert res.stdout.startswith("sha256 Fingerprint="), res.stdout + res.stderr
    return res.stdout.strip()


def served_once(host, root_pem, name: str, done) -> str:
    """served(), asked again (at most 10 s) until done(fingerprint): `nginx -s reload` returns once the master
    has the signal, and its new workers take the new certificate a moment later (CI once met an old worker)."""
    seen = served(host, root_pem, name)
    deadline = time.monotonic() + 10
    while not done(seen) and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = served(host, root_pem, name)
    return seen


def test_the_balancer_issues_and_serves_the_certificate_and_the_app_host_has_none(fleet):
    app, lb, _, proj, cache, root_pem = fleet
    res = run_fab(proj.root, "deploy", cache=cache)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"ACME certificate sample issued for {NAME}" in out
    assert f"through the balancer: GET / (Host: {NAME}) -> 200" in out  # (https, certbot's chain trusted)
    pebblelab.issuing_root(lb, root_pem)
    served(lb, root_pem, NAME)
    assert lb.path("/etc/cron.d/fabdeploy_sample_certbot").exists()
    # the app host: no certificate, no renewal
    assert not app.path("/etc/letsencrypt/live/sample").exists()
    assert not app.path("/etc/cron.d/fabdeploy_sample_certbot").exists()
    assert not app.path("/etc/fabdeploy/acme").exists()
    res = run_fab(proj.root, "status", cache=cache)
    assert res.returncode == 0 and "certificate until" in res.stdout, res.stdout + res.stderr


def test_a_second_balancer_relays_the_challenge_and_both_serve_one_certificate(fleet):
    app, lb, lb2, proj, cache, root_pem = fleet
    config = proj.root / "deploy.toml"
    text = config.read_text().replace(f'lb = ["{lb.ssh_target()}"]', f'lb = ["{lb.ssh_target()}", "{lb2.ssh_target()}"]')
    config.write_text(text.replace(f'server_name = "{NAME}"', f'server_name = "{NAME} {WWW}"'))
    res = run_fab(proj.root, "deploy", cache=cache)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"ACME certificate sample issued for {NAME}, {WWW}" in out
    assert f"challenges are relayed to {lb.address}:80 (the issuer)" in out
    # the CA asked the second balancer for the new name's token; it came from the issuer's webroot
    relayed = [ln for ln in lb2.path("/var/log/nginx/sample.access.log").read_text().splitlines()
               if "/.well-known/acme-challenge/" in ln and '" 200 ' in ln]
    assert relayed, lb2.path("/var/log/nginx/sample.access.log").read_text()
    prints = {served(h, root_pem, n) for h in (lb, lb2) for n in (NAME, WWW)}
    assert len(prints) == 1, prints  # (one certificate, on both balancers, for both names)
    # only the issuer runs certbot; the other holds the pair root's (key 0600), as in files mode
    assert not lb2.path("/etc/letsencrypt/live/sample").exists() and not lb2.path("/etc/fabdeploy/acme").exists()
    assert lb2.path("/etc/fabdeploy/tls/sample/privkey.pem").stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" not in out
    res = run_fab(proj.root, "status", cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(re.findall(r"tls +certificate until \d{4}-\d\d-\d\d", res.stdout)) == 2, res.stdout


def test_a_renewal_on_the_issuer_reaches_the_other_balancer_at_the_next_deploy(fleet):
    app, lb, lb2, proj, cache, root_pem = fleet
    before = served(lb2, root_pem, NAME)
    res = lb.exec(f"timeout 100 {RENEW} --force-renewal --no-random-sleep-on-renew", timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    renewed = served_once(lb, root_pem, NAME, lambda fp: fp != before)
    assert renewed != before and served(lb2, root_pem, NAME) == before  # (the issuer's hook cannot reach lb2)
    res = run_fab(proj.root, "deploy", "--force", cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    assert served_once(lb2, root_pem, NAME, lambda fp: fp == renewed) == renewed == served(lb, root_pem, WWW)
    # the plan of the other balancer: the relay, then the issuer's pair installed as in files mode (no key text)
    res = run_fab(proj.root, "deploy", "--plan", cache=cache)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"ACME: {lb.ssh_target()} issues; its certificate and key are installed here" in out
    assert "remote invocation relay" in out and "PRIVATE KEY" not in out
