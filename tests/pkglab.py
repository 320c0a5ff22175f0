"""Package databases private to one lab host, for `fab provision` tests: the lab hosts share this machine's /usr
and package databases, so a test must never install into those. private_apt() bind-mounts, inside the host's
mount namespace only, a copy of /var/lib/dpkg and empty /var/lib/apt and /var/cache/apt, and points the host's
own (already private) /etc/apt at a local repository of FILE-LESS packages (a DEBIAN/control only): a real
`apt-get install` then changes nothing but the host's private state. forget() removes a package from the
private dpkg database (its files stay on the machine: the host only believes it is missing).
allow_root() lets root log in to the host with the lab's key, and the users' own ~/.ssh/authorized_keys count.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import hostlab

MOUNTS = {"/var/lib/dpkg": "dpkg", "/var/lib/apt": "apt-lib", "/var/cache/apt": "apt-cache"}


INSIDE = "/tmp/lab-pkg"  # the host's own /tmp (the lab root itself is not visible inside a host)


def _pkg_root(host) -> Path:
    return host.path(INSIDE)


def private_apt(host) -> Path:
    """The host's package state made private; returns the repository directory (empty: add with fake_deb)."""
    root = _pkg_root(host)
    root.mkdir(mode=0o755)
    subprocess.run(["cp", "-a", "/var/lib/dpkg", str(root / "dpkg")], check=True)
    (root / "apt-lib" / "lists" / "partial").mkdir(parents=True)
    (root / "apt-cache" / "archives" / "partial").mkdir(parents=True)
    repo = root / "repo"
    repo.mkdir(mode=0o755)
    for d in (root, repo):
        os.chmod(d, 0o755)
    host.exec("set -e; " + "; ".join(f"mount -n --bind {shlex.quote(f'{INSIDE}/{sub}')} {path}"
                                     for path, sub in MOUNTS.items()))
    # the host's /etc is its own: only the lab repository as a source
    etc = host.path("/etc/apt")
    for f in (etc / "sources.list.d").iterdir():
        f.unlink()
    (etc / "sources.list").unlink(missing_ok=True)
    (etc / "sources.list.d" / "lab.list").write_text(f"deb [trusted=yes] file:{INSIDE}/repo ./\n")
    return repo


def assert_private(host) -> None:
    """Refuse to go on unless the host sees the private copies (never the machine's dpkg database)."""
    for path, sub in MOUNTS.items():
        inside = host.exec(["stat", "-c", "%d:%i", path]).stdout.strip()
        st = (_pkg_root(host) / sub).stat()
        assert inside == f"{st.st_dev}:{st.st_ino}", f"{path} is not private in {host.name}"


def forget(host, package: str) -> None:
    """Drop `package`'s stanza from the host's private dpkg status (and its file list)."""
    status = _pkg_root(host) / "dpkg" / "status"
    stanzas = status.read_text().split("\n\n")
    kept = [s for s in stanzas if not s.startswith(f"Package: {package}\n")]
    assert len(kept) == len(stanzas) - 1, f"{package} not in the dpkg status"
    status.write_text("\n\n".join(kept))
    for f in (_pkg_root(host) / "dpkg" / "info").glob(f"{package}.*"):
        f.unlink()
    for f in (_pkg_root(host) / "dpkg" / "info").glob(f"{package}:*"):
        f.unlink()


def fake_deb(repo: Path, package: str, version: str) -> None:
    """A file-less package `package` `version` in repo, and the repo's Packages index rebuilt."""
    build = repo.parent / "build" / package
    (build / "DEBIAN").mkdir(parents=True)
    (build / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\nMaintainer: lab <lab@localhost>\n"
        f"Description: file-less stand-in for the provision tests\n")
    deb = repo / f"{package}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(build), str(deb)], check=True,
                   capture_output=True)
    os.chmod(deb, 0o644)
    index = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=repo, check=True,
                           capture_output=True, text=True).stdout
    (repo / "Packages").write_text(index)


def installed_version(host, package: str) -> str:
    res = host.exec(["dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", package], check=False)
    return res.stdout.strip() if res.returncode == 0 else ""


def machine_version(package: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True,
                          text=True, check=True).stdout.strip()


def status_digest(host) -> str:
    return hashlib.sha256((_pkg_root(host) / "dpkg" / "status").read_bytes()).hexdigest()


def allow_root(host) -> None:
    """root may log in with the lab key; ~/.ssh/authorized_keys of each user count too (sshd re-read)."""
    cfg = host.base / "ssh" / "sshd_config"
    text = cfg.read_text()
    text = text.replace(f"AllowUsers {hostlab.USER}", f"AllowUsers {hostlab.USER} root")
    text = text.replace(f"AuthorizedKeysFile {hostlab.HOST_SSH_DIR}/authorized_keys",
                        f"AuthorizedKeysFile {hostlab.HOST_SSH_DIR}/authorized_keys .ssh/authorized_keys")
    cfg.write_text(text)
    os.kill(host.sshd_pid, signal.SIGHUP)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if host.ssh("true", check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"{host.name}: sshd did not come back after its config changed")


# -- rpm / dnf: Debian's dnf and rpm, every path of theirs inside the host's own /etc and /tmp ---------------

RPM_INSIDE = "/tmp/lab-rpm"


def private_dnf(host, releasever: str = "9") -> Path:
    """Real dnf in the host with its rpm database, cache and state under the host's /tmp (/etc/rpm/macros and
    /etc/dnf/dnf.conf of the host's own /etc say so: Debian's rpm would use ~/.rpmdb, the machine's /root) and
    one repository, file-less RPMs in a local directory. Returns the repository directory."""
    root = host.path(RPM_INSIDE)
    for sub in ("db", "cache", "persist", "repo"):
        (root / sub).mkdir(parents=True, mode=0o755)
    etc = host.path("/etc")
    (etc / "rpm").mkdir(exist_ok=True)
    (etc / "rpm" / "macros").write_text(f"%_dbpath {RPM_INSIDE}/db\n")
    (etc / "dnf" / "dnf.conf").write_text(
        f"[main]\ngpgcheck=0\ninstallonly_limit=3\nclean_requirements_on_remove=True\nbest=False\n"
        f"cachedir={RPM_INSIDE}/cache\npersistdir={RPM_INSIDE}/persist\nreposdir=/etc/yum.repos.d\n")
    (etc / "dnf" / "vars").mkdir(exist_ok=True)
    (etc / "dnf" / "vars" / "releasever").write_text(releasever + "\n")
    (etc / "yum.repos.d").mkdir(exist_ok=True)
    (etc / "yum.repos.d" / "lab.repo").write_text(
        f"[lab]\nname=lab\nbaseurl=file://{RPM_INSIDE}/repo\nenabled=1\ngpgcheck=0\nmetadata_expire=0\n")
    host.exec(["rpm", "--initdb"])
    assert host.exec(["rpm", "--eval", "%_dbpath"]).stdout.strip() == f"{RPM_INSIDE}/db"
    return root / "repo"


def fake_rpms(repo: Path, packages: dict[str, str]) -> None:
    """File-less noarch RPMs (name: version) in repo, and its metadata (createrepo_c)."""
    top = repo.parent / "build"
    for name, version in packages.items():
        spec = top / f"{name}.spec"
        top.mkdir(exist_ok=True)
        spec.write_text(f"Name: {name}\nVersion: {version}\nRelease: 1.lab\nSummary: file-less stand-in\n"
                        "License: MIT\nBuildArch: noarch\n%description\nfile-less stand-in\n%files\n")
        subprocess.run(["rpmbuild", "--nodeps", "--define", f"_dbpath {top}/db", "--define", f"_topdir {top}",
                        "--define", f"_rpmdir {repo}", "-bb", str(spec)],
                       check=True, capture_output=True)
    subprocess.run(["createrepo_c", "-q", str(repo)], check=True, capture_output=True)
    subprocess.run(["chmod", "-R", "a+rX", str(repo)], check=True)


def write_os_release(host, text: str) -> None:
    """The host's /etc/os-release (a link to the machine's /usr/lib/os-release: replaced, never written
    through)."""
    f = host.path("/etc/os-release")
    f.unlink()
    f.write_text(text)
