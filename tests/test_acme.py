"""[tls] mode = "acme" without hosts: the config's one-line refusals, certbot's command line, the order of
the config phase (the http-only site live before certbot, the https site after), the renewal files and
schedule, `fab status`'s expiry line and provision's package. The real thing (pebble in a lab host: a first
issue, a forced renewal served, no re-issue, an expanded certificate) is tests/test_acme_e2e.py."""
from __future__ import annotations

import re

import pytest

from fabdeploy.errors import ConfigError
from fabdeploy.front import acme, nginx, tls
from fabdeploy.model import Facts
from fabdeploy.ops.cert_expiry import status_line
from fabdeploy.provision import packages
from fabdeploy.steps import balancer, configure
from test_phases import make_cfg, make_rel
from test_provision import DEB
from test_roles import LB, lb_cfg

NAME = "shop.example.com"


def acme_cfg(names=NAME, **tls_keys):
    return make_cfg(nginx={"server_name": names}, tls={"mode": "acme", **tls_keys})


def refused(**sections) -> str:
    with pytest.raises(ConfigError) as info:
        make_cfg(**sections)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_names_an_acme_ca_cannot_validate_are_refused_in_one_line():
    for bad in ("_", "*.example.com", "~^www", "10.0.0.1", "a_b.example.com"):
        assert refused(nginx={"server_name": bad}, tls={"mode": "acme"}).startswith(
            f"nginx.server_name {bad!r} cannot have an ACME certificate"), bad
    assert refused(nginx={"server_name": NAME}, tls={"mode": "acme", "key": "k.pem"}).startswith(
        'tls.key is for mode = "files"')
    assert refused(nginx={"server_name": NAME}, tls={"mode": "acme", "ca_bundle": "etc/ca.pem"}).startswith(
        "tls.ca_bundle must be an absolute path on the host")
    assert refused(nginx={"server_name": NAME}, tls={"mode": "acme", "server": "http://ca/dir"}).startswith(
        "tls.server must be an https URL")


def test_certbot_issues_through_the_webroot_for_each_name_with_the_deploy_hook():
    argv = acme.issue_argv(acme_cfg(f"{NAME} www.{NAME}", email="ops@example.com"))
    assert argv[:5] == ["certonly", "--webroot", "-w", "/srv/shop/shared/acme", "--cert-name"]
    assert " ".join(argv).count("-d ") == 2 and f"-d www.{NAME}" in " ".join(argv)
    assert ["-m", "ops@example.com"] == argv[argv.index("-m"):argv.index("-m") + 2]
    assert argv[argv.index("--server") + 1] == acme.LETS_ENCRYPT
    assert {"--expand", "--keep-until-expiring", "--non-interactive", "--agree-tos"} <= set(argv)
    assert "--register-unsafely-without-email" in acme.issue_argv(acme_cfg())
    cmd = acme.issue_command(acme_cfg(ca_bundle="/etc/ca.pem", server="https://ca.lab:14000/dir"))
    assert cmd.startswith("sudo -n /usr/bin/env REQUESTS_CA_BUNDLE=/etc/ca.pem /usr/bin/certbot certonly ")
    assert "--server https://ca.lab:14000/dir" in cmd


def test_nginx_serves_certbots_live_files_and_the_first_issue_uses_a_site_without_https():
    cfg = acme_cfg()
    site = nginx.nginx_site(cfg)
    assert "ssl_certificate /etc/letsencrypt/live/shop/fullchain.pem;" in site
    assert "ssl_certificate_key /etc/letsencrypt/live/shop/privkey.pem;" in site
    plain = nginx.nginx_site(acme.http_only(cfg))
    assert "ssl" not in plain and "/.well-known/acme-challenge/" in plain
    assert tls.check_chain(cfg) == "/etc/fabdeploy/tls/shop/check-chain.pem"


def test_the_config_phase_puts_the_challenge_site_live_before_certbot_and_the_https_site_after():
    text = "\n".join(configure.config(acme_cfg(), make_rel(), Facts(nginx_layout="conf.d")).lines)
    http_only = text.index("listen 80;")  # (the first site written: without its https block)
    assert "listen 443" not in text[http_only:text.index("FABDEPLOY_EOF", http_only)]
    start = text.index("/usr/sbin/nginx\n", http_only)  # (nginx started when it is not running)
    issue = text.index("/usr/bin/certbot certonly")
    https = text.rindex("listen 443 ssl")  # (the site installed after: https with certbot's files)
    assert http_only < start < issue < https
    assert "ACME certificate shop kept (certbot renews it)" in text
    # another CA (tls.server changed): replaced now (--force-renewal), else certbot keeps it until due
    assert acme.issue_argv(acme_cfg(), force=True)[-1] == "--force-renewal"
    assert "--force-renewal" not in acme.issue_argv(acme_cfg())
    assert f'[ "$prev_server" != {acme.LETS_ENCRYPT} ]; then issue() {{ {acme.issue_command(acme_cfg(), True)}; }}' in text


def test_a_balancer_issues_for_the_fleet_and_app_hosts_do_nothing():
    cfg = lb_cfg(app=("deploy@10.0.0.1",), nginx={"server_name": NAME}, tls={"mode": "acme"},
                 balancer={"firewall": "off"})
    assert "certbot certonly" in "\n".join(balancer.site(cfg, Facts(nginx_layout="conf.d"), "/srv/shop/x").lines)
    assert tls.acme_lines(cfg, roles_app(cfg), lambda c: "", Facts(), "/x") == []
    assert "certbot" in packages.plan(cfg, DEB, "lb") and "certbot" not in packages.plan(cfg, DEB, "app")
    assert "certbot" in packages.plan(acme_cfg(), DEB, "app")
    assert "certbot" not in packages.plan(make_cfg(), DEB, "app")


def roles_app(cfg):
    from fabdeploy.hosts.roles import servers
    return next(s for s in servers(cfg) if s.role == "app")


def test_renewal_is_a_systemd_timer_where_systemd_runs_else_a_cron_entry():
    cfg = acme_cfg(ca_bundle="/etc/ca.pem")
    lines = "\n".join(acme.renewal_lines(cfg))
    timer_at, cron_at = lines.index("fabdeploy-certbot-shop.timer"), lines.index("/etc/cron.d/fabdeploy_shop_certbot")
    assert lines.index("if [ -d /run/systemd/system ]") < timer_at and lines.index("else") < lines.rindex("fabdeploy_shop_certbot")
    assert timer_at and cron_at
    assert "sudo -n /usr/bin/systemctl enable --now fabdeploy-certbot-shop.timer" in lines
    # (cron never reads half a file: a temp name it ignores, renamed into place)
    assert ("/etc/cron.d/.fabdeploy_shop_certbot.tmp && sudo -n /usr/bin/mv -f /etc/cron.d/.fabdeploy_shop_certbot.tmp "
            "/etc/cron.d/fabdeploy_shop_certbot ||") in lines
    units = acme.timer_units(cfg)
    assert "ExecStart=/etc/fabdeploy/acme/shop/renew -q" in units["service"]
    assert "OnCalendar=" in units["timer"] and "Persistent=true" in units["timer"]
    assert "root /etc/fabdeploy/acme/shop/renew -q" in acme.cron_entry(cfg)
    script = acme.renew_script(cfg)
    assert "export REQUESTS_CA_BUNDLE=/etc/ca.pem" in script
    assert "certbot renew --cert-name shop --non-interactive --deploy-hook /etc/fabdeploy/acme/shop/deploy-hook \"$@\"" in script
    hook = acme.deploy_hook(cfg)
    assert "/usr/sbin/nginx -t -q" in hook and "/usr/sbin/nginx -s reload" in hook
    assert "/etc/fabdeploy/tls/shop/check-chain.pem" in hook  # (the health check's and fab status' copy)


def test_the_status_program_reads_the_expiry_of_a_real_certificate(tmp_path):
    from fabdeploy.ops.cert_expiry import CERT_PY
    from tlscerts import make_certs
    chain = make_certs(tmp_path, [NAME]).chain  # (30 days)
    scope = {}
    exec(CERT_PY, scope)
    got = scope["cert_expiry"](str(chain))
    assert got["path"] == str(chain) and got["days_left"] in (29, 30) and len(got["not_after"]) == 10
    assert scope["cert_expiry"]("") == {}
    assert scope["cert_expiry"](str(tmp_path / "missing.pem"))["error"] == "no readable certificate"


def test_status_shows_the_expiry_and_warns_under_14_days():
    assert status_line({}) == []
    ok = status_line({"tls": {"path": "/x", "not_after": "2027-01-01", "days_left": 30}})
    assert ok == ["  tls       certificate until 2027-01-01 (30 days left)"]
    soon = status_line({"tls": {"path": "/x", "not_after": "2026-12-01", "days_left": 5}})[0]
    assert soon.endswith("(5 days left)  EXPIRES in under 14 days: renew it")
    assert "no readable certificate" in status_line({"tls": {"path": "/x", "error": "no readable certificate"}})[0]


def test_status_reads_the_chain_of_every_tls_mode_on_the_hosts_that_serve_https(tmp_path):
    from fabdeploy.hosts.target import Target
    from fabdeploy.ops.cert_expiry import cert_param
    from tlscerts import make_certs
    c = make_certs(tmp_path, [NAME])
    files = make_cfg(nginx={"server_name": NAME}, tls={"mode": "files", "certificate": str(c.chain), "key": str(c.key)})
    assert cert_param(files, Target.named(files, "web1").server) == "/etc/fabdeploy/tls/shop/fullchain.pem"
    assert cert_param(acme_cfg(), Target.named(acme_cfg(), "web1").server) == "/etc/fabdeploy/tls/shop/check-chain.pem"
    assert cert_param(make_cfg(), Target.named(make_cfg(), "web1").server) == ""
    fleet = lb_cfg(app=("deploy@10.0.0.1",), nginx={"server_name": NAME}, tls={"mode": "acme"})
    assert cert_param(fleet, Target.named(fleet, "10.0.0.1", "app").server) == ""
    assert cert_param(fleet, Target.named(fleet, LB, "lb").server).endswith("check-chain.pem")


def test_another_acme_server_or_email_is_not_already_live():
    from fabdeploy.steps.live_check import fingerprint
    base = fingerprint(acme_cfg(), "abc", b"django\n")
    assert fingerprint(acme_cfg(), "abc", b"django\n") == base
    assert fingerprint(acme_cfg(server="https://ca.example.com/dir"), "abc", b"django\n") != base
    assert fingerprint(acme_cfg(email="ops@example.com"), "abc", b"django\n") != base


def test_several_balancers_one_issues_every_one_serves_the_installed_pair_and_relays_tokens_to_it():
    from fabdeploy.front import acme_fleet
    from fabdeploy.front.nginx import lb_site
    cfg = make_cfg(roles={"app": ["deploy@10.0.0.1"], "lb": [LB, "deploy@10.0.0.8"]}, nginx={"server_name": NAME},
                   tls={"mode": "acme"})
    assert acme_fleet.issuer(cfg).target == LB and acme_fleet.relay_target(cfg) == "10.0.0.10:80"
    site = lb_site(cfg)
    assert "ssl_certificate /etc/fabdeploy/tls/shop/fullchain.pem;" in site  # (not certbot's live path)
    assert "try_files $uri @fabdeploy_acme_relay;" in site
    assert re.search(r"location @fabdeploy_acme_relay \{\s+if \(\$http_x_fabdeploy_acme_relay\) \{\s+return 404;"
                     r"\s+\}\s+proxy_set_header Host \$host;\s+proxy_set_header X-Fabdeploy-Acme-Relay 1;\s+"
                     r"proxy_pass http://10\.0\.0\.10:80;", site), site
    # before a certificate exists: the plain-HTTP site relays too; the other balancers install as in files mode
    plain = lb_site(acme.http_only(cfg))
    assert "ssl" not in plain and "proxy_pass http://10.0.0.10:80;" in plain
    assert "base64 -w0 /etc/fabdeploy/tls/shop/privkey.pem" in "\n".join(acme.issue_lines(cfg, lb_site, Facts(nginx_layout="conf.d"), "/T"))
    lines = tls.root_lines(cfg)
    assert "sudo -n /usr/bin/base64 -w0 /etc/fabdeploy/tls/shop/privkey.pem" in lines
    assert ("sudo -n /usr/bin/install -D -m 0600 /srv/shop/shared/config/tls-privkey.pem "
            "/etc/fabdeploy/tls/shop/privkey.pem") in lines
    # one balancer: certbot's live files, no relay
    one = make_cfg(roles={"app": ["deploy@10.0.0.1"], "lb": [LB]}, nginx={"server_name": NAME}, tls={"mode": "acme"})
    assert "relay" not in lb_site(one) and "/etc/letsencrypt/live/shop/fullchain.pem" in lb_site(one)
