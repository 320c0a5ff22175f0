"""Health means healthy behind a load balancer, end to end: one app host (uWSGI over TCP, checked straight in
the uwsgi protocol) and one lb host (nginx, checked through itself). The same rule as a single host: a redirect
to https without TLS fails and reverts; `fab status` reports an app host answering 400 and exits 1."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from conftest import reload_uwsgi_and_wait, make_project, run_fab, sample_config


@pytest.fixture(scope="module")
def fleet(make_host, tmp_path_factory, wheel_cache):
    app, lb = make_host("hlbapp"), make_host("hlbfront")
    proj = make_project(tmp_path_factory.mktemp("hlb"))
    cfg = sample_config(lb).replace(f'hosts = ["{lb.ssh_target()}"]\n', "")
    proj.write_config(cfg + f'[roles]\napp = ["{app.ssh_target()}"]\nlb = ["{lb.ssh_target()}"]\n'
                      '[health]\ntimeout = 3\n')
    return SimpleNamespace(app=app, lb=lb, proj=proj, cache=wheel_cache, good="")


def fab(fleet, *args):
    res = run_fab(fleet.proj.root, *args, cache=fleet.cache)
    return res, res.stdout + res.stderr


def current(fleet) -> str:
    return fleet.app.path("/srv/sample/current").resolve().name


def test_1_fleet_deploy_checks_over_uwsgi_and_through_the_balancer(fleet):
    res, out = fab(fleet, "deploy")
    assert res.returncode == 0, out
    fleet.good = current(fleet)
    name = fleet.lb.address  # the server_name: the Host both checks send
    assert re.search(rf"^{re.escape(fleet.app.address)}\s+health\s+GET / \(Host: {re.escape(name)}\) -> 200", out,
                     re.M), out
    assert f"through the balancer: GET / (Host: {name}) -> 200" in out
    res, out = fab(fleet, "status")
    assert res.returncode == 0, out


def test_2_an_https_redirect_from_an_app_host_fails_over_uwsgi_and_reverts(fleet):
    settings = fleet.proj.src / "sampleproject" / "settings.py"
    original = settings.read_text()
    fleet.proj.commit("https only", {"sampleproject/settings.py": original + "\nSECURE_SSL_REDIRECT = True\n"})
    try:
        res, out = fab(fleet, "deploy")
        assert res.returncode == 1, out
        assert f"GET / (Host: {fleet.lb.address}) -> 301 https://{fleet.lb.address}/" in out
        assert "SECURE_SSL_REDIRECT" in out and f"reverted to {fleet.good}" in out
        assert current(fleet) == fleet.good
        status, _, body = fleet.lb.http("/", host_header=fleet.lb.address)
        assert status == 200 and f"Release: {fleet.good}".encode() in body
    finally:
        fleet.proj.commit("back to http", {"sampleproject/settings.py": original})



def test_3_status_reports_an_app_host_answering_400_over_uwsgi(fleet):
    settings = fleet.app.path(f"/srv/sample/releases/{fleet.good}/fabdeploy_settings.py")
    original = settings.read_text()
    settings.write_text(re.sub(r"^ALLOWED_HOSTS = .*$", 'ALLOWED_HOSTS = ["nope.invalid"]', original, flags=re.M))
    try:
        reload_uwsgi_and_wait(fleet.app, fleet.lb, 400)
        res, out = fab(fleet, "status")
        assert res.returncode == 1, out
        assert f"{fleet.app.address}: unhealthy: http: GET / (Host: {fleet.lb.address}) -> 400" in res.stderr
        assert f"{fleet.lb.address}: unhealthy: http: GET / (Host: {fleet.lb.address}) -> 400" in res.stderr
        assert "ALLOWED_HOSTS" in res.stdout and "uwsgi protocol" in res.stdout
    finally:
        settings.write_text(original)
        reload_uwsgi_and_wait(fleet.app, fleet.lb, 200)
    res, out = fab(fleet, "status")
    assert res.returncode == 0, out
