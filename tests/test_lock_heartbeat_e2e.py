"""The deploy lock and the audit log on a real host (real fab; issue 11, "also fix"):

- a deploy whose venv phase outlasts lock.ttl keeps its lock fresh: a concurrent deploy says "held", not
  STALE, and `fab unlock` without --force refuses to break it;
- an audit line that cannot be written after a good switch is a warning: the deploy reports ok;
- on a full disk the lock directory is created but its owner files are not: it is removed, one line says why.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from types import SimpleNamespace

import pytest

from conftest import FAB, make_project, release_of, run_fab, sample_config

LOCK = "/srv/sample/.fabdeploy-lock"


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    host = make_host("heartbeat")
    proj = make_project(tmp_path_factory.mktemp("heartbeat"))
    proj.write_config(sample_config(host))
    proj.write_config(sample_config(host, extra='[lock]\nttl = 10\n[hooks]\nbefore_venv = ["sleep 15"]\n'),
                      name="slow-venv.toml")
    res = run_fab(proj.root, "deploy", cache=wheel_cache)
    assert res.returncode == 0, res.stdout + res.stderr
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache)


def fab(site, *args):
    return run_fab(site.proj.root, *args, cache=site.cache)


def serves(site, rel: str) -> bool:
    status, _, body = site.host.http("/", host_header=site.host.address)
    return status == 200 and f"Release: {rel}".encode() in body


def test_a_lock_held_longer_than_its_ttl_is_kept_fresh(site):
    site.proj.commit("slow", {"pages/message.txt": "slow venv\n"})
    holder = subprocess.Popen([FAB, "deploy", "--config", "slow-venv.toml"], cwd=site.proj.root,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "XDG_CACHE_HOME": str(site.cache)})
    lines = []
    try:
        for line in holder.stdout:
            lines.append(line)
            if re.search(r"^\S+\s+code\s", line):
                break
        else:
            raise AssertionError("the slow deploy never finished its code phase:\n" + "".join(lines))
        time.sleep(12)  # the holder sits in its 15 s before_venv hook; its lock was taken more than ttl ago
        other = fab(site, "deploy", "--config", "slow-venv.toml")
        out = other.stdout + other.stderr
        assert other.returncode != 0 and "deploy lock held by" in out and "STALE" not in out, out
        unlock = fab(site, "unlock", "--config", "slow-venv.toml")
        out = unlock.stdout + unlock.stderr
        assert unlock.returncode != 0 and "is younger than lock.ttl = 10s" in out, out
        assert site.host.path(LOCK).is_dir()
        rest, _ = holder.communicate(timeout=180)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
            site.host.exec(f"rm -rf {LOCK}")  # (what a failed assertion above left behind)
    out = "".join(lines) + rest
    assert holder.returncode == 0, out
    assert serves(site, release_of(out))
    assert not site.host.path(LOCK).exists()


def test_an_audit_write_failing_after_a_good_switch_is_a_warning(site):
    audit = "/srv/sample/shared/log/audit.jsonl"
    site.host.exec(f"rm -f {audit} && mkdir {audit}")  # a directory where the audit log should be
    try:
        site.proj.commit("audit", {"pages/message.txt": "audit fails\n"})
        res = fab(site, "deploy")
        out = res.stdout + res.stderr
        assert res.returncode == 0 and "FAILED" not in out, out
        assert f"could not append the audit line to {audit}" in out, out
        assert serves(site, release_of(res.stdout))
        assert not site.host.path(LOCK).exists()
    finally:
        site.host.exec(f"rmdir {audit}", check=False)


def test_a_full_disk_leaves_no_lock_directory_behind(site):
    host = site.host
    host.exec("mkdir -p /srv/full && mount -t tmpfs -o size=8m tmpfs /srv/full && "
              "mkdir /srv/full/app && chown deploy:deploy /srv/full/app && "
              "fallocate -l $(df --output=avail -B1 /srv/full | tail -n1) /srv/full/filler")
    try:
        site.proj.write_config(sample_config(host, name="full", deploy_to="/srv/full/app", listen=8081),
                               name="full.toml")
        res = fab(site, "deploy", "--config", "full.toml")
        out = res.stdout + res.stderr
        assert res.returncode != 0 and "Traceback" not in out, out
        assert "cannot write the deploy lock files in /srv/full/app/.fabdeploy-lock (disk full?)" in out, out
        # (the tmpfs exists only in the host's mount namespace: look from inside)
        assert host.exec("test -e /srv/full/app/.fabdeploy-lock", check=False).returncode == 1
    finally:
        host.exec("umount -l /srv/full", check=False)
