"""`fab sudoers` and the root commands (remote/root.py, ops/sudoers.py): the drop-in is `visudo -c` clean for
several configs, and every root command of the rendered scripts of deploy, rollback, stop, start, restart,
reload and status is one the drop-in lists (sudoers matches arguments exactly). The end-to-end proof, a full
deploy with the deploy user limited to the drop-in, is tests/test_sudoers_e2e.py."""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fabdeploy import pipeline
from fabdeploy.errors import ConfigError
from fabdeploy.front import nginx
from fabdeploy.hosts.target import Target
from fabdeploy.model import Facts
from fabdeploy.ops import report, sudoers
from fabdeploy.ops.control import control_script
from fabdeploy.remote import root
from test_phases import REL_ID, make_cfg, make_rel
from test_pipeline import OWNER
from test_roles import lb_cfg
from tlscerts import make_certs

DEPLOY, NGINX_GROUP = "deploy", "www-data"
# root commands whose arguments exist only at run time: never in a drop-in, each caller copes without them
BEST_EFFORT = {"kill", "tail", "ss", "journalctl"}
# the host-wide uWSGI emperor (manager/emperor.py): provisioned once, never in a drop-in
EMPEROR_HOST_WIDE = {"install", "mv", "ln", "systemctl", "flock", "tail", "sh"}  # sh: pruning old copies

CONFIGS = {
    "default": lambda: make_cfg(app={"user": "shop"}),
    "sites": lambda: make_cfg(app={"user": "shop"}, nginx={"layout": "sites"}),
    "conf.d-gunicorn": lambda: make_cfg(app={"user": "shop", "server": "gunicorn"}, nginx={"layout": "conf.d"}),
    "deploy-is-app-user": lambda: make_cfg(app={"user": DEPLOY}),
    "dashed-name": lambda: make_cfg("/srv/my-shop", project={"name": "my-shop"}, app={"user": "my-shop"}),
    "supervisor": lambda: make_cfg(app={"user": "shop", "manager": "supervisor", "server": "gunicorn"}),
    "systemd": lambda: make_cfg(app={"user": "shop", "manager": "systemd"}),
    "emperor": lambda: make_cfg(app={"user": "shop", "manager": "emperor"}),
    "balanced": lambda: lb_cfg(app=("deploy@10.0.0.1",), balancer={"firewall": "off"}),
    "firewalled": lambda: make_cfg(roles={"app": ["deploy@10.0.0.1"], "lb": ["deploy@10.0.0.9"]},
                                   app={"user": "shop"}),
    "firewalled-by-name": lambda: make_cfg(roles={"app": ["deploy@10.0.0.1"], "lb": ["deploy@lb.example.com"]},
                                           app={"user": "shop"}, balancer={"firewall": "nftables"}),
}

@functools.lru_cache(maxsize=None)
def _tls_files() -> dict:
    """[tls] files mode with a certificate and key made once (in a temporary directory) for these configs."""
    c = make_certs(Path(tempfile.mkdtemp(prefix="fabdeploy-sudoers-tls-")), ["shop.example.com"])
    return {"mode": "files", "certificate": str(c.chain), "key": str(c.key)}


CONFIGS.update({
    "tls-files": lambda: make_cfg(app={"user": "shop"}, tls=_tls_files()),
    "tls-host-files": lambda: make_cfg(app={"user": "shop"}, tls={
        "mode": "files", "certificate": "host:/etc/ssl/shop/chain.pem", "key": "host:/etc/ssl/shop/key.pem"}),
    "tls-balanced": lambda: lb_cfg(app=("deploy@10.0.0.1",), balancer={"firewall": "off"}, tls=_tls_files()),
    "tls-acme": lambda: make_cfg(app={"user": "shop"}, nginx={"server_name": "shop.example.com"}, tls={
        "mode": "acme", "email": "ops@example.com", "ca_bundle": "/etc/ssl/acme-ca.pem"}),
    "tls-acme-balanced": lambda: lb_cfg(app=("deploy@10.0.0.1",), balancer={"firewall": "off"},
                                        nginx={"server_name": "shop.example.com"}, tls={"mode": "acme"}),
})

_WORD = r'(?:"[^"]*"|[^\s;&|<>()"])+'  # (a double-quoted part is one piece: "$(id -un):")
SUDO_RE = re.compile(rf"sudo -n (?!-u )({_WORD}(?: (?!\d*>|&&|\|\||\}}(?:\s|;|$)){_WORD})*)")


def root_calls(text: str) -> list[str]:
    """Every `sudo -n <command>` (not `-u`) in a script's text, up to its first shell operator."""
    return SUDO_RE.findall(text)


def rendered(cfg) -> list[str]:
    """The texts of every script a deploy, rollback, control task and status send to an app host (both nginx
    layouts) and to a balancer."""
    texts = []
    for kind in ("sites", "conf.d") if cfg.nginx.layout == "auto" else (cfg.nginx.layout,):
        facts = Facts(nginx_layout=kind, current=f"{cfg.paths.deploy_to}/releases/20250101T000000Z-abcdef0")
        for role in ("app", "lb"):
            target = Target.named(cfg, "web1", role)
            r = pipeline.RunState(cfg, target, OWNER, REL_ID, rel=make_rel(), facts=facts)
            for name in pipeline.PIPELINES[role]:
                texts.append(pipeline.script(role, name, r).text())
            texts.append("\n".join(nginx.site_restore(cfg, facts, target.layout.staging(REL_ID))))
            texts.append("\n".join(nginx.lb_restore_site(cfg, facts, r.staging)))
        rb = pipeline.RunState(cfg, Target.named(cfg, "web1"), OWNER, "", facts=facts)
        texts.append(pipeline.script("rollback", "rollback", rb).text())
    target = Target.named(cfg, "web1")
    for action in ("stop", "start", "restart", "reload"):
        for with_nginx in (False, True):
            texts.append(control_script(cfg, action, OWNER, 0, target, with_nginx).text())
    texts.append(" ".join(report.status_params(cfg, target.server, {}).get("manager_state") or []))
    return texts


@pytest.mark.parametrize("name", CONFIGS)
def test_every_root_command_of_every_script_is_in_the_drop_in(name):
    cfg = CONFIGS[name]()
    allowed = set(sudoers.root_commands(cfg, DEPLOY, NGINX_GROUP))
    subst = {"$(id -un)": DEPLOY, "$nginx_group": NGINX_GROUP, "$appg": sudoers.app_user(cfg)}
    seen = set()
    for text in rendered(cfg):
        for call in root_calls(text):
            first = call.split()[0]
            if not first.startswith("/"):
                assert first in BEST_EFFORT | (EMPEROR_HOST_WIDE if name == "emperor" else set()), \
                    f"{call!r}: a root command without a full path"
                continue
            argv = root.argv(f"sudo -n {call}", subst)
            assert argv in allowed, f"{call!r} is not in the drop-in of {name}"
            seen.add(argv)
    assert (root.BINARIES["nginx"], "-s", "reload") in seen  # (the scripts were really searched)
    if name.startswith("firewalled"):
        assert (root.BINARIES["nft"], "-f", "/srv/shop/shared/config/firewall.nft") in seen
    if name in ("tls-files", "tls-balanced"):  # (uploaded files: root installs them, the key 0600)
        assert (root.BINARIES["install"], "-D", "-m", "0600", "/srv/shop/shared/config/tls-privkey.pem",
                "/etc/fabdeploy/tls/shop/privkey.pem") in seen
    if name.startswith("tls-acme"):  # (certbot issues through the site's webroot; the renewal installed)
        assert any(a[:3] in ((root.BINARIES["certbot"], "certonly", "--webroot"),
                             (root.BINARIES["env"], "REQUESTS_CA_BUNDLE=/etc/ssl/acme-ca.pem", root.BINARIES["certbot"]))
                   for a in seen)
        assert (root.BINARIES["systemctl"], "enable", "--now", "fabdeploy-certbot-shop.timer") in seen
    if name == "tls-host-files":  # (files on the host: root's openssl checks the pair)
        assert (root.BINARIES["openssl"], "pkey", "-pubout", "-in", "/etc/ssl/shop/key.pem") in seen


@pytest.mark.parametrize("name", CONFIGS)
def test_the_drop_in_is_visudo_clean(name, tmp_path):
    visudo = shutil.which("visudo") or "/usr/sbin/visudo"
    cfg = CONFIGS[name]()
    path = tmp_path / "drop-in"
    path.write_text(sudoers.drop_in(cfg, DEPLOY, NGINX_GROUP))
    res = subprocess.run([visudo, "-c", "-f", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr + path.read_text()
    text = path.read_text()
    alias = "FABDEPLOY_" + re.sub(r"[^A-Z0-9]", "_", cfg.project.name.upper())
    assert f"{DEPLOY} ALL=(root) NOPASSWD: {alias}\n" in text
    app = sudoers.app_user(cfg)
    assert (f"{DEPLOY} ALL=({app}) NOPASSWD: ALL" in text) == (app != DEPLOY)
    # sudoers' special characters escaped; a binary run without arguments allows none ("")
    assert f"/usr/bin/chown {DEPLOY}\\: {cfg.paths.deploy_to}," in text
    assert '/usr/sbin/nginx "",' in text and "/usr/sbin/nginx," not in text


def test_managers_and_firewalls_not_covered_yet_are_named_in_the_drop_in():
    text = sudoers.drop_in(make_cfg(app={"user": "shop", "manager": "emperor"}), DEPLOY)
    assert "# NOT covered (needs full sudo or provisioning): app.manager = 'emperor': the host-wide" in text
    assert "/usr/bin/mv -f /etc/uwsgi/vassals/.shop.ini.tmp /etc/uwsgi/vassals/shop.ini" in text
    assert "NOT covered" not in sudoers.drop_in(make_cfg(app={"user": "shop"}), DEPLOY)


def test_bad_names_are_one_clear_error():
    with pytest.raises(ConfigError, match=r"^sudoers: --user 'bad user' is not a user or group name$"):
        sudoers.drop_in(make_cfg(), "bad user")
    with pytest.raises(ConfigError, match=r"^sudoers: --nginx-group 'www data' is not a user or group name$"):
        sudoers.drop_in(make_cfg(), DEPLOY, "www data")


def test_fab_sudoers_prints_the_drop_in_for_the_ssh_user_of_the_config(tmp_path):
    (tmp_path / "fabfile.py").write_text("from fabdeploy.tasks import *  # noqa\n")
    (tmp_path / "deploy.toml").write_text(
        '[project]\nname = "shop"\ndjango_settings = "shop.settings"\nwsgi = "shop.wsgi:application"\n'
        'hosts = ["ops@10.0.0.9"]\n[paths]\ndeploy_to = "/srv/shop"\n')
    fab = str(Path(sys.executable).parent / "fab")
    res = subprocess.run([fab, "sudoers"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "ops ALL=(root) NOPASSWD: FABDEPLOY_SHOP\nops ALL=(shop) NOPASSWD: ALL\n" in res.stdout
    res = subprocess.run([fab, "sudoers", "--user", "Bad!"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 1 and res.stderr == "fabdeploy: sudoers: --user 'Bad!' is not a user or group name\n"


def test_the_readme_shows_the_drop_in_fab_sudoers_prints_and_it_is_visudo_clean(tmp_path):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Limiting the deploy user's sudo", 1)[1]
    block = re.search(r"```\n(# fabdeploy: .*?)```", section, re.S).group(1)
    cfg = make_cfg("/srv/shop", project={"name": "shop", "hosts": ["deploy@shop.example.com"]},
                   app={"user": "shop"}, nginx={"layout": "sites"})
    assert block == sudoers.drop_in(cfg, sudoers.default_user(cfg))
    (tmp_path / "x").write_text(block)
    res = subprocess.run([shutil.which("visudo") or "/usr/sbin/visudo", "-c", "-f", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
