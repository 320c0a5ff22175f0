"""Host keys through a jump host (issue 11.8), end to end: two lab hosts, the second reached with ProxyJump
through the first (an ssh_config given to fab with -S). With strict_host_keys = true a changed or unknown key
of the jump host stops the run with one line naming the jump host; the normal case deploys through it; and
strict_host_keys = false really accepts a changed key (no protection against a man in the middle)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

import hostlab
from conftest import make_project, release_of, run_fab, sample_config


@pytest.fixture(scope="module")
def lab2(make_host, tmp_path_factory, wheel_cache):
    jump, target = make_host("jump"), make_host("behind")
    proj = make_project(tmp_path_factory.mktemp("proj"))
    keys = {line.split()[0]: line for line in hostlab.known_hosts().read_text().splitlines(keepends=True)}
    ssh_config = proj.root / "ssh_config"
    # the jump host gets the lab key from ssh_config, as a user's ~/.ssh/config would give it
    ssh_config.write_text(f"Host {target.address}\n    ProxyJump deploy@{jump.address}\n"
                          f"Host {jump.address}\n    IdentityFile {hostlab.client_key()}\n")
    return SimpleNamespace(jump=jump, target=target, proj=proj, keys=keys, ssh_config=ssh_config,
                           cache=wheel_cache)


def use_known_hosts(lab2, jump_line: str | None, strict: bool = True) -> None:
    path = lab2.proj.root / "known_hosts"
    path.write_text(lab2.keys[lab2.target.address] + (jump_line or ""))
    text = sample_config(lab2.target, name="jumped", deploy_to="/srv/jumped")
    text = text.replace(f'known_hosts = "{hostlab.known_hosts()}"', f'known_hosts = "{path}"')
    if not strict:
        text += "strict_host_keys = false\n"  # the [ssh] table is the last one
    lab2.proj.write_config(text)


def fab(lab2, *args):
    res = run_fab(lab2.proj.root, "-S", str(lab2.ssh_config), *args, cache=lab2.cache)
    return res, res.stdout + res.stderr


def accepted(host) -> int:
    return (host.base / "sshd.log").read_text().count("Accepted publickey")


def test_deploy_through_the_jump_host(lab2):
    use_known_hosts(lab2, lab2.keys[lab2.jump.address])
    before = accepted(lab2.jump)
    res, out = fab(lab2, "deploy")
    assert res.returncode == 0, out
    rel = release_of(res.stdout)
    assert lab2.target.path("/srv/jumped/current").resolve().name == rel
    assert accepted(lab2.jump) > before  # the SSH connection went through the jump host
    assert not lab2.jump.path("/srv/jumped").exists()


def changed_jump_key(lab2) -> str:
    """The jump host's known_hosts line with another host's key (what a man in the middle would present)."""
    other = lab2.keys[lab2.target.address].split(" ", 1)[1]
    assert other != lab2.keys[lab2.jump.address].split(" ", 1)[1]
    return f"{lab2.jump.address} {other}"


def test_a_changed_jump_host_key_is_refused_in_one_line(lab2):
    use_known_hosts(lab2, changed_jump_key(lab2))
    res, out = fab(lab2, "deploy")
    assert res.returncode == 1, out
    assert "Traceback" not in out
    line = f"jump host {lab2.jump.address} (ProxyJump to {lab2.target.address}): the SSH host key has CHANGED"
    assert res.stderr.startswith(f"fabdeploy: {line}"), out
    assert len(res.stderr.strip().splitlines()) == 1, out


def test_an_unknown_jump_host_key_is_refused_in_one_line(lab2):
    use_known_hosts(lab2, None)
    res, out = fab(lab2, "deploy")
    assert res.returncode == 1, out
    line = f"jump host {lab2.jump.address} (ProxyJump to {lab2.target.address}): unknown SSH host key"
    assert res.stderr.startswith(f"fabdeploy: {line}"), out
    assert f"ssh-keyscan {lab2.jump.address}" in out and "Traceback" not in out
    assert len(res.stderr.strip().splitlines()) == 1, out


def test_strict_host_keys_false_accepts_a_changed_key(lab2):
    use_known_hosts(lab2, changed_jump_key(lab2), strict=False)
    res, out = fab(lab2, "releases")
    assert res.returncode == 0, out
    assert "error" not in out
