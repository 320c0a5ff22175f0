"""The app port's nft table saved for the boot (front/firewall_persist.py), run for real with /bin/sh and the
real nft: as root, in a network namespace of its own and a mount namespace whose /etc is a copy of this
machine's (so /etc/nftables.d, /etc/nftables.conf and the nftables.service link are the script's to write)."""
from __future__ import annotations

import os
import subprocess

import pytest

from fabdeploy.front import firewall, firewall_persist
from fabdeploy.hosts import roles
from fabdeploy.remote.markers import MARK
from fabdeploy.remote.script import Phase, Script
from fabdeploy.remote.shell import q
from test_phases import err, fakebin, out  # noqa: F401 (a fixture)
from test_roles import lb_cfg

DEBIAN_CONF = "#!/usr/sbin/nft -f\n\nflush ruleset\n\ntable inet filter {\n\tchain input {\n" \
              "\t\ttype filter hook input priority filter;\n\t}\n}\n"
TABLE = "fabdeploy_shop"
SAVED = "/etc/nftables.d/fabdeploy_shop.nft"
LINK = "/etc/systemd/system/sysinit.target.wants/nftables.service"


class Box:
    """A private /etc (a copy of this machine's) and network namespace; lines run there as one phase."""

    def __init__(self, tmp_path, fakebin):
        self.tmp, self.fake = tmp_path, fakebin
        self.etc = tmp_path / "etc"
        subprocess.run(["cp", "-a", "/etc", str(self.etc)], check=True)
        (tmp_path / "staging").mkdir()
        (tmp_path / "srv/shared/config").mkdir(parents=True)  # (where root's nft reads the staged files)
        self.cfg = lb_cfg(paths={"deploy_to": str(tmp_path / "srv")})
        self.app = roles.servers(self.cfg)[0]

    def file(self, path: str):
        return self.tmp / path.lstrip("/")

    def run(self, lines: list[str], then: str = "true") -> subprocess.CompletedProcess:
        script = Script([Phase("switch", lines)])
        wrapper = (f"mount --bind {q(str(self.etc))} /etc && {script.command()}; rc=$?; "
                   f"[ $rc -eq 0 ] || exit $rc; {then}")
        return subprocess.run(["unshare", "-m", "-n", "--propagation", "private", "sh", "-c", wrapper],
                              cwd=self.tmp, capture_output=True, env={**os.environ, **self.fake.env}, timeout=60)

    def deploy(self, then: str = "true") -> subprocess.CompletedProcess:
        """A switch's firewall lines: the config phase's staging, then the switch's apply (and persist)."""
        staging = str(self.tmp / "staging")
        return self.run(firewall.firewall(self.cfg, self.app, staging)
                        + firewall.firewall_apply(self.cfg, self.app, staging), then)


@pytest.fixture
def box(tmp_path, fakebin):
    return Box(tmp_path, fakebin)


def notes(proc) -> list[str]:
    return [ln[len(f"{MARK} note "):] for ln in out(proc).splitlines() if ln.startswith(f"{MARK} note ")]


def test_the_table_is_saved_included_and_loaded_by_the_boot_and_nothing_is_rewritten_again(box):
    (box.etc / "nftables.conf").write_text(DEBIAN_CONF)
    os.chmod(box.etc / "nftables.conf", 0o755)
    boot = "nft flush ruleset && nft -f /etc/nftables.conf && nft list ruleset"  # what nftables.service does
    proc = box.deploy(then=boot)
    assert proc.returncode == 0, err(proc)
    saved = (box.etc / "nftables.d/fabdeploy_shop.nft").read_text()
    assert saved == (box.tmp / "staging/firewall.nft").read_text()  # the script nft -c checked and -f applied
    conf = (box.etc / "nftables.conf").read_text()
    assert conf.startswith(DEBIAN_CONF)  # what was there stays, the include is appended once
    assert conf.endswith('\ninclude "/etc/nftables.d/*.nft"\n') and conf.count("include") == 1
    assert oct(os.stat(box.etc / "nftables.conf").st_mode & 0o777) == "0o755"
    assert os.readlink(box.etc / LINK.removeprefix("/etc/")) == "/lib/systemd/system/nftables.service"
    assert notes(proc)[-4:] == ["uWSGI port 8001: nftables table inet fabdeploy_shop applied",
                                "/etc/nftables.conf now includes /etc/nftables.d/*.nft",
                                f"nftables table inet {TABLE} saved in {SAVED} (loaded at boot)",
                                "nftables.service enabled (loads /etc/nftables.conf at boot)"]
    # the boot's nft -f /etc/nftables.conf brings the table back (and Debian's own table with it)
    assert f"table inet {TABLE} {{" in out(proc) and "table inet filter {" in out(proc)
    assert "tcp dport 8001 ip saddr 10.0.0.10 accept" in out(proc)
    # a second deploy with the same rules: nothing written, nothing asked of sudo but the checks
    before = {p: os.stat(box.etc / p).st_mtime_ns for p in ("nftables.conf", "nftables.d/fabdeploy_shop.nft")}
    log_before = box.fake.log()
    again = box.deploy()
    assert again.returncode == 0, err(again)
    assert notes(again) == ["uWSGI port 8001 will be open to 10.0.0.10 only (nftables table inet fabdeploy_shop, "
                            "applied at the switch)", "uWSGI port 8001: nftables table inet fabdeploy_shop applied"]
    assert {p: os.stat(box.etc / p).st_mtime_ns for p in before} == before
    new_calls = box.fake.log()[len(log_before):].splitlines()
    assert not [c for c in new_calls if c.split()[1:2] in (["install"], ["mv"], ["ln"], ["cp"], ["rm"])], new_calls


def test_a_conf_that_already_includes_the_directory_is_left_alone(box):
    conf = "#!/usr/sbin/nft -f\nflush ruleset\n  include   \"/etc/nftables.d/*.nft\"\n"
    (box.etc / "nftables.conf").write_text(conf)
    proc = box.deploy()
    assert proc.returncode == 0, err(proc)
    assert (box.etc / "nftables.conf").read_text() == conf
    assert (box.etc / "nftables.d/fabdeploy_shop.nft").exists()


def test_no_conf_at_all_gets_one_that_includes_the_directory(box):
    (box.etc / "nftables.conf").unlink(missing_ok=True)
    proc = box.deploy()
    assert proc.returncode == 0, err(proc)
    assert (box.etc / "nftables.conf").read_text() == (
        "#!/usr/sbin/nft -f\n\n# Added by fabdeploy: the tables of /etc/nftables.d (fabdeploy_<project>.nft: an "
        "app port's firewall)\ninclude \"/etc/nftables.d/*.nft\"\n")


@pytest.mark.parametrize("earlier", [None, "table inet fabdeploy_shop {\n}\n"])
def test_a_conf_that_does_not_load_is_not_installed_and_the_saved_table_is_put_back(box, earlier):
    broken = DEBIAN_CONF + "table inet broken { chain c { tcp dport nonsense accept } }\n"
    (box.etc / "nftables.conf").write_text(broken)
    if earlier is not None:
        (box.etc / "nftables.d").mkdir()
        (box.etc / "nftables.d/fabdeploy_shop.nft").write_text(earlier)
    proc = box.deploy()
    assert proc.returncode == 1
    errors = [ln for ln in err(proc).splitlines() if ln.startswith(f"{MARK} error ")]
    assert errors == [f"{MARK} error /etc/nftables.conf with {SAVED} does not load (nft -c -f): the firewall table "
                      f"is live but would not come back after a reboot; {SAVED} was put back as it was: fix "
                      "/etc/nftables.conf"]
    assert "nonsense" in err(proc)  # nft's own words above it
    assert (box.etc / "nftables.conf").read_text() == broken
    saved = box.etc / "nftables.d/fabdeploy_shop.nft"
    assert (saved.read_text() if saved.exists() else None) == earlier
    assert not (box.etc / "nftables.d/fabdeploy_shop.nft.fabdeploy-old").exists()


def test_a_host_without_the_firewall_has_its_saved_table_and_live_table_removed(box):
    (box.etc / "nftables.conf").write_text(DEBIAN_CONF)
    assert box.deploy().returncode == 0
    unused = firewall.firewall_unused(lb_cfg(balancer={"firewall": "off"}), box.app)
    assert unused == firewall_persist.remove_lines(TABLE)
    assert firewall.firewall_unused(box.cfg, box.app) == []  # still used: nothing removed
    apply = "nft -f /etc/nftables.conf"  # the table live, as after a boot
    proc = box.run([apply, *unused, "! nft list table inet fabdeploy_shop 2>/dev/null"])
    assert proc.returncode == 0, err(proc)
    assert notes(proc) == [f"firewall no longer used here: {SAVED} removed, table inet {TABLE} deleted"]
    assert not (box.etc / "nftables.d/fabdeploy_shop.nft").exists()
    # nothing saved: nothing done, no sudo
    log_before = box.fake.log()
    assert box.run(unused).returncode == 0 and box.fake.log() == log_before
