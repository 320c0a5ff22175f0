"""Roles and the load balancer: config validation, host selection, rolling batches, the lb's upstream site
(checked by the real `nginx -t`), the app hosts' uWSGI TCP socket, and the health check in the uwsgi
protocol against a real uWSGI.

Nothing here uses SSH.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fabdeploy.appserver.uwsgi import UWSGI as UwsgiServer
from fabdeploy.steps import health

from fabdeploy.hosts import roles

from fabdeploy import model


from fabdeploy.front import firewall

from fabdeploy.front import nginx

from fabdeploy.remote import markers

from fabdeploy.steps import activate

from fabdeploy.steps import configure

from fabdeploy.steps import live_check
from fabdeploy.errors import ConfigError
from fabdeploy.model import Facts
from fabdeploy.hosts.roles import Server
from fabdeploy.remote.shell import q
from test_phases import fakebin, make_cfg, make_rel  # noqa: F401 (a fixture)

UWSGI = str(Path(sys.executable).parent / "uwsgi")
LB = "deploy@10.0.0.10"


def lb_cfg(app=("deploy@10.0.0.1", "deploy@10.0.0.2"), lb=(LB,), **sections):
    """A balanced config: app hosts behind one load balancer."""
    return make_cfg(roles={"app": list(app), "lb": list(lb)}, **sections)


def config_error(**sections) -> str:
    with pytest.raises(ConfigError) as info:
        make_cfg(**sections)
    message = str(info.value)
    assert "\n" not in message
    return message


def app_server(cfg, target) -> Server:
    return next(s for s in roles.servers(cfg) if s.target == target)


# === config validation ========================================================================================

def test_roles_item_with_an_unknown_key_names_it_and_suggests():
    msg = config_error(roles={"app": [{"host": "deploy@10.0.0.1", "wieght": 2}]})
    assert msg.startswith("roles.app item 1 has an unknown key 'wieght' (did you mean 'weight'?)")


@pytest.mark.parametrize("weight", [0, "2", True, 1001])
def test_roles_item_bad_weight(weight):
    msg = config_error(roles={"app": ["deploy@10.0.0.2", {"host": "deploy@10.0.0.1", "weight": weight}]})
    assert msg.startswith("roles.app item 2 (deploy@10.0.0.1) weight must be ")
    assert f"(got {weight!r})" in msg


def test_roles_item_without_host():
    assert config_error(roles={"app": [{"weight": 2}]}).startswith("roles.app item 1 has no host")


def test_roles_bad_host_string():
    msg = config_error(roles={"app": ["deploy@web 1"]})
    assert msg.startswith("roles.app item 1 (deploy@web 1) host must be [user@]host[:port]")


def test_host_listed_in_two_roles():
    msg = config_error(roles={"app": ["deploy@10.0.0.1", "deploy@10.0.0.2"], "lb": ["deploy@10.0.0.2"]})
    assert msg == "host 10.0.0.2 is listed twice (roles.app and roles.lb); a host has one role"


def test_host_listed_in_two_roles_under_other_user_and_port():
    msg = config_error(roles={"app": ["deploy@web1", "deploy@10.0.0.2"], "lb": ["root@web1:2222"]})
    assert msg == "host web1 is listed twice (roles.app and roles.lb); a host has one role"


def test_host_listed_twice_in_one_role():
    msg = config_error(roles={"app": ["deploy@10.0.0.1", {"host": "deploy@10.0.0.1", "weight": 2}]})
    assert msg == "host 10.0.0.1 is listed twice (roles.app and roles.app); a host has one role"


def test_lb_without_app_hosts():
    assert config_error(roles={"lb": [LB]}) == "roles.lb needs app hosts to balance: roles.app is empty"


def test_project_hosts_together_with_roles():
    msg = config_error(project={"hosts": ["deploy@10.0.0.3"]}, roles={"app": ["deploy@10.0.0.1"]})
    assert msg.startswith("project.hosts and [roles] both list hosts: use one")


@pytest.mark.parametrize("method", ["ip_hash", "hash"])
def test_backup_is_refused_with_hash_methods(method):
    msg = config_error(roles={"app": ["deploy@10.0.0.1", {"host": "deploy@10.0.0.2", "backup": True}],
                              "lb": [LB]}, balancer={"method": method})
    assert msg == (f'roles.app: backup servers cannot be used with balancer.method = "{method}" '
                   "(nginx refuses it)")


@pytest.mark.parametrize("method", ["round_robin", "least_conn"])
def test_backup_is_accepted_with_other_methods(method):
    cfg = lb_cfg(app=["deploy@10.0.0.1", {"host": "deploy@10.0.0.2", "backup": True}],
                 balancer={"method": method})
    assert [s.backup for s in roles.servers(cfg) if s.role == "app"] == [False, True]


@pytest.mark.parametrize("setting", [{"weight": 2}, {"backup": True}, {"max_fails": 2}])
def test_lb_entry_with_app_settings(setting):
    msg = config_error(roles={"app": ["deploy@10.0.0.1"], "lb": [{"host": LB, **setting}]})
    assert msg == f"roles.lb {LB}: weight, backup, max_fails, fail_timeout are settings of app hosts"


def test_lb_entry_may_say_its_address():
    """(the address the app hosts see it connect from: their firewall lets it in)"""
    cfg = lb_cfg(lb=({"host": "deploy@lb.example.com", "address": "10.0.0.9"},))
    assert "ip saddr { 10.0.0.9 } accept" in firewall.firewall_rules(cfg)[1]


def test_lb_entry_as_table_with_host_only_is_fine():
    cfg = lb_cfg(lb=[{"host": LB}])
    assert [s.target for s in roles.servers(cfg) if s.role == "lb"] == [LB]


@pytest.mark.parametrize("rolling", ["30", "0%", "150%", -1, True, 10001, 2.5, "30 %"])
def test_fleet_rolling_invalid(rolling):
    msg = config_error(fleet={"rolling": rolling})
    assert msg.startswith("fleet.rolling must be ") and msg.endswith(f"(got {rolling!r})")


@pytest.mark.parametrize("rolling", [0, 2, "30%", "100%", "1%"])
def test_fleet_rolling_valid(rolling):
    assert make_cfg(fleet={"rolling": rolling}).fleet.rolling == rolling


@pytest.mark.parametrize("method", ["random", "RoundRobin", "", 1])
def test_balancer_method_invalid(method):
    msg = config_error(balancer={"method": method})
    assert msg == ('balancer.method must be one of "round_robin", "least_conn", "ip_hash", "hash" '
                   f"(got {method!r})")


@pytest.mark.parametrize("bind", ["localhost", "10.0.0.1:8001", "::1", 1])
def test_balancer_bind_invalid(bind):
    msg = config_error(balancer={"bind": bind})
    assert msg.startswith("balancer.bind must be ") and msg.endswith(f"(got {bind!r})")


def test_unknown_balancer_key_is_suggested():
    assert config_error(balancer={"methd": "hash"}) == "unknown key balancer.methd (did you mean 'method'?)"


def test_balancer_and_fleet_defaults():
    cfg = make_cfg()
    assert cfg.fleet.parallel == 10 and cfg.fleet.rolling == 0
    assert cfg.roles.app == [] and cfg.roles.lb == []
    b = cfg.balancer
    assert (b.method, b.hash_key, b.hash_consistent, b.keepalive, b.port, b.bind, b.app_nginx, b.media,
            b.max_fails, b.fail_timeout) == ("round_robin", "$request_uri", True, 0, 8001, "", False, "app", 1, 10)


# === servers() ================================================================================================

def test_servers_from_strings_and_inline_tables():
    cfg = lb_cfg(app=["deploy@10.0.0.1",
                      {"host": "deploy@app2.internal", "address": "10.0.0.2", "weight": 3, "backup": True,
                       "max_fails": 5, "fail_timeout": 60}],
                 lb=[LB, {"host": "deploy@10.0.0.11"}])
    assert roles.servers(cfg) == [
        Server("deploy@10.0.0.1", "app", "", 1, False, 1, 10),
        Server("deploy@app2.internal", "app", "10.0.0.2", 3, True, 5, 60),
        Server(LB, "lb", "", 1, False, 1, 10),
        Server("deploy@10.0.0.11", "lb", "", 1, False, 1, 10),
    ]
    assert roles.balanced(cfg)


def test_servers_defaults_come_from_the_balancer_section():
    cfg = lb_cfg(app=["deploy@10.0.0.1", {"host": "deploy@10.0.0.2", "max_fails": 0}],
                 balancer={"max_fails": 4, "fail_timeout": 25})
    apps = [s for s in roles.servers(cfg) if s.role == "app"]
    assert [(s.max_fails, s.fail_timeout) for s in apps] == [(4, 25), (0, 25)]


def test_project_hosts_are_app_servers():
    cfg = make_cfg(project={"hosts": ["deploy@10.0.0.1", "web2:2222"]}, balancer={"max_fails": 2, "fail_timeout": 7})
    assert roles.servers(cfg) == [Server("deploy@10.0.0.1", "app", max_fails=2, fail_timeout=7),
                                  Server("web2:2222", "app", max_fails=2, fail_timeout=7)]
    assert not roles.balanced(cfg)


def test_no_hosts_at_all():
    assert roles.servers(make_cfg()) == []


@pytest.mark.parametrize("target, hostname", [
    ("deploy@10.0.0.1", "10.0.0.1"),
    ("10.0.0.1:2222", "10.0.0.1"),
    ("deploy@[::1]:22", "::1"),
    ("[fd00::2]", "fd00::2"),
    ("web1", "web1"),
    ("deploy@web1.example.com:22", "web1.example.com"),
])
def test_server_hostname(target, hostname):
    assert Server(target).hostname == hostname
    assert Server(target).upstream_address == hostname


def test_server_address_overrides_the_upstream_address():
    assert Server("deploy@app1.internal", address="10.0.0.7").upstream_address == "10.0.0.7"


# === select() =================================================================================================

def test_select_without_h_takes_every_configured_host():
    cfg = lb_cfg()
    assert [s.target for s in roles.select(cfg, [])] == ["deploy@10.0.0.1", "deploy@10.0.0.2", LB]


def test_select_matches_h_by_exact_target():
    cfg = lb_cfg(app=["deploy@10.0.0.1", {"host": "deploy@10.0.0.2", "weight": 4}])
    assert roles.select(cfg, ["deploy@10.0.0.2"]) == [Server("deploy@10.0.0.2", "app", weight=4)]


def test_select_matches_h_by_host_name_keeping_the_h_target():
    cfg = lb_cfg(app=["deploy@10.0.0.1", {"host": "deploy@10.0.0.2", "weight": 4, "max_fails": 3}])
    chosen = roles.select(cfg, ["root@10.0.0.2:2222", "10.0.0.10"])
    assert chosen == [Server("root@10.0.0.2:2222", "app", weight=4, max_fails=3),
                      Server("10.0.0.10", "lb")]


def test_select_h_host_not_in_roles_is_an_error_with_a_balancer():
    with pytest.raises(ConfigError) as info:
        roles.select(lb_cfg(), ["deploy@10.0.0.99"])
    assert str(info.value) == "host deploy@10.0.0.99 (-H) is in no role of [roles]; add it to roles.app or roles.lb"


def test_select_unknown_h_host_is_an_app_host_without_a_balancer():
    cfg = make_cfg(project={"hosts": ["deploy@10.0.0.1"]})
    assert roles.select(cfg, ["deploy@10.0.0.99"]) == [Server("deploy@10.0.0.99", "app")]
    assert roles.select(make_cfg(), ["web9"]) == [Server("web9", "app")]


def test_select_filters_by_role():
    cfg = lb_cfg()
    assert [s.target for s in roles.select(cfg, [], ("app",))] == ["deploy@10.0.0.1", "deploy@10.0.0.2"]
    assert [s.target for s in roles.select(cfg, [], ("lb",))] == [LB]
    assert [s.target for s in roles.select(cfg, ["deploy@10.0.0.1", LB], ("lb",))] == [LB]


def test_select_role_filter_leaving_nothing_is_an_error():
    with pytest.raises(ConfigError) as info:
        roles.select(lb_cfg(), ["deploy@10.0.0.1"], ("lb",))
    assert str(info.value) == "no hosts with role lb among the selected hosts"


def test_select_without_any_host_is_an_error():
    with pytest.raises(ConfigError) as info:
        roles.select(make_cfg(), [])
    assert str(info.value).startswith("no hosts: pass -H user@host")


@pytest.mark.parametrize("value, expected", [
    (None, ("app", "lb")), ("", ("app", "lb")), ("app", ("app",)), ("lb", ("lb",)),
    ("app,lb", ("app", "lb")), (" lb , app ", ("lb", "app")),
])
def test_parse_roles(value, expected):
    assert roles.parse_roles(value) == expected


def test_parse_roles_rejects_an_unknown_role():
    with pytest.raises(ConfigError) as info:
        roles.parse_roles("app,web")
    assert str(info.value) == "--roles: unknown role 'web' (roles are: app, lb)"


# === batches() ================================================================================================

HOSTS5 = ["h1", "h2", "h3", "h4", "h5"]


@pytest.mark.parametrize("items, rolling, sizes", [
    (HOSTS5, 0, [5]),
    (HOSTS5, 2, [2, 2, 1]),
    (HOSTS5, 1, [1, 1, 1, 1, 1]),
    (HOSTS5, 7, [5]),
    (HOSTS5, "30%", [2, 2, 1]),
    (HOSTS5, "100%", [5]),
    (HOSTS5, "1%", [1, 1, 1, 1, 1]),
    (["h1"], "1%", [1]),
    (["h1"], 0, [1]),
    ([], 2, []),
])
def test_batches(items, rolling, sizes):
    groups = roles.batches(items, rolling)
    assert [len(g) for g in groups] == sizes
    assert [h for g in groups for h in g] == items  # every host once, in order


# === the load balancer's site =================================================================================

def upstream_lines(site: str) -> list[str]:
    lines = [ln.strip() for ln in site.splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("upstream "))
    end = lines.index("}", start)
    return lines[start:end + 1]


def nginx_t(tmp_path: Path, site: str) -> subprocess.CompletedProcess:
    """The real `nginx -t` on a site (log paths moved under tmp_path), like test_phases does."""
    site = site.replace("/var/log/nginx/", f"{tmp_path}/")
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "uwsgi_params").write_text("")
    (tmp_path / "nginx.conf").write_text(f"pid {tmp_path}/nginx.pid;\nevents {{}}\nhttp {{ include site.conf; }}\n")
    return subprocess.run(["nginx", "-t", "-q", "-e", "stderr", "-p", f"{tmp_path}/",
                           "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True, timeout=60)


LB_CASES = [
    pytest.param(
        dict(app=[{"host": "deploy@10.0.0.1", "weight": 3}, "deploy@10.0.0.2"]), {}, (),
        ["upstream shop_app {",
         "server 10.0.0.1:8001 weight=3 max_fails=1 fail_timeout=10s;",
         "server 10.0.0.2:8001 max_fails=1 fail_timeout=10s;",
         "}"], id="round_robin-weights"),
    pytest.param(
        dict(app=["deploy@10.0.0.1", {"host": "deploy@10.0.0.2", "backup": True, "max_fails": 0,
                                      "fail_timeout": 90}]),
        {"max_fails": 3, "fail_timeout": 30, "port": 9000}, (),
        ["upstream shop_app {",
         "server 10.0.0.1:9000 max_fails=3 fail_timeout=30s;",
         "server 10.0.0.2:9000 max_fails=0 fail_timeout=90s backup;",
         "}"], id="round_robin-backup-fails-port"),
    pytest.param(
        dict(app=[{"host": "deploy@10.0.0.1", "weight": 2}, {"host": "deploy@10.0.0.2", "backup": True}]),
        {"method": "least_conn", "keepalive": 16}, (),
        ["upstream shop_app {",
         "least_conn;",
         "server 10.0.0.1:8001 weight=2 max_fails=1 fail_timeout=10s;",
         "server 10.0.0.2:8001 max_fails=1 fail_timeout=10s backup;",
         "keepalive 16;",
         "}"], id="least_conn-backup-keepalive"),
    pytest.param(
        dict(app=[{"host": "deploy@10.0.0.1", "weight": 5}, "deploy@[fd00::3]:22"]),
        {"method": "ip_hash"}, (),
        ["upstream shop_app {",
         "ip_hash;",
         "server 10.0.0.1:8001 weight=5 max_fails=1 fail_timeout=10s;",
         "server [fd00::3]:8001 max_fails=1 fail_timeout=10s;",
         "}"], id="ip_hash-weights-ipv6"),
    pytest.param(
        dict(app=["deploy@10.0.0.1", {"host": "deploy@10.0.0.2", "weight": 2}]),
        {"method": "hash"}, (),
        ["upstream shop_app {",
         "hash $request_uri consistent;",
         "server 10.0.0.1:8001 max_fails=1 fail_timeout=10s;",
         "server 10.0.0.2:8001 weight=2 max_fails=1 fail_timeout=10s;",
         "}"], id="hash-consistent"),
    pytest.param(
        dict(app=["deploy@10.0.0.1", "deploy@10.0.0.2"]),
        {"method": "hash", "hash_consistent": False, "hash_key": "$remote_addr", "keepalive": 4}, (),
        ["upstream shop_app {",
         "hash $remote_addr;",
         "server 10.0.0.1:8001 max_fails=1 fail_timeout=10s;",
         "server 10.0.0.2:8001 max_fails=1 fail_timeout=10s;",
         "keepalive 4;",
         "}"], id="hash-not-consistent"),
    pytest.param(
        dict(app=[{"host": "deploy@app1.internal", "address": "10.0.0.7"}, "deploy@10.0.0.2",
                  {"host": "deploy@10.0.0.3", "backup": True}]),
        {}, ("10.0.0.2", "10.0.0.3"),
        ["upstream shop_app {",
         "server 10.0.0.7:8001 max_fails=1 fail_timeout=10s;",
         "server 10.0.0.2:8001 max_fails=1 fail_timeout=10s down;",
         "server 10.0.0.3:8001 max_fails=1 fail_timeout=10s backup down;",
         "}"], id="address-and-drained"),
    pytest.param(
        dict(app=["deploy@10.0.0.1", "deploy@10.0.0.2"]), {"method": "ip_hash"}, ("10.0.0.1",),
        ["upstream shop_app {",
         "ip_hash;",
         "server 10.0.0.1:8001 max_fails=1 fail_timeout=10s down;",
         "server 10.0.0.2:8001 max_fails=1 fail_timeout=10s;",
         "}"], id="ip_hash-drained"),
    pytest.param(
        dict(app=[{"host": "deploy@web1", "address": "[fd00::1]"}, "deploy@10.0.0.2"]), {}, ("[fd00::1]",),
        ["upstream shop_app {",
         "server [fd00::1]:8001 max_fails=1 fail_timeout=10s down;",
         "server 10.0.0.2:8001 max_fails=1 fail_timeout=10s;",
         "}"], id="ipv6-address-drained"),
]


def test_drain_matches_hosts_named_differently_with_dash_h():
    """`-H 10.0.0.1` for "deploy@10.0.0.1" in the config: the batch drained is that upstream server."""
    cfg = lb_cfg()
    batch = roles.select(cfg, ["root@10.0.0.1:22"], ("app",))
    site = nginx.lb_site(cfg, drained={s.upstream_address for s in batch})
    assert "server 10.0.0.1:8001 max_fails=1 fail_timeout=10s down;" in upstream_lines(site)


@pytest.mark.parametrize("roles_, balancer, drained, expected", LB_CASES)
def test_lb_site_upstream_and_nginx_accepts_it(tmp_path, roles_, balancer, drained, expected):
    cfg = lb_cfg(**roles_, balancer=balancer)
    site = nginx.lb_site(cfg, drained=set(drained))
    assert upstream_lines(site) == expected
    proc = nginx_t(tmp_path, site)
    assert proc.returncode == 0, proc.stderr


def test_lb_site_server_block(tmp_path):
    cfg = lb_cfg(nginx={"server_name": "example.com", "listen": 8080, "client_max_body_size": "20M"})
    site = nginx.lb_site(cfg)
    lines = [ln.strip() for ln in site.splitlines()]
    assert "listen 8080;" in lines and "server_name example.com;" in lines and "client_max_body_size 20M;" in lines
    i = lines.index("location /static/ {")
    assert lines[i + 1:i + 4] == ["alias /srv/shop/shared/static/current/;", "expires 30d;", "}"]
    k = lines.index("location / {")
    assert lines[k + 1:k + 3] == ["uwsgi_pass shop_app;", "include uwsgi_params;"]
    assert "location /media/ {" not in lines  # balancer.media = "app": the app hosts serve it
    assert site.count("{") == site.count("}")
    proc = nginx_t(tmp_path, site)
    assert proc.returncode == 0, proc.stderr


def test_lb_site_serves_media_itself_with_media_lb(tmp_path):
    cfg = lb_cfg(balancer={"media": "lb"}, django={"media_url": "/files/"})
    lines = [ln.strip() for ln in nginx.lb_site(cfg).splitlines()]
    j = lines.index("location /files/ {")
    assert lines[j + 1:j + 3] == ["alias /srv/shop/shared/media/;", "}"]
    proc = nginx_t(tmp_path, nginx.lb_site(cfg))
    assert proc.returncode == 0, proc.stderr


def test_lb_site_upstream_name_of_a_dotted_project(tmp_path):
    cfg = lb_cfg(project={"name": "my.shop"})
    site = nginx.lb_site(cfg)
    assert upstream_lines(site)[0] == "upstream my_dshop_app {"  # (my_shop would be my__shop_app)
    assert "        uwsgi_pass my_dshop_app;" in site.splitlines()
    assert nginx_t(tmp_path, site).returncode == 0


def test_nginx_site_of_an_lb_host_is_the_lb_site():
    cfg = lb_cfg()
    lb = app_server(cfg, LB)
    assert nginx.nginx_site(cfg, lb) == nginx.lb_site(cfg)


# === app hosts: uWSGI on TCP ==================================================================================

def ini_values(text: str, key: str) -> list[str]:
    return [ln.partition("=")[2].strip() for ln in text.splitlines() if ln.partition("=")[0].strip() == key]


@pytest.mark.parametrize("app, balancer, socket_", [
    ("deploy@10.0.0.1", {}, "10.0.0.1:8001"),
    ({"host": "deploy@app1.internal", "address": "10.0.0.5"}, {"port": 9100}, "10.0.0.5:9100"),
    ("deploy@10.0.0.1", {"bind": "0.0.0.0"}, "0.0.0.0:8001"),
    ("deploy@10.0.0.1", {"bind": "[::]"}, "[::]:8001"),
    ("deploy@[fd00::1]:22", {}, "[fd00::1]:8001"),
    ("deploy@app1.internal", {}, "0.0.0.0:8001"),
])
def test_uwsgi_ini_of_a_balanced_app_host_binds_tcp_and_serves_media(app, balancer, socket_):
    cfg = lb_cfg(app=[app], balancer=balancer)
    server = next(s for s in roles.servers(cfg) if s.role == "app")
    text = UwsgiServer().render_config(cfg, make_rel(), server)
    assert ini_values(text, "socket") == [socket_]
    assert ini_values(text, "static-map") == ["/media=/srv/shop/shared/media"]
    assert ini_values(text, "offload-threads") == ["1"]


def test_uwsgi_ini_static_map_follows_media_url():
    cfg = lb_cfg(django={"media_url": "/files/up/"})
    text = UwsgiServer().render_config(cfg, make_rel(), app_server(cfg, "deploy@10.0.0.1"))
    assert ini_values(text, "static-map") == ["/files/up=/srv/shop/shared/media"]


def test_uwsgi_ini_without_static_map_when_the_lb_serves_media():
    cfg = lb_cfg(balancer={"media": "lb"})
    text = UwsgiServer().render_config(cfg, make_rel(), app_server(cfg, "deploy@10.0.0.1"))
    assert ini_values(text, "socket") == ["10.0.0.1:8001"]
    assert ini_values(text, "static-map") == [] and ini_values(text, "offload-threads") == []


def test_uwsgi_ini_of_an_unbalanced_host_keeps_the_unix_socket():
    cfg = make_cfg(project={"hosts": ["deploy@10.0.0.1"]})
    for server in (None, roles.servers(cfg)[0]):
        text = UwsgiServer().render_config(cfg, make_rel(), server)
        assert ini_values(text, "socket") == ["/srv/shop/shared/run/uwsgi.sock"]
        assert ini_values(text, "static-map") == [] and ini_values(text, "offload-threads") == []
    # roles.app without an lb: every app host still serves itself
    cfg = make_cfg(roles={"app": ["deploy@10.0.0.1"]})
    text = UwsgiServer().render_config(cfg, make_rel(), roles.servers(cfg)[0])
    assert ini_values(text, "socket") == ["/srv/shop/shared/run/uwsgi.sock"]
    assert ini_values(text, "static-map") == []


@pytest.mark.parametrize("app, balancer, upstream", [
    ("deploy@10.0.0.1", {}, "10.0.0.1:8001"),
    ("deploy@app1.internal", {}, "127.0.0.1:8001"),
    ("deploy@10.0.0.1", {"bind": "0.0.0.0", "port": 9000}, "127.0.0.1:9000"),
    ("deploy@10.0.0.1", {"bind": "[::1]"}, "[::1]:8001"),
])
def test_nginx_site_of_an_app_host_with_app_nginx_passes_to_tcp(tmp_path, app, balancer, upstream):
    cfg = lb_cfg(app=[app], balancer={"app_nginx": True, **balancer})
    server = next(s for s in roles.servers(cfg) if s.role == "app")
    assert roles.runs_nginx(cfg, server)
    site = nginx.nginx_site(cfg, server)
    assert f"        uwsgi_pass {upstream};" in site.splitlines()
    proc = nginx_t(tmp_path, site)
    assert proc.returncode == 0, proc.stderr


def test_runs_nginx():
    cfg = lb_cfg()
    app, lb = app_server(cfg, "deploy@10.0.0.1"), app_server(cfg, LB)
    assert not roles.runs_nginx(cfg, app)
    assert roles.runs_nginx(cfg, lb) and roles.runs_nginx(cfg, None)
    assert roles.runs_nginx(lb_cfg(balancer={"app_nginx": True}), app)
    plain = make_cfg(project={"hosts": ["deploy@10.0.0.1"]})
    assert roles.runs_nginx(plain, roles.servers(plain)[0])


# === phases of a balanced app host ============================================================================

def test_config_phase_of_a_balanced_app_host_installs_no_nginx_site():
    cfg = lb_cfg()
    server = app_server(cfg, "deploy@10.0.0.1")
    lines = configure.config(cfg, make_rel(), Facts(), server).lines
    text = "\n".join(lines)
    assert "nginx -t" not in text and "/usr/bin/install" not in text
    assert markers.note("no nginx on this app host (the lb hosts balance it)") in lines
    assert "socket = 10.0.0.1:8001" in text


def test_config_phase_of_a_balanced_app_host_with_app_nginx_installs_the_site():
    cfg = lb_cfg(balancer={"app_nginx": True})
    lines = configure.config(cfg, make_rel(), Facts(), app_server(cfg, "deploy@10.0.0.1")).lines
    assert "    if ! out=$(sudo -n /usr/sbin/nginx -t 2>&1); then" in lines
    assert "uwsgi_pass 10.0.0.1:8001;" in "\n".join(lines)


def test_restart_phase_of_a_balanced_app_host_leaves_nginx_alone():
    cfg = lb_cfg()
    lines = activate.restart(cfg, make_rel(), Facts(), app_server(cfg, "deploy@10.0.0.1")).lines
    assert not [ln for ln in lines if "nginx" in ln]
    assert any("/bin/uwsgi --ini" in ln for ln in lines)
    with_nginx = activate.restart(lb_cfg(balancer={"app_nginx": True}), make_rel(), Facts(),
                                app_server(cfg, "deploy@10.0.0.1")).lines
    assert "  sudo -n /usr/sbin/nginx" in with_nginx
    assert "  sudo -n /usr/sbin/nginx" in activate.restart(make_cfg(), make_rel(), Facts()).lines


def test_fingerprint_of_a_balanced_app_host_depends_on_its_socket():
    cfg = lb_cfg()
    a, b = app_server(cfg, "deploy@10.0.0.1"), app_server(cfg, "deploy@10.0.0.2")
    assert live_check.fingerprint(cfg, "a" * 40, b"", a) != live_check.fingerprint(cfg, "a" * 40, b"", b)
    assert live_check.fingerprint(cfg, "a" * 40, b"", a) == live_check.fingerprint(cfg, "a" * 40, b"", a)


# === health: the check target and the uwsgi protocol against a real uWSGI =====================================

def test_check_target():
    cfg = lb_cfg(app=["deploy@10.0.0.1", "deploy@app2.internal"], nginx={"server_name": "example.com"})
    assert health.check_target(cfg, "10.0.0.1", app_server(cfg, "deploy@10.0.0.1")) == \
        ("uwsgi", "10.0.0.1", 8001, "example.com")
    assert health.check_target(cfg, "app2.internal", app_server(cfg, "deploy@app2.internal")) == \
        ("uwsgi", "127.0.0.1", 8001, "example.com")
    assert health.check_target(cfg, "10.0.0.10", app_server(cfg, LB)) == ("http", "127.0.0.1", 80, "example.com")
    nginx_cfg = lb_cfg(balancer={"app_nginx": True})
    assert health.check_target(nginx_cfg, "10.0.0.1", app_server(nginx_cfg, "deploy@10.0.0.1")) == \
        ("http", "127.0.0.1", 80, "10.0.0.1")
    v6 = lb_cfg(balancer={"bind": "[::]", "port": 9000})
    assert health.check_target(v6, "h", app_server(v6, "deploy@10.0.0.1")) == ("uwsgi", "::1", 9000, "h")
    assert health.check_command(cfg, "10.0.0.1", app_server(cfg, "deploy@10.0.0.1")).endswith(" " + q(json.dumps(
        {"proto": "uwsgi", "addr": "10.0.0.1", "port": 8001, "hosts": ["example.com"], "path": "/", "accept": [],
         "tls": False, "timeout": 15})))


HEALTH_APP = """\
def application(environ, start_response):
    if environ["PATH_INFO"] == "/bad":
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"down"]
    assert environ["HTTP_HOST"] == "example.com", environ["HTTP_HOST"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def real_uwsgi(tmp_path):
    """A real uWSGI (the test venv's) serving HEALTH_APP on a 127.0.0.1 TCP port; stopped by its pid."""
    (tmp_path / "app.py").write_text(HEALTH_APP)
    port = _free_port()
    log = open(tmp_path / "uwsgi.log", "wb")
    proc = subprocess.Popen([UWSGI, "--socket", f"127.0.0.1:{port}", "--wsgi-file", str(tmp_path / "app.py"),
                             "--master", "--processes", "1", "--die-on-term"],
                            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"uWSGI exited ({proc.returncode}): {(tmp_path / 'uwsgi.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"uWSGI did not listen on {port} within 15s")
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def run_check(proto, addr, port, host, path, accept, timeout) -> subprocess.CompletedProcess:
    spec = {"proto": proto, "addr": addr, "port": port, "hosts": [host], "path": path, "accept": accept,
            "tls": False, "timeout": timeout}
    return subprocess.run([sys.executable, "-c", health.check_program(make_cfg()), json.dumps(spec)], capture_output=True,
                          text=True, timeout=60)


def test_health_check_in_the_uwsgi_protocol_against_real_uwsgi(real_uwsgi):
    port = real_uwsgi
    ok = run_check("uwsgi", "127.0.0.1", port, "example.com", "/", [], 5)
    assert (ok.returncode, ok.stdout) == (0, "GET / (Host: example.com) -> 200\n"), ok.stderr
    # an exact wanted status, and a query string
    ok = run_check("uwsgi", "127.0.0.1", port, "example.com", "/?x=1", [200], 5)
    assert (ok.returncode, ok.stdout) == (0, "GET /?x=1 (Host: example.com) -> 200\n"), ok.stderr
    started = time.monotonic()
    bad = run_check("uwsgi", "127.0.0.1", port, "example.com", "/bad", [], 1)
    assert (bad.returncode, bad.stdout) == (1, "GET /bad (Host: example.com) -> 503\n"), bad.stderr
    assert time.monotonic() - started < 15
    # wanted 503 exactly: healthy
    assert run_check("uwsgi", "127.0.0.1", port, "example.com", "/bad", [503], 1).returncode == 0


def test_health_check_in_the_uwsgi_protocol_with_nothing_listening():
    port = _free_port()
    proc = run_check("uwsgi", "127.0.0.1", port, "example.com", "/", [], 1)
    assert proc.returncode == 1
    assert proc.stdout.startswith("GET / (Host: example.com): ") and "refused" in proc.stdout.lower()


def test_deploying_only_load_balancers_is_one_clear_error(tmp_path):
    """Without the app hosts in the same run the balancers have no static files to take: one line, before SSH."""
    from fabdeploy.ops.deploy import deploy_all
    from fabdeploy.errors import FabdeployError
    from fabdeploy.output import Printer
    from fabric import Connection

    src = tmp_path / "src"
    src.mkdir()
    (src / "manage.py").write_text("")
    (src / "requirements.txt").write_text("Django\n")
    cfg = lb_cfg()
    cfg.source_dir = src
    conn = roles.attach(Connection("10.0.0.10"), roles.select(cfg, [LB])[0])
    with pytest.raises(FabdeployError, match="the load balancers get this release's static files from the app hosts"):
        deploy_all([conn], cfg, Printer())


def test_firewall_rules_load_into_real_nftables(tmp_path):
    """The rules fabdeploy writes are accepted by nft (checked with `nft -c`, nothing is applied)."""
    cfg = lb_cfg(lb=(LB, {"host": "deploy@lb2", "address": "fd00::9"}))
    table, rules = firewall.firewall_rules(cfg)
    assert table == "fabdeploy_shop"
    assert "tcp dport 8001 ip saddr { 10.0.0.10 } accept" in rules
    assert "tcp dport 8001 ip6 saddr { fd00::9 } accept" in rules
    assert rules.rstrip().splitlines()[-3].strip() == "tcp dport 8001 reject with tcp reset"
    (tmp_path / "fw.nft").write_text(rules)
    proc = subprocess.run(["nft", "-c", "-f", str(tmp_path / "fw.nft")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_firewall_modes():
    cfg = lb_cfg()
    app = roles.servers(cfg)[0]
    # checked (nft -c) in the config phase, applied at the switch (the release's rules copied to the one fixed
    # path root's nft reads: a sudoers drop-in lists it)
    staged = "/srv/shop/shared/config/firewall.nft"
    config = "\n".join(firewall.firewall(cfg, app, "/srv/shop/tmp/R"))
    assert f"cp /srv/shop/tmp/R/firewall.nft {staged}" in config and f"sudo -n /usr/sbin/nft -c -f {staged}" in config
    switch = "\n".join(firewall.firewall_apply(cfg, app, "/srv/shop/tmp/R"))
    assert f"cp /srv/shop/tmp/R/firewall.nft {staged}" in switch and f"sudo -n /usr/sbin/nft -f {staged}" in switch
    rel = model.Release("R", "a" * 40, "main", "git", "", "")
    assert f"nft -f {staged}" in "\n".join(activate.switch(cfg, rel, app).lines)
    assert "nft" not in "\n".join(activate.switch(cfg, rel, roles.servers(cfg)[-1]).lines)
    assert "warn uWSGI port 8001 is open" in "\n".join(firewall.firewall(cfg, app, "/T"))
    strict = lb_cfg(balancer={"firewall": "nftables"})
    assert "error balancer.firewall" in "\n".join(firewall.firewall(strict, roles.servers(strict)[0], "/T"))
    assert firewall.firewall(lb_cfg(balancer={"firewall": "off"}), app, "/T") == []
    assert firewall.firewall(cfg, roles.servers(cfg)[-1], "/T") == []  # the balancer itself
    # the no-op fingerprint of an app host changes with the balancers its firewall lets in
    other = lb_cfg(lb=("deploy@10.0.0.99",))
    assert live_check.fingerprint(cfg, "a" * 40, b"", app) != live_check.fingerprint(other, "a" * 40, b"", roles.servers(other)[0])


@pytest.mark.parametrize("case", ["changed", "created", "drained"])
def test_an_abandoned_balancer_gets_its_site_back(tmp_path, fakebin, case):
    """changed: this deploy changed the site (site.prev saved) -> the old site; created: there was none ->
    removed; drained: unchanged but a rolling drain marked hosts down -> the full upstream again."""
    from fabdeploy.remote.script import Phase, Script
    from test_phases import err, sh

    cfg = lb_cfg()
    etc = tmp_path / "etc" / "nginx"
    (etc / "sites-available").mkdir(parents=True)
    (etc / "sites-enabled").mkdir()
    site, enabled = etc / "sites-available" / "shop", etc / "sites-enabled" / "shop"
    staging = tmp_path / "staging"
    staging.mkdir()
    if case == "changed":
        (staging / "site.prev").write_text("# the site before\n")
        site.write_text(nginx.lb_site(cfg, drained={"10.0.0.1"}))
    elif case == "created":
        (staging / "nginx-changed").touch()
        site.write_text(nginx.lb_site(cfg))
        enabled.symlink_to(site)
    else:
        site.write_text(nginx.lb_site(cfg, drained={"10.0.0.2"}))
    lines = nginx.lb_restore_site(cfg, Facts(nginx_layout="sites", nginx_pid=str(tmp_path / "no.pid")),
                                   str(staging))
    proc = sh(Script([Phase("abandon", [ln.replace("/etc/nginx/", f"{etc}/")
                                         .replace("/srv/shop/shared/config/", f"{tmp_path}/") for ln in lines])]), tmp_path,
              env=fakebin.env)
    assert proc.returncode == 0, err(proc)
    if case == "changed":
        assert site.read_text() == "# the site before\n"
    elif case == "created":
        assert not site.exists() and not enabled.is_symlink()
    else:
        assert site.read_text() == nginx.lb_site(cfg) and " down;" not in site.read_text()
    assert "nginx -t" in fakebin.log()


def asgi_lb_cfg(**sections):
    return make_cfg(roles={"app": ["deploy@10.0.0.1", "deploy@10.0.0.2"], "lb": [LB]},
                    app={"server": "uvicorn", "asgi": "shop.asgi:application"}, **sections)


def test_lb_site_passes_websocket_upgrades_of_an_asgi_app_and_nginx_accepts_it(tmp_path):
    """An ASGI app: HTTP/1.1 to the app hosts, Upgrade and Connection from a map of the site's own, the
    socket's read/send timeout from balancer.websocket_timeout; a WSGI app behind the balancer gets none."""
    site = nginx.lb_site(asgi_lb_cfg(project={"name": "my.shop"}, balancer={"websocket_timeout": 900}))
    lines = [ln.strip() for ln in site.splitlines()]
    m = lines.index("map $http_upgrade $fabdeploy_my_dshop_upgrade {")
    assert lines[m + 1:m + 4] == ["default upgrade;", "''      close;", "}"]
    k = lines.index("location / {")
    assert lines[k + 1:k + 5] == ["proxy_pass http://my_dshop_app;", "proxy_http_version 1.1;",
                                  "proxy_set_header Upgrade $http_upgrade;",
                                  "proxy_set_header Connection $fabdeploy_my_dshop_upgrade;"]
    block = lines[k + 1:lines.index("}", k)]
    assert "proxy_read_timeout 900s;" in block and "proxy_send_timeout 900s;" in block
    proc = nginx_t(tmp_path, site)
    assert proc.returncode == 0, proc.stderr
    assert "proxy_read_timeout 3600s;" in nginx.lb_site(asgi_lb_cfg())  # the default: an hour
    # upstream keepalive: a request without Upgrade keeps the connection ("" instead of close)
    kept = nginx.lb_site(asgi_lb_cfg(balancer={"keepalive": 8}))
    assert "    ''      \"\";" in kept.splitlines() and "    keepalive 8;" in kept.splitlines()
    assert nginx_t(tmp_path, kept).returncode == 0
    for wsgi in (lb_cfg(), make_cfg(roles={"app": ["deploy@10.0.0.1"], "lb": [LB]}, app={"server": "gunicorn"})):
        plain = nginx.lb_site(wsgi)
        assert "Upgrade" not in plain and "map " not in plain and "proxy_read_timeout" not in plain


def test_balancer_websocket_timeout_is_checked():
    assert "balancer.websocket_timeout" in config_error(balancer={"websocket_timeout": 0})
