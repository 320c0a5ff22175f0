"""[tls] mode = "acme" on one real lab host with a local ACME server (pebble, tests/pebblelab.py) running in
that host: certbot on the host issues through the site's webroot on port 80.

- a name the CA cannot validate stops the deploy with certbot's one-line reason;
- the first deploy issues (the http-only site goes live first, then the https one): curl with pebble's
  issuing root and --resolve sees a valid chain for the name; the renewal is installed (a cron.d entry: the
  lab host runs no systemd); `fab status` shows the expiry;
- a forced renewal through the installed renewal command gives a new serial and nginx serves it (the deploy
  hook reloaded it);
- a second deploy does not re-issue;
- a second name: the next deploy expands the certificate (the same cert-name) and serves it;
- the deploy user limited to `fab sudoers`' drop-in: a deploy that drops a name re-issues, sudo refuses
  nothing; another tls.server replaces the certificate at once (certbot alone would keep it until due).

The tests run in order and build on each other.
"""
from __future__ import annotations

import re
import subprocess
import time
from types import SimpleNamespace

import pytest

import hostlab
import pebblelab
from conftest import make_project, run_fab, sample_config
from test_sudoers_e2e import LOGGING, SUDO_LOG, denials, install_drop_in

NAME, WWW, BROKEN = "shop.lab.test", "www.shop.lab.test", "broken.lab.test"
RENEW = "/etc/fabdeploy/acme/sample/renew"


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    host = make_host("acme")
    proj = make_project(tmp_path_factory.mktemp("acmeproj"))
    pebblelab.start(host, [NAME, WWW], tmp_path_factory.mktemp("pebble"))
    site = SimpleNamespace(host=host, proj=proj, cache=wheel_cache, root=None, serial="")
    write(site, NAME)
    return site


def write(site, names: str, name: str = "deploy.toml", server: str = pebblelab.DIRECTORY) -> None:
    text = sample_config(site.host).replace(f'server_name = "{site.host.address}"', f'server_name = "{names}"')
    site.proj.write_config(text + f'[tls]\nmode = "acme"\nemail = "ops@lab.test"\nserver = "{server}"\n'
                           f'ca_bundle = "{pebblelab.CA_BUNDLE}"\n', name=name)


def fab(site, *args, config="deploy.toml"):
    res = run_fab(site.proj.root, *args, "--config", config, cache=site.cache)
    return res, res.stdout + res.stderr


def served(site, name=NAME) -> dict:
    """What curl sees over https for `name` (pebble's root trusted): verify result, and the served
    certificate's serial and names (openssl s_client)."""
    res = subprocess.run(["curl", "-sS", "-o", "/dev/null", "--cacert", str(site.root), "--resolve",
                          f"{name}:443:{site.host.address}", "-w", "%{http_code} %{ssl_verify_result}",
                          f"https://{name}/"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    cert = subprocess.run(f"openssl s_client -connect {site.host.address}:443 -servername {name} </dev/null "
                          "2>/dev/null | openssl x509 -noout -serial -ext subjectAltName", shell=True,
                          capture_output=True, text=True, timeout=30).stdout
    return {"curl": res.stdout, "serial": re.search(r"serial=(\w+)", cert).group(1),
            "names": sorted(re.findall(r"DNS:([\w.-]+)", cert))}


def issued(site) -> int:
    """How many certificates certbot has written for the lineage (archive/sample/certN.pem)."""
    return len(list(site.host.path("/etc/letsencrypt/archive/sample").glob("cert*.pem")))


def test_0_a_name_the_ca_cannot_validate_stops_the_deploy_in_one_line(site):
    # (pebble resolves it to an address where no site answers: the challenge fails)
    with site.host.path("/etc/hosts").open("a") as f:
        f.write(f"192.0.2.1 {BROKEN}\n")
    write(site, BROKEN, name="broken.toml")
    res, out = fab(site, "deploy", config="broken.toml")
    assert res.returncode == 1, out
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out  # (one line, with the CA's reason)
    assert f"certbot could not get a certificate for {BROKEN} from {pebblelab.DIRECTORY}" in lines[0], out
    assert "192.0.2.1:80" in lines[0] and "Traceback" not in out
    assert not site.host.path("/etc/letsencrypt/live/sample").exists()


def test_1_the_first_deploy_issues_the_certificate_and_nginx_serves_it(site, tmp_path_factory):
    res, out = fab(site, "deploy")
    assert res.returncode == 0, out
    assert f"ACME certificate sample issued for {NAME} by {pebblelab.DIRECTORY}" in out
    assert f"GET / (Host: {NAME}) -> 200" in out  # (the health check, https, the chain checked)
    site.root = pebblelab.issuing_root(site.host, tmp_path_factory.mktemp("pebble-root") / "root.pem")
    seen = served(site)
    assert seen["curl"] == "200 0" and seen["names"] == [NAME], seen  # (a valid chain for the name)
    site.serial = seen["serial"]
    assert issued(site) == 1
    # the renewal: a cron.d entry running the renew script (no systemd in this lab host), root's
    cron = site.host.path("/etc/cron.d/fabdeploy_sample_certbot").read_text()
    assert f"root {RENEW} -q" in cron
    assert "--deploy-hook /etc/fabdeploy/acme/sample/deploy-hook" in site.host.path(RENEW).read_text()
    # plain http still redirects (the challenge path excepted)
    status, headers, _ = site.host.http("/", host_header=NAME)
    assert (status, headers["location"]) == (301, f"https://{NAME}/")


def test_2_fab_status_shows_the_certificate_expiry(site):
    res, out = fab(site, "status")
    assert res.returncode == 0, out
    m = re.search(r"tls +certificate until (\d{4}-\d\d-\d\d) \((\d+) days left\)", out)
    assert m, out
    assert int(m.group(2)) > 14 and "EXPIRES" not in out


def test_3_a_forced_renewal_through_the_installed_command_is_served_after_the_hook_reloads_nginx(site):
    res = site.host.exec(f"timeout 100 {RENEW} --force-renewal --no-random-sleep-on-renew", timeout=120, check=False)
    log = site.host.path("/var/log/letsencrypt/letsencrypt.log").read_text()[-3000:]
    assert res.returncode == 0 and "all renewals succeeded" in res.stdout + res.stderr, res.stdout + res.stderr + log
    assert issued(site) == 2
    # (`nginx -s reload` returns once the master has the signal: its new workers take the new certificate a
    # moment later, so the first connection may still meet an old worker; seen once in CI)
    deadline = time.monotonic() + 10
    seen = served(site)
    while seen["serial"] == site.serial and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = served(site)
    assert seen["curl"] == "200 0" and seen["serial"] != site.serial, seen
    site.serial = seen["serial"]


def test_4_a_second_deploy_does_not_reissue(site):
    res, out = fab(site, "deploy", "--force")  # (a real deploy: the same revision and config is a no-op)
    assert res.returncode == 0, out
    assert "ACME certificate sample kept (certbot renews it)" in out and "issued for" not in out
    assert issued(site) == 2 and served(site)["serial"] == site.serial
    assert "written" not in out  # (the renewal's files and schedule unchanged)


def test_5_another_name_expands_the_certificate(site):
    write(site, f"{NAME} {WWW}")
    res, out = fab(site, "deploy")
    assert res.returncode == 0, out
    assert f"ACME certificate sample issued for {NAME}, {WWW}" in out
    for name in (NAME, WWW):
        seen = served(site, name)
        assert seen["curl"] == "200 0" and seen["names"] == sorted([NAME, WWW]), seen
    assert issued(site) == 3


def test_6_the_deploy_user_limited_to_the_drop_in_reissues_for_fewer_names(site):
    """`fab sudoers` of an acme config lists certbot's line, the renewal's installs and the checks: with the
    lab's full grant replaced by it, a deploy that drops a name re-issues and sudo refused nothing."""
    write(site, NAME)
    res, out = fab(site, "sudoers")
    assert res.returncode == 0, out
    install_drop_in(site.host, "sample", res.stdout)
    install_drop_in(site.host, "zz-log", LOGGING)
    site.host.path(str(hostlab.SUDOERS_FILE)).unlink()
    site.host.path(SUDO_LOG).write_text("")
    res, out = fab(site, "deploy")
    assert res.returncode == 0, out + "\n".join(denials(site.host))
    assert f"ACME certificate sample issued for {NAME} by" in out
    assert denials(site.host) == []
    assert "/usr/bin/certbot certonly" in site.host.path(SUDO_LOG).read_text()
    seen = served(site)
    assert seen["curl"] == "200 0" and seen["names"] == [NAME], seen
    assert issued(site) == 4


def test_7_another_server_replaces_the_certificate_now(site):
    write(site, NAME, server=pebblelab.OTHER_DIRECTORY)
    res, out = fab(site, "sudoers")  # (the drop-in names the server: the admin installs the new one)
    install_drop_in(site.host, "sample", res.stdout)
    res, out = fab(site, "deploy")
    assert res.returncode == 0, out + "\n".join(denials(site.host))
    assert f"ACME certificate sample issued for {NAME} by {pebblelab.OTHER_DIRECTORY}" in out
    assert issued(site) == 5 and denials(site.host) == []
    assert "--force-renewal" in site.host.path(SUDO_LOG).read_text()
    assert served(site)["curl"] == "200 0"
