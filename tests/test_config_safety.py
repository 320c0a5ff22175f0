"""Config checks from the security review: reserved environment names, nginx-breaking server names, a
balancer port that would cut SSH, one-to-one identifiers for nft tables and nginx upstreams."""
from __future__ import annotations

import itertools

import pytest

from fabdeploy.config import ident
from test_config import config_error, raw


@pytest.mark.parametrize("name", ["DJANGO_SETTINGS_MODULE", "FABDEPLOY_RELEASE", "FABDEPLOY_ANYTHING",
                                  "PYTHONPATH", "PYTHONHOME", "PATH", "LD_PRELOAD"])
def test_reserved_env_names_are_refused(name):
    msg = config_error(raw(django={"env": {name: "x"}}))
    assert msg.startswith(f"django.env must not set {name}: ")


def test_settings_module_in_env_says_where_settings_go():
    msg = config_error(raw(django={"env": {"DJANGO_SETTINGS_MODULE": "shop.settings.dev"}}))
    assert "project.django_settings" in msg and "shop.settings.dev" not in msg


@pytest.mark.parametrize("names", ["example.com\\", "a.com b.com\\", "~^x\\"])
def test_server_name_ending_in_a_backslash_is_refused(names):
    msg = config_error(raw(nginx={"server_name": names}))
    assert msg.startswith("nginx.server_name must not end a name with a backslash")


def test_regex_server_names_with_inner_backslashes_still_work():
    from fabdeploy.config import parse_config
    assert parse_config(raw(nginx={"server_name": "~^www\\.example\\.com$"})).server_names == ["~^www\\.example\\.com$"]


def fleet(port, app=("deploy@10.0.0.1",)):
    return raw(roles={"app": list(app), "lb": ["deploy@10.0.0.9"]}, balancer={"port": port})


@pytest.mark.parametrize("port, app", [(22, ("deploy@10.0.0.1",)), (2222, ("deploy@10.0.0.1:2222",))])
def test_balancer_port_on_an_ssh_port_is_refused(port, app):
    msg = config_error(fleet(port, app))
    assert msg.startswith(f"balancer.port = {port} is an SSH port of these hosts")


def test_ident_is_one_to_one():
    names = ["my-app", "my.app", "my_app", "myapp", "my__app", "my_happ", "my-happ", "a.b-c_d", "a_db_hc__d"]
    idents = [ident(n) for n in names]
    assert len(set(idents)) == len(names)
    assert all(c.isalnum() or c == "_" for c in "".join(idents))
    # exhaustively over short names of the characters that need escaping
    short = ["".join(p) for n in range(1, 5) for p in itertools.product("a_.-h", repeat=n)]
    assert len({ident(n) for n in short}) == len(short)
