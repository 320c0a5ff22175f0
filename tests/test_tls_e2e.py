"""HTTPS with [tls] mode = "files" on one real lab host (nginx, uWSGI, the sample project), with a CA and a
leaf certificate for the site's name made here with openssl:

- a deploy with local files: root-owned files on the host (key 0600, never printed), `curl --cacert <ca>
  --resolve` sees a valid chain and HTTP/2, Django sees https (request.is_secure()), the health check spoke
  https, and `check --deploy` warns about nothing but HSTS (hsts = 0, opt-in);
- plain http redirects 301 to https, except /.well-known/acme-challenge/<file>, served from the webroot;
- a local key of another certificate: one line, nothing connected, the live site untouched;
- a certificate for another name: the health check (https, the chain's CA) fails and the revert puts the
  previous certificate files back with the previous site;
- hsts = 300: the header on https answers only, check --deploy without W004;
- `fab doctor` names each TLS fault injected into the installed files (expiring, expired, another key, another
  name, a missing key) and nothing on the healthy host;
- files already on the host ("host:/path"): a mismatched pair refused on the host with one line before any
  change (the live site keeps its certificate), a matching one served after the deploy;
- the deploy user limited to `fab sudoers`' drop-in installs new files (sudo refuses nothing); doctor then
  still judges the readable chain (an expiring certificate named without sudo).

The tests run in order and build on each other.
"""
from __future__ import annotations

import json
import re
import subprocess
from types import SimpleNamespace

import pytest

import hostlab
from conftest import make_project, release_of, run_fab, sample_config
from test_sudoers_e2e import LOGGING, SUDO_LOG, denials, install_drop_in
from tlscerts import dated_leaf, make_certs

NAME = "shop.lab.test"


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    host = make_host("tls")
    proj = make_project(tmp_path_factory.mktemp("tlsproj"))
    certs = make_certs(proj.root / "certs", [NAME])
    site = SimpleNamespace(host=host, proj=proj, cache=wheel_cache, certs=certs, good="")
    write(site, "deploy.toml", "certs/leaf-chain.pem", "certs/leaf.key")
    return site


def write(site, name: str, certificate: str, key: str, extra: str = "") -> str:
    text = sample_config(site.host, extra=extra).replace(f'server_name = "{site.host.address}"', f'server_name = "{NAME}"')
    site.proj.write_config(text + f'[tls]\nmode = "files"\ncertificate = "{certificate}"\nkey = "{key}"\n',
                           name=name)
    return name


def fab(site, *args, config="deploy.toml"):
    res = run_fab(site.proj.root, *args, "--config", config, cache=site.cache)
    return res, res.stdout + res.stderr


def curl(site, path: str, ca, *more: str) -> tuple[str, str]:
    """(http version, status, verify result) of an https GET from this machine; and the body."""
    res = subprocess.run(["curl", "-sS", "--http2", "--cacert", str(ca), "--resolve",
                          f"{NAME}:443:{site.host.address}", "-w", r"\n%{http_version} %{http_code} %{ssl_verify_result}",
                          *more, f"https://{NAME}{path}"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    body, _, info = res.stdout.rpartition("\n")
    return info, body


def served_certificate(site) -> str:
    """The SHA-256 fingerprint of the certificate the site serves now."""
    res = subprocess.run(f"openssl s_client -connect {site.host.address}:443 -servername {NAME} </dev/null "
                         "2>/dev/null | openssl x509 -noout -fingerprint -sha256", shell=True, capture_output=True,
                         text=True, timeout=30)
    assert res.stdout.startswith("sha256 Fingerprint="), res.stdout + res.stderr
    return res.stdout.strip()


def current(site) -> str:
    return site.host.path("/srv/sample/current").resolve().name


def test_1_files_mode_serves_https_with_a_valid_chain_and_http2(site):
    res, out = fab(site, "deploy")
    assert res.returncode == 0, out
    site.good = release_of(res.stdout)
    assert f"GET / (Host: {NAME}) -> 200" in out  # the health check (https, the chain's CA trusted)
    info, body = curl(site, "/whoami", site.certs.ca)
    assert info == "2 200 0", info  # HTTP/2, 200, the chain verified against the test CA
    seen = json.loads(body)
    assert seen["release"] == site.good and seen["secure"] is True
    # the scheme Django sees is nginx's: a client's own X-Forwarded-Proto is never passed on
    assert json.loads(curl(site, "/whoami", site.certs.ca, "-H", "X-Forwarded-Proto: http")[1])["secure"] is True
    # check --deploy: only HSTS left (hsts = 0 is opt-in); the TLS warnings of a plain-HTTP site are gone
    assert set(re.findall(r"\(security\.(W0\d\d)\)", out)) == {"W004"}, out
    # root's files, the key 0600 and never printed; no staged copy left with the deploy user
    for path, mode in (("fullchain.pem", 0o644), ("privkey.pem", 0o600)):
        st = site.host.path(f"/etc/fabdeploy/tls/sample/{path}").stat()
        assert (st.st_uid, st.st_mode & 0o777) == (0, mode), path
    key = site.certs.key.read_text().strip()
    assert key.splitlines()[1] not in out
    assert not site.host.path("/srv/sample/shared/config/tls-privkey.pem").exists()
    # the status check speaks https too
    res, out = fab(site, "status")
    assert res.returncode == 0 and f"GET / (Host: {NAME}) -> 200" in out, out


def test_2_plain_http_redirects_to_https_but_the_acme_path_is_served_from_the_webroot(site):
    status, headers, _ = site.host.http("/whoami?x=1", host_header=NAME)
    assert (status, headers["location"]) == (301, f"https://{NAME}/whoami?x=1")
    challenge = site.host.path("/srv/sample/shared/acme/.well-known/acme-challenge/tok-123")
    challenge.write_text("tok-123.thumbprint")
    status, headers, body = site.host.http("/.well-known/acme-challenge/tok-123", host_header=NAME)
    assert (status, body) == (200, b"tok-123.thumbprint")
    status, _, _ = site.host.http("/.well-known/acme-challenge/missing", host_header=NAME)
    assert status == 404  # (from the webroot, not redirected)


def test_2a_hsts_is_sent_on_https_answers_only_and_check_deploy_drops_w004(site):
    """hsts = 300: nginx sends the header on https (the app's answers and the redirect's target), never on the
    port-80 redirect; Django's check --deploy then says only the two opt-ins left (W005 subdomains, W021
    preload)."""
    name = write(site, "hsts.toml", "certs/leaf-chain.pem", "certs/leaf.key")
    config = site.proj.root / name
    config.write_text(config.read_text() + "hsts = 300\n")
    res, out = fab(site, "deploy", config=name)
    assert res.returncode == 0, out
    site.good = release_of(res.stdout)
    assert set(re.findall(r"\(security\.(W0\d\d)\)", out)) == {"W005", "W021"}, out
    res = subprocess.run(["curl", "-sS", "-D", "-", "-o", "/dev/null", "--cacert", str(site.certs.ca), "--resolve",
                          f"{NAME}:443:{site.host.address}", f"https://{NAME}/"], capture_output=True, text=True,
                         timeout=30)
    headers = [ln.strip().lower() for ln in res.stdout.splitlines()]
    assert headers.count("strict-transport-security: max-age=300") == 1, res.stdout + res.stderr
    status, headers, _ = site.host.http("/", host_header=NAME)
    assert status == 301 and "strict-transport-security" not in {k.lower() for k in headers}, headers


def doctor(site) -> tuple[int, str]:
    res, out = fab(site, "doctor", config="hsts.toml")
    print(out)
    assert "Traceback" not in out, out
    return res.returncode, out


def test_2b_fab_doctor_names_each_tls_fault_injected_on_the_host(site):
    """The installed files swapped on the host (nginx keeps what it loaded; doctor reads what the site names):
    an expiring and an expired certificate (tlscerts.dated_leaf), a key of another certificate, a certificate
    for another name, a missing key; the healthy host (before and after) names nothing."""
    rc, out = doctor(site)
    assert rc == 0 and "no problems found" in out and "PROBLEM" not in out, out
    tls_dir = site.host.path("/etc/fabdeploy/tls/sample")
    chain, key = tls_dir / "fullchain.pem", tls_dir / "privkey.pem"
    good = chain.read_text(), key.read_text()

    def put(new_chain, new_key) -> None:
        chain.write_text(new_chain.read_text() if hasattr(new_chain, "read_text") else new_chain)
        key.write_text(new_key.read_text() if hasattr(new_key, "read_text") else new_key)

    faults = [(dated_leaf(site.certs, [NAME], "soon", -1, 5), r"PROBLEM \(tls expiry\): the certificate "
               r"/etc/fabdeploy/tls/sample/fullchain\.pem expires on \S+ \S+ UTC \([45] days left, under 14\)"),
              (dated_leaf(site.certs, [NAME], "old", -30, -1), r"PROBLEM \(tls expiry\): the certificate "
               r"/etc/fabdeploy/tls/sample/fullchain\.pem expired on "),
              ((site.certs.chain, site.certs.other_key), r"PROBLEM \(tls key\): /etc/fabdeploy/tls/sample/privkey\.pem "
               r"is not the key of /etc/fabdeploy/tls/sample/fullchain\.pem"),
              (dated_leaf(site.certs, ["other.lab.test"], "other", -1, 30), r"PROBLEM \(tls name\): the certificate "
               r"/etc/fabdeploy/tls/sample/fullchain\.pem \(for other\.lab\.test\) does not cover shop\.lab\.test")]
    for (new_chain, new_key), finding in faults:
        put(new_chain, new_key)
        rc, out = doctor(site)
        assert rc == 1 and re.search(finding, out), out
        assert len(re.findall(r"PROBLEM \(tls", out)) == 1, out  # (only that one)
    put(*good)
    key.unlink()
    rc, out = doctor(site)
    assert rc == 1 and ("PROBLEM (tls files): the nginx site's ssl_certificate_key /etc/fabdeploy/tls/sample/privkey.pem "
                        "is missing") in out, out
    put(*good)
    key.chmod(0o600)
    rc, out = doctor(site)
    assert rc == 0 and "no problems found" in out, out


def test_3_a_local_key_of_another_certificate_is_refused_in_one_line(site):
    before = served_certificate(site)
    name = write(site, "other-key.toml", "certs/leaf-chain.pem", "certs/other.key")
    res, out = fab(site, "deploy", config=name)
    assert res.returncode == 1, out
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "does not match tls.certificate" in lines[0] and "other.key" in lines[0], out
    assert "Traceback" not in out and "PRIVATE KEY" not in out
    assert current(site) == site.good and served_certificate(site) == before
    assert curl(site, "/", site.certs.ca)[0] == "2 200 0"


def test_4_a_certificate_for_another_name_fails_the_health_check_and_the_revert_puts_the_old_one_back(site):
    before = served_certificate(site)
    wrong = make_certs(site.proj.root / "certs-other", ["other.lab.test"])
    name = write(site, "other-name.toml", "certs-other/leaf-chain.pem", "certs-other/leaf.key",
                 extra="[health]\ntimeout = 3\n")
    res, out = fab(site, "deploy", config=name)
    assert res.returncode == 1, out
    assert "health check failed" in out and "certificate verify failed" in out, out
    assert f"reverted to {site.good}" in out
    assert current(site) == site.good and served_certificate(site) == before
    assert curl(site, "/", site.certs.ca)[0] == "2 200 0"
    assert wrong.ca.exists()


def test_5_files_already_on_the_host_are_checked_there_then_served(site):
    before = served_certificate(site)
    second = make_certs(site.proj.root / "certs2", [NAME])
    host_dir = site.host.path("/etc/ssl/lab-tls")
    host_dir.mkdir(mode=0o700, exist_ok=True)
    (host_dir / "chain.pem").write_text(second.chain.read_text())
    (host_dir / "wrong.key").write_text(second.other_key.read_text())
    (host_dir / "right.key").write_text(second.key.read_text())
    for f in host_dir.iterdir():
        f.chmod(0o600)  # (root's only: the deploy user checks them through sudo's openssl)

    name = write(site, "host-wrong.toml", "host:/etc/ssl/lab-tls/chain.pem", "host:/etc/ssl/lab-tls/wrong.key")
    res, out = fab(site, "deploy", config=name)
    assert res.returncode == 1, out
    assert ("tls.key /etc/ssl/lab-tls/wrong.key does not match tls.certificate /etc/ssl/lab-tls/chain.pem on the "
            "host: nothing was changed") in out
    assert "Traceback" not in out
    assert current(site) == site.good and served_certificate(site) == before

    name = write(site, "host-right.toml", "host:/etc/ssl/lab-tls/chain.pem", "host:/etc/ssl/lab-tls/right.key")
    res, out = fab(site, "deploy", config=name)
    assert res.returncode == 0, out
    assert served_certificate(site) != before
    info, body = curl(site, "/whoami", second.ca)
    assert info == "2 200 0" and json.loads(body)["release"] == release_of(res.stdout)
    # the first CA no longer verifies the site
    res = subprocess.run(["curl", "-sS", "--cacert", str(site.certs.ca), "--resolve", f"{NAME}:443:{site.host.address}",
                          f"https://{NAME}/"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 60, res.stderr  # (curl: peer certificate cannot be authenticated)


def test_6_the_deploy_user_limited_to_the_drop_in_installs_new_files(site):
    """`fab sudoers` of a files-mode config lists every root command of the TLS install (and of the backup
    of the files it replaces): the lab's full grant replaced by it, a deploy with a new certificate works
    and sudo refused nothing."""
    res, out = fab(site, "sudoers")
    assert res.returncode == 0, out
    install_drop_in(site.host, "sample", res.stdout)
    install_drop_in(site.host, "zz-log", LOGGING)
    site.host.path(str(hostlab.SUDOERS_FILE)).unlink()
    assert site.host.exec(["sudo", "-n", "/usr/bin/id"], user="deploy", check=False).returncode != 0
    site.host.path(SUDO_LOG).write_text("")
    third = make_certs(site.proj.root / "certs3", [NAME])
    name = write(site, "third.toml", "certs3/leaf-chain.pem", "certs3/leaf.key")
    res, out = fab(site, "deploy", config=name)
    assert res.returncode == 0, out + "\n".join(denials(site.host))
    assert "TLS certificate installed at /etc/fabdeploy/tls/sample/fullchain.pem" in out
    assert curl(site, "/", third.ca)[0] == "2 200 0"
    assert denials(site.host) == []
    assert "tls-privkey.pem /etc/fabdeploy/tls/sample/privkey.pem" in site.host.path(SUDO_LOG).read_text()


def test_7_doctor_judges_the_readable_chain_without_sudo(site):
    """With only the drop-in (no `sudo openssl`), doctor still reads the chain (0644) as the deploy user: an
    expiring certificate is named; the root-only key is left out (unknown, not a finding)."""
    chain, _ = dated_leaf(site.certs, [NAME], "soon-nosudo", -1, 3)
    site.host.path("/etc/fabdeploy/tls/sample/fullchain.pem").write_text(chain.read_text())
    res, out = fab(site, "doctor", config="third.toml")
    assert res.returncode == 1 and "Traceback" not in out, out
    assert re.search(r"PROBLEM \(tls expiry\): the certificate /etc/fabdeploy/tls/sample/fullchain\.pem expires on "
                     r"\S+ \S+ UTC \([23] days left, under 14\)", out), out
    assert "PROBLEM (tls key)" not in out and "PROBLEM (tls files)" not in out, out
