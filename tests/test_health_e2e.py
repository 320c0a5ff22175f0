"""Health means healthy, end to end: the real `fab deploy` / `fab status` against one lab host (nginx, uWSGI,
the sample project). A site that answers 400 (ALLOWED_HOSTS) or redirects to an https site that does not exist
(SECURE_SSL_REDIRECT) fails the deploy, which reverts to the previous good release; `fab status` says why.

The tests run in order and build on each other (a good release first, then bad ones that must revert to it).
"""
from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from conftest import reload_uwsgi_and_wait, release_of, run_fab, sample_config, make_project

FAST = """\
    [health]
    timeout = 2
    """


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    host = make_host("health")
    proj = make_project(tmp_path_factory.mktemp("proj"))
    proj.write_config(sample_config(host))
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache, good="")


def fab(site, *args, config="deploy.toml"):
    res = run_fab(site.proj.root, *args, "--config", config, cache=site.cache)
    return res, res.stdout + res.stderr


def write(site, name, extra="", **kw):
    site.proj.write_config(sample_config(site.host, **kw) + extra, name=name)
    return name


def current(site) -> str:
    return site.host.path("/srv/sample/current").resolve().name


def assert_serves(site, release):
    status, _, body = site.host.http("/", host_header=site.host.address)
    assert status == 200 and f"Release: {release}".encode() in body, body[:300]


def assert_reverted(site, out, attempt_re=r"upload\s+release (\d{8}T\d{6}Z-[0-9a-f]+)"):
    assert f"reverted to {site.good}" in out, out
    assert "Traceback" not in out
    assert current(site) == site.good
    assert_serves(site, site.good)
    bad = re.search(attempt_re, out).group(1)
    assert site.host.path(f"/srv/sample/releases/{bad}/.fabdeploy/bad").exists()


def test_1_a_healthy_deploy_says_what_it_checked_and_status_is_0(site):
    res, out = fab(site, "deploy")
    assert res.returncode == 0, out
    site.good = release_of(res.stdout)
    assert f"GET / (Host: {site.host.address}) -> 200" in out
    res, out = fab(site, "status")
    assert res.returncode == 0, out
    assert f"http      GET / (Host: {site.host.address}) -> 200 in" in out


def test_2_allowed_hosts_not_matching_the_server_name_fails_and_reverts(site):
    name = write(site, "wrong-hosts.toml", FAST + '[django]\nallowed_hosts = ["www.example.invalid"]\n')
    res, out = fab(site, "deploy", config=name)
    assert res.returncode == 1, out
    assert f"GET / (Host: {site.host.address}) -> 400" in out
    assert "ALLOWED_HOSTS" in out and f"include {site.host.address}?" in out
    assert_reverted(site, out)


def test_3_secure_ssl_redirect_without_tls_fails_naming_it_and_reverts(site):
    settings = site.proj.src / "sampleproject" / "settings.py"
    original = settings.read_text()
    site.proj.commit("https only", {"sampleproject/settings.py": original + "\nSECURE_SSL_REDIRECT = True\n"})
    try:
        name = write(site, "fast.toml", FAST)
        res, out = fab(site, "deploy", config=name)
        assert res.returncode == 1, out
        assert f"GET / (Host: {site.host.address}) -> 301 https://{site.host.address}/" in out
        assert "SECURE_SSL_REDIRECT" in out and "no TLS" in out
        assert_reverted(site, out)
    finally:
        site.proj.commit("back to http", {"sampleproject/settings.py": original})


REDIRECTS = """\
from django.views.generic import RedirectView

urlpatterns += [
    path("moved/", RedirectView.as_view(url="/whoami", permanent=False)),
    path("dangling/", RedirectView.as_view(url="/no-such-page/", permanent=False)),
]
"""


def test_4_a_same_host_redirect_is_followed_and_listed_codes_are_taken_as_they_are(site):
    urls = (site.proj.src / "pages" / "urls.py").read_text()
    site.proj.commit("redirects", {"pages/urls.py": urls + REDIRECTS})
    name = write(site, "moved.toml", '[health]\npath = "/moved/"\n')
    res, out = fab(site, "deploy", config=name)
    assert res.returncode == 0, out
    assert f"GET /moved/ (Host: {site.host.address}) -> 302 /whoami -> 200" in out
    # /dangling/ redirects to a 404: by the default rule that fails; status = [200, 302] takes the 302 as it is
    name = write(site, "dangling.toml", '[health]\npath = "/dangling/"\nstatus = [200, 302]\n')
    res, out = fab(site, "deploy", config=name)
    assert res.returncode == 0, out
    assert re.search(rf"GET /dangling/ \(Host: {re.escape(site.host.address)}\) -> 302\s", out), out
    site.good = release_of(res.stdout)
    # fab status uses the same rule: the default rule on /dangling/ is unhealthy (302 -> 404)
    name = write(site, "dangling-default.toml", '[health]\npath = "/dangling/"\n')
    res, out = fab(site, "status", config=name)
    assert res.returncode == 1, out
    assert f"GET /dangling/ (Host: {site.host.address}) -> 302 /no-such-page/ -> 404" in res.stdout
    assert re.search(rf"unhealthy: http: GET /dangling/ .* -> 404", res.stderr), out



def test_5_status_exits_1_while_the_site_answers_400_and_0_once_fixed(site):
    settings = site.host.path(f"/srv/sample/releases/{site.good}/fabdeploy_settings.py")
    original = settings.read_text()
    assert "ALLOWED_HOSTS = " in original
    settings.write_text(re.sub(r"^ALLOWED_HOSTS = .*$", 'ALLOWED_HOSTS = ["nope.invalid"]', original, flags=re.M))
    try:
        reload_uwsgi_and_wait(site.host, site.host, 400)
        res, out = fab(site, "status")
        assert res.returncode == 1, out
        assert f"UNHEALTHY: GET / (Host: {site.host.address}) -> 400: Bad Request; does ALLOWED_HOSTS" in res.stdout
        assert f"unhealthy: http: GET / (Host: {site.host.address}) -> 400" in res.stderr
        assert "Traceback" not in out
    finally:
        settings.write_text(original)
        reload_uwsgi_and_wait(site.host, site.host, 200)
    res, out = fab(site, "status")
    assert res.returncode == 0, out


def test_6_every_server_name_is_checked(site):
    """allowed_hosts misses the second name of server_name: caught (the first name alone answers 200)."""
    cfg = sample_config(site.host).replace(f'server_name = "{site.host.address}"',
                                           f'server_name = "{site.host.address} www.sample.test"')
    site.proj.write_config(cfg + FAST + f'[django]\nallowed_hosts = ["{site.host.address}"]\n', name="two-names.toml")
    res, out = fab(site, "deploy", config="two-names.toml")
    assert res.returncode == 1, out
    assert "GET / (Host: www.sample.test) -> 400" in out and "include www.sample.test?" in out
    assert_reverted(site, out)
    # the same with health.revert = false: the release stays live, and fab status names the failing name only
    site.proj.write_config(cfg + '[health]\ntimeout = 2\nrevert = false\n'
                           + f'[django]\nallowed_hosts = ["{site.host.address}"]\n', name="two-names-stay.toml")
    res, out = fab(site, "deploy", config="two-names-stay.toml")
    assert res.returncode == 1 and "health.revert = false: left as is" in out, out
    res, out = fab(site, "status", "--json", config="two-names-stay.toml")
    assert res.returncode == 1, out
    [st] = json.loads(res.stdout)
    assert st["http"]["ok"] is False and st["http"]["status"] == 400  # the failing name's answer, not the first's
    assert st["http"]["answer"].startswith("GET / (Host: www.sample.test) -> 400: ") and \
        site.host.address not in st["http"]["answer"]
    assert "unhealthy: http: GET / (Host: www.sample.test) -> 400" in res.stderr
    # with the default allowed_hosts (the server names), both names pass
    site.proj.write_config(cfg, name="two-names-ok.toml")
    res, out = fab(site, "deploy", config="two-names-ok.toml")
    assert res.returncode == 0, out
    assert (f"GET / (Host: {site.host.address}) -> 200; GET / (Host: www.sample.test) -> 200") in out
