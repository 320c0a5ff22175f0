"""WebSockets through the load balancer, on real hosts: one lb host (nginx) in front of one app host running
the sample project's ASGI app under uvicorn over TCP. The balancer's site passes the upgrade on (HTTP/1.1,
Upgrade and Connection from its map), so a WebSocket opened at the lb's address echoes: the lb passes it
straight to uvicorn on the app host. The WebSocket client is test_asgi_e2e's (stdlib only)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import make_project, release_of, run_fab
from test_asgi_e2e import async_view, websocket_echo
from test_lb_e2e import fleet_config

ASGI = ('[app]\nserver = "uvicorn"\nasgi = "sampleproject.asgi:application"\n'
        "[uvicorn]\nworkers = 2\ngraceful_timeout = 5\nreload_timeout = 30\n"
        "[balancer]\nwebsocket_timeout = 600\n")


@pytest.fixture(scope="module")
def fleet(make_host, tmp_path_factory, wheel_cache):
    app, lb = make_host("wsapp"), make_host("wslb")
    proj = make_project(tmp_path_factory.mktemp("wsfleet"))
    # uvicorn speaks WebSocket through the websockets package
    req = (proj.src / "requirements.txt").read_text()
    proj.commit("websockets", {"requirements.txt": req + "websockets\n"})
    proj.write_config(fleet_config([app], lb, ASGI))
    return SimpleNamespace(app=app, lb=lb, proj=proj, cache=wheel_cache)


def test_a_websocket_through_the_balancer_reaches_the_asgi_app_host(fleet):
    res = run_fab(fleet.proj.root, "deploy", cache=fleet.cache)
    assert res.returncode == 0, res.stdout + res.stderr
    rel = release_of(res.stdout)
    site = fleet.lb.path("/etc/nginx/sites-available/sample").read_text()
    assert "proxy_set_header Connection $fabdeploy_sample_upgrade;" in site
    assert "proxy_read_timeout 600s;" in site
    through_lb = SimpleNamespace(host=fleet.lb)
    view = async_view(through_lb)
    assert view["release"] == rel and view["async"], view
    # (the sample's echo names the release that answered)
    assert websocket_echo(through_lb, "through the balancer") == f"{rel}: through the balancer"
    assert websocket_echo(through_lb, "twice") == f"{rel}: twice"
