"""The app-server seam: a second app server is one class and one registration line. A made-up one (speaking
HTTP, like gunicorn) registered in SERVERS runs through the whole pipeline (deploy, --plan's scripts,
rollback, the nginx sites, the health check, logs, the fingerprint) without a word of uWSGI in what it builds."""
from __future__ import annotations

import re

import pytest

from fabdeploy import appserver, pipeline
from fabdeploy.appserver.base import AppServer
from fabdeploy.appserver.uwsgi import UWSGI
from fabdeploy.config.checks import _int
from fabdeploy.config.schema import Key
from fabdeploy.errors import ConfigError
from fabdeploy.front import nginx
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.roles import servers
from fabdeploy.hosts.target import Target
from fabdeploy.local.wheelhouse import venv_hash
from fabdeploy.model import Facts
from fabdeploy.ops.logs import log_files
from fabdeploy.steps import live_check
from fabdeploy.steps.health import check_spec
from fabdeploy.steps.lock import LockOwner
from test_phases import make_cfg, make_rel


class Toy(AppServer):
    name = "toy"
    title = "Toy"
    section = "toy"
    keys = {"workers": Key(2, _int(1, 64)), "reload_timeout": Key(7, _int(1, 600))}
    process = "toyd"
    protocol = "http"
    config_name = "toy.conf"

    def requirement(self, cfg):
        return "toyd==1.0"

    def reload_timeout(self, cfg):
        return cfg.toy.reload_timeout

    def render_config(self, cfg, rel, server=None):
        return (f"bind = {self.listen(cfg, server)}\nchdir = {Layout(cfg.paths.deploy_to).release(rel.id)}\n"
                f"workers = {cfg.toy.workers}\n")

    def reload_lines(self, cfg, release_word, venv_word, label):
        p = self.paths(Layout(cfg.paths.deploy_to))
        return [f"{venv_word}/bin/toyd --config {p.config} --pidfile {p.pidfile} --reload-or-start",
                "action=reloaded; pid=1"]


@pytest.fixture
def toy():
    appserver.SERVERS["toy"] = Toy()
    try:
        yield appserver.SERVERS["toy"]
    finally:
        del appserver.SERVERS["toy"]


def cfg_for(server: str, roles: bool = False):
    if roles:
        return make_cfg(app={"server": server}, roles={"app": [{"host": "deploy@10.0.0.1"}], "lb": ["deploy@10.0.0.9"]})
    return make_cfg(app={"server": server})


def all_scripts(cfg, role: str = "app") -> str:
    """Every remote script a deploy and a rollback of this config would run on a host, as one text."""
    target = Target.named(cfg, "web1") if role == "app" else Target.named(cfg, "lb1", "lb")
    owner = LockOwner("deploy", "alice", "a1a1a1a1a1a1a1a1", 1, "now")
    rel = make_rel()
    facts = Facts(python_version="3.11.2", current="/srv/shop/releases/20250101T000000Z-0000000")
    state = pipeline.RunState(cfg, target, owner, rel.id, facts=facts, fingerprint="f" * 20)
    kind = "app" if role == "app" else "lb"
    texts = []
    for name in pipeline.PIPELINES[kind]:
        state.rel = None if name == "setup" else rel
        texts.append(pipeline.script(kind, name, state).text())
    texts.append(pipeline.script("rollback", "rollback", state).text())
    return "\n".join(texts)


def test_the_registered_app_servers_are_the_choices_of_app_server(toy):
    assert appserver.of(cfg_for("toy")) is toy
    assert isinstance(appserver.of(cfg_for("uwsgi")), UWSGI)
    with pytest.raises(ConfigError, match=r'app.server.*must be "uwsgi" or "toy"'):
        cfg_for("gunicorn")


def test_a_second_app_server_brings_its_own_config_section(toy):
    cfg = make_cfg(app={"server": "toy"}, toy={"workers": 5})
    assert "workers = 5" in toy.render_config(cfg, make_rel())
    assert toy.reload_timeout(cfg) == 7
    with pytest.raises(ConfigError, match=r"toy.workers"):
        make_cfg(app={"server": "toy"}, toy={"workers": 0})
    with pytest.raises(ConfigError, match=r"unknown key toy.threads"):
        make_cfg(app={"server": "toy"}, toy={"threads": 2})


def test_uwsgi_is_the_default():
    assert appserver.of(make_cfg()).name == "uwsgi"


def test_a_second_app_server_runs_through_the_whole_pipeline_without_uwsgi(toy):
    cfg = cfg_for("toy")
    text = all_scripts(cfg)
    assert "toyd --config /srv/shop/shared/config/toy.conf --pidfile /srv/shop/shared/run/toy.pid" in text
    assert f"/srv/shop/releases/{make_rel().id}/.fabdeploy/toy.conf" in text  # staged in the release
    assert "/srv/shop/shared/run/toy.pid toyd" in text  # "already live" and cleanup look for its master
    assert not re.search("uwsgi", text, re.I), [ln for ln in text.splitlines() if re.search("uwsgi", ln, re.I)]
    # nginx speaks HTTP to it, on its own socket
    site = nginx.nginx_site(cfg)
    assert "proxy_pass http://unix:/srv/shop/shared/run/toy.sock:;" in site
    assert "X-Forwarded-Proto $scheme" in site and "uwsgi" not in site
    # its pip requirement is in the virtualenv (and so in its hash) and in the fingerprint
    assert venv_hash(cfg, b"django\n", "3.11.2") != venv_hash(cfg_for("uwsgi"), b"django\n", "3.11.2")
    assert live_check.fingerprint(cfg, "abc", b"") != live_check.fingerprint(cfg_for("uwsgi"), "abc", b"")
    assert log_files(cfg)["app"] == "/srv/shop/shared/log/toy.log"


def test_behind_a_balancer_the_second_app_server_listens_on_tcp_and_is_checked_in_http(toy):
    cfg = cfg_for("toy", roles=True)
    app = [s for s in servers(cfg) if s.role == "app"][0]
    assert toy.render_config(cfg, make_rel(), app).startswith("bind = 10.0.0.1:")
    assert check_spec(cfg, "10.0.0.1", app)["proto"] == "http"
    lb = nginx.lb_site(cfg)
    assert "proxy_pass http://shop_app;" in lb and "proxy_next_upstream error timeout;" in lb
    assert "uwsgi" not in lb
    assert not re.search("uwsgi", all_scripts(cfg, "lb"), re.I)


def test_uwsgi_keeps_its_socket_pidfile_and_ini_where_they_were():
    p = UWSGI().paths(Layout("/srv/shop"))
    assert (p.socket, p.pidfile, p.log, p.config) == (
        "/srv/shop/shared/run/uwsgi.sock", "/srv/shop/shared/run/uwsgi.pid", "/srv/shop/shared/log/uwsgi.log",
        "/srv/shop/shared/config/uwsgi.ini")
