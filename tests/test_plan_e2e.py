"""`fab deploy --plan` and `fab --dry deploy` are truly read-only: the host stays byte-for-byte unchanged."""
from __future__ import annotations

import difflib
import hashlib
import os
import re

import pytest

from conftest import make_project, release_of, run_fab, sample_config

SECRET = "plan-secret-93b1"


@pytest.fixture(scope="module")
def env(make_host, tmp_path_factory, wheel_cache):
    host = make_host("plan")
    proj = make_project(tmp_path_factory.mktemp("plan"))
    proj.write_config(sample_config(host, extra=f'[django]\nenv = {{ DB_PASSWORD = "{SECRET}" }}\n'))
    return host, proj, wheel_cache


def snapshot(host) -> dict:
    """Every path under the host's private trees with its type, mode, size, mtime and content hash."""
    state = {}
    for top in ("/srv", "/etc/nginx", "/var/log/nginx", "/home/deploy", "/tmp"):
        root = host.path(top)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                digest = ""
                if os.path.isfile(p) and not os.path.islink(p):
                    with open(p, "rb") as f:
                        digest = hashlib.sha256(f.read()).hexdigest()
                state[p] = (st.st_mode, st.st_size, st.st_mtime_ns, os.readlink(p) if os.path.islink(p) else digest)
    return state


def test_plan_on_a_new_host_creates_nothing(env):
    host, proj, cache = env
    before = snapshot(host)
    res = run_fab(proj.root, "deploy", "--plan", cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "remote invocation setup" in res.stdout and "remote invocation publish" in res.stdout
    assert "uwsgi.ini (absent)" in res.stdout and "would be built" in res.stdout
    assert SECRET not in res.stdout + res.stderr
    assert snapshot(host) == before
    assert not host.path("/srv/sample").exists()


def test_plan_and_dry_after_a_deploy_change_nothing(env):
    host, proj, cache = env
    res = run_fab(proj.root, "deploy", cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    live = release_of(res.stdout)
    proj.commit("next", {"pages/message.txt": "planned change\n"})
    pid = host.path("/srv/sample/shared/run/uwsgi.pid").read_text()
    before = snapshot(host)
    for args in (["deploy", "--plan"], ["--dry", "deploy"]):
        res = run_fab(proj.root, *args, cache=cache)
        assert res.returncode == 0, res.stdout + res.stderr
        out = res.stdout
        assert f"current release: /srv/sample/releases/{live}" in out
        assert "virtualenv" in out and "reused" in out
        assert f"-chdir = /srv/sample/releases/{live}" in out  # a real diff against the host's uwsgi.ini
        assert "nginx site /etc/nginx/sites-available/sample: unchanged" in out
        assert "manage.py" in out and 'command("migrate", interactive=False' in out  # (the django program, shown)
        assert SECRET not in out + res.stderr and "DB_PASSWORD=********" in out
    assert snapshot(host) == before  # byte for byte, modes and mtimes included
    assert host.path("/srv/sample/shared/run/uwsgi.pid").read_text() == pid
    status, _, body = host.http("/", host_header=host.address)
    assert f"Release: {live}".encode() in body


HOOKS = """[hooks]
before_setup = ["echo hook-before-setup"]
before_django = ["echo hook-before-django $FABDEPLOY_RELEASE"]
after_restart = ["echo hook-after-restart $FABDEPLOY_ROLE $FABDEPLOY_ACTION > /tmp/fabdeploy-plan-hook"]
"""


def listings(text: str, host: str = "") -> dict[str, str]:
    """The remote invocations printed by --plan, or by --verbose with `host` (whose "<host>  | " prefix is
    removed): name -> script."""
    lines = [re.sub(rf"^{re.escape(host)}\s+\| ?", "", ln) if host else ln for ln in text.splitlines()]
    out, name, body = {}, None, []
    for ln in lines:
        m = re.match(r"^----- remote invocation (\S+)$", ln)
        if m:
            name, body = m.group(1), []
        elif name and ln == f"----- end of invocation {name}":
            out[name] = "\n".join(body)
            name = None
        elif name:
            body.append(ln)
    return out


def test_plan_prints_byte_for_byte_the_scripts_deploy_runs_hooks_included(env):
    """--plan and a real deploy print their remote scripts the same way; apart from what only exists when the
    deploy runs (the lock's token, pid and start time, the release's deploy time) they are the same text."""
    host, proj, cache = env
    proj.write_config(sample_config(host, extra=f'[django]\nenv = {{ DB_PASSWORD = "{SECRET}" }}\n' + HOOKS),
                      name="hooks.toml")
    proj.commit("hooked", {"pages/message.txt": "hooked change\n"})
    plan = run_fab(proj.root, "deploy", "--plan", "--config", "hooks.toml", cache=cache)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    res = run_fab(proj.root, "deploy", "--verbose", "--config", "hooks.toml", cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    planned, ran = listings(plan.stdout), listings(res.stdout, host.address)
    assert list(planned) == list(ran) == ["setup", "prepare", "publish"]
    token = re.search(r"printf '%s\\n' ([0-9a-f]{16}) > \S+/token", ran["setup"]).group(1)
    # the release id is made of the time too: the plan's and the deploy's differ by the seconds between them
    planned_id = re.search(r"plan for release (\S+)", plan.stdout).group(1)
    for name in ran:
        text = ran[name].replace(token, "TOKEN-OF-THE-DEPLOY").replace(release_of(res.stdout), planned_id)
        text = re.sub(r"\(pid \d+, deploy, since [0-9TZ:-]+\)", "(pid 0, deploy, since <deploy time>)", text)
        text = re.sub(r'"deployed_at": "[0-9TZ:-]+"', '"deployed_at": "<deploy time>"', text)
        assert text == planned[name], name + ":\n" + "\n".join(difflib.unified_diff(
            planned[name].splitlines(), text.splitlines(), "plan", "deploy", lineterm=""))
    assert "echo hook-before-setup" in planned["setup"]
    assert "echo hook-before-django $FABDEPLOY_RELEASE" in planned["prepare"]
    assert "hook-after-restart" in planned["publish"]
    # and the hooks ran where the plan said
    assert host.path("/tmp/fabdeploy-plan-hook").read_text() == "hook-after-restart app deploy\n"
    assert SECRET not in plan.stdout + res.stdout
