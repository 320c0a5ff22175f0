"""[tls] without hosts: the config's one-line refusals (a key of another certificate, ...),
the nginx sites and the Django overlay it renders, and the key masked in every display of the script that
carries it. The real thing (https with a chain curl trusts, the redirect, the ACME webroot, a refused key
with the live site untouched, the fleet) is tests/test_tls_e2e.py and tests/test_tls_fleet_e2e.py."""
from __future__ import annotations

import re

import pytest

from fabdeploy.errors import ConfigError
from fabdeploy.front import nginx, tls
from fabdeploy.hosts import roles
from fabdeploy.local.render import render
from fabdeploy.model import Facts
from fabdeploy.remote.script import Script
from fabdeploy.steps import configure
from fabdeploy.steps.health import check_spec
from test_phases import make_cfg, make_rel
from test_roles import LB, lb_cfg
from tlscerts import make_certs

NAME = "shop.example.com"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"), [NAME, "www." + NAME])


def files(certs, key=None, **more):
    return {"mode": "files", "certificate": str(certs.chain), "key": str(key or certs.key), **more}


def refused(**sections) -> str:
    with pytest.raises(ConfigError) as info:
        make_cfg(**sections)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_files_needs_both_paths_of_one_kind(certs):
    assert refused(tls={"mode": "files", "key": str(certs.key)}).startswith(
        'tls.certificate is required with tls.mode = "files"')
    assert refused(tls={"mode": "files", "certificate": str(certs.chain), "key": "host:/etc/ssl/k.pem"}) == (
        'tls.certificate and tls.key must both be local files or both "host:/path" files already on the host')
    assert refused(tls={"mode": "files", "certificate": "host:etc/x.pem", "key": "host:/k"}).startswith(
        'tls.certificate must be "host:/absolute/path" of plain characters')
    for bad in ("host:/a b", "host:/etc/x.pem;", "host:/etc/ssl/", "host:/etc/../x"):
        assert refused(tls={"mode": "files", "certificate": bad, "key": "host:/k"}).startswith(
            'tls.certificate must be "host:/absolute/path"'), bad
    assert refused(tls=files(certs, port=80)).startswith("tls.port = 80 is also nginx.listen")
    assert refused(tls={"mode": "sometimes"}).startswith('tls.mode must be "off", "files" or "acme"')


def test_a_key_of_another_certificate_is_refused_locally_in_one_line(certs, tmp_path):
    message = refused(tls=files(certs, key=certs.other_key))
    assert message == (f"tls.key {certs.other_key} does not match tls.certificate {certs.chain} (the first "
                       "certificate of the chain has another public key)")
    assert "PRIVATE" not in message
    assert refused(tls=files(certs, key=tmp_path / "gone.pem")) == f"tls.key {tmp_path / 'gone.pem'} does not exist"
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    assert refused(tls={**files(certs), "certificate": str(tmp_path / "junk.pem")}) == (
        f"tls.certificate {tmp_path / 'junk.pem'} is not a PEM certificate (chain)")


def test_the_site_with_tls_redirects_plain_http_but_the_acme_path_and_serves_https_with_http2(certs):
    cfg = make_cfg(nginx={"server_name": NAME}, tls=files(certs))
    site = nginx.nginx_site(cfg)
    plain, secure = site.split("# certificate files ")
    assert "listen 80;" in plain and "ssl" not in plain
    assert re.search(r"location \^~ /\.well-known/acme-challenge/ \{\s+root /srv/shop/shared/acme;", plain)
    assert "return 301 https://$host$request_uri;" in plain
    assert "listen 443 ssl http2;" in secure and "listen 80" not in secure
    assert "ssl_certificate /etc/fabdeploy/tls/shop/fullchain.pem;" in secure
    assert "ssl_certificate_key /etc/fabdeploy/tls/shop/privkey.pem;" in secure
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in secure and "Strict-Transport-Security" not in site  # hsts = 0
    assert "uwsgi_param HTTP_X_FORWARDED_PROTO $scheme;" in secure and "acme" not in secure
    hsts = nginx.nginx_site(make_cfg(nginx={"server_name": NAME}, tls=files(certs, hsts=600, port=8443)))
    assert 'add_header Strict-Transport-Security "max-age=600" always;' in hsts
    assert "uwsgi_hide_header Strict-Transport-Security;" in hsts
    assert "listen 8443 ssl http2;" in hsts and "return 301 https://$host:8443$request_uri;" in hsts


def test_host_files_are_named_as_they_are_and_a_site_without_tls_serves_the_acme_path_too():
    cfg = make_cfg(tls={"mode": "files", "certificate": "host:/etc/letsencrypt/live/x/fullchain.pem",
                        "key": "host:/etc/letsencrypt/live/x/privkey.pem"}, app={"server": "gunicorn"})
    site = nginx.nginx_site(cfg)
    assert "ssl_certificate /etc/letsencrypt/live/x/fullchain.pem;" in site and "# certificate files" not in site
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in site
    off = nginx.nginx_site(make_cfg())
    assert "ssl" not in off and "return 301" not in off and "HTTP_X_FORWARDED_PROTO" not in off
    assert "location ^~ /.well-known/acme-challenge/ {\n        root /srv/shop/shared/acme;" in off


def test_a_fleet_terminates_on_the_balancers_and_app_hosts_trust_only_their_header(certs):
    cfg = lb_cfg(nginx={"server_name": NAME}, tls=files(certs), balancer={"app_nginx": True})
    lb = nginx.lb_site(cfg)
    assert "listen 443 ssl http2;" in lb and "uwsgi_param HTTP_X_FORWARDED_PROTO $scheme;" in lb
    assert "return 301 https://$host$request_uri;" in lb
    app = next(s for s in roles.servers(cfg) if s.role == "app")
    site = nginx.nginx_site(cfg, app)
    assert "ssl" not in site and "return 301" not in site
    lb_addr = LB.rsplit("@", 1)[-1]
    assert re.search(r"map \$remote_addr \$fabdeploy_shop_proto \{\s+default \$scheme;\s+"
                     + re.escape(lb_addr) + r" \$http_x_forwarded_proto;\s+\}", site), site
    assert "uwsgi_param HTTP_X_FORWARDED_PROTO $fabdeploy_shop_proto;" in site
    # the health checks: https with the chain's CA on the balancer, plain on an app host (a redirect to https ok)
    lb_server = next(s for s in roles.servers(cfg) if s.role == "lb")
    assert check_spec(cfg, "lb1", lb_server)["proto"] == "https"
    assert check_spec(cfg, "lb1", lb_server)["cafile"] == "/etc/fabdeploy/tls/shop/fullchain.pem"
    assert check_spec(cfg, "web1", app)["proto"] == "http" and check_spec(cfg, "web1", app)["tls"]


def test_the_django_overlay_trusts_the_proxy_header_and_lists_https_origins(certs):
    cfg = make_cfg(nginx={"server_name": f"{NAME} *.shop.example.net _ ~^x"}, tls=files(certs, hsts=60))
    text = render("settings.py.j2", release_id="R", django_settings="shop.settings", shared="/srv/shop/shared",
                  allowed_hosts=cfg.allowed_hosts, static_url="/static/", media_url="/media/",
                  tls=tls.django_context(cfg))
    compile(text, "settings.py", "exec")
    for line in ('SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")', "SECURE_SSL_REDIRECT = True",
                 "SESSION_COOKIE_SECURE = True", "CSRF_COOKIE_SECURE = True", "SECURE_HSTS_SECONDS = 60"):
        assert line in text
    assert "['https://shop.example.com', 'https://*.shop.example.net']" in text
    off = render("settings.py.j2", release_id="R", django_settings="shop.settings", shared="/srv/shop/shared",
                 allowed_hosts=["x"], static_url="/static/", media_url="/media/", tls=tls.django_context(make_cfg()))
    assert "SECURE_" not in off and "CSRF_" not in off


def test_the_key_travels_in_the_config_phase_and_is_masked_in_every_display(certs):
    cfg = make_cfg(nginx={"server_name": NAME}, tls=files(certs))
    phase = configure.config(cfg, make_rel(), Facts(nginx_layout="conf.d"))
    key = certs.key.read_text().strip()
    text = "\n".join(phase.lines)
    assert key in text  # (the host gets it) ...
    shown = Script([phase], tuple(cfg.secret_values())).display()
    assert key not in shown and key.splitlines()[1] not in shown  # ... nobody reading the output does
    assert "-m 0600 /srv/shop/shared/config/tls-privkey.pem /etc/fabdeploy/tls/shop/privkey.pem" in shown
    assert text.index("tls-privkey.pem /etc/fabdeploy") < text.index("nginx -t")  # installed, then checked


def test_hsts_subdomains_and_preload_extend_the_header_and_the_settings(certs):
    assert refused(tls=files(certs, hsts_preload=True)) == (
        "tls.hsts_preload = true needs tls.hsts > 0 (no Strict-Transport-Security header is sent with hsts = 0)")
    assert refused(tls=files(certs, hsts=300, hsts_include_subdomains=True, hsts_preload=True)).startswith(
        "tls.hsts_preload = true needs tls.hsts_include_subdomains = true and tls.hsts >= 31536000")
    cfg = make_cfg(nginx={"server_name": NAME},
                   tls=files(certs, hsts=31536000, hsts_include_subdomains=True, hsts_preload=True))
    assert ('add_header Strict-Transport-Security "max-age=31536000; includeSubDomains; preload" always;'
            in nginx.nginx_site(cfg))
    text = render("settings.py.j2", release_id="R", django_settings="shop.settings", shared="/srv/shop/shared",
                  allowed_hosts=cfg.allowed_hosts, static_url="/static/", media_url="/media/",
                  tls=tls.django_context(cfg))
    for line in ("SECURE_HSTS_SECONDS = 31536000", "SECURE_HSTS_INCLUDE_SUBDOMAINS = True", "SECURE_HSTS_PRELOAD = True"):
        assert line in text
    sub = make_cfg(nginx={"server_name": NAME}, tls=files(certs, hsts=300, hsts_include_subdomains=True))
    assert 'add_header Strict-Transport-Security "max-age=300; includeSubDomains" always;' in nginx.nginx_site(sub)
