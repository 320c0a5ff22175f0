"""systemd as PID 1 of a lab host (create_host(..., init="systemd")).

The host's systemd runs in its own PID, mount, UTS and cgroup namespaces, inside
the host's network namespace.  What it can touch of this machine:

* cgroups: only a subtree created for the host, ``<cgroup2 mount>/fdl-lab/<name>``;
  the host's cgroup namespace is rooted there and a fresh cgroup2 is mounted on
  its /sys/fs/cgroup.  Killing the host writes ``cgroup.kill`` of that subtree;
  destroy() removes it.
* files: the host's private directories (hostlab.PRIVATE_DIRS, /run included),
  an overlay on /var whose upper layer is the host's (``fs/var-upper``: the
  machine's /var is never written), a private /dev (a tmpfs with the basic
  nodes, its own devpts; /dev/console is the host's ``systemd.log``), and
  read-only /sys and /proc/sys (kernel tunables are machine-wide).
* capabilities: PID 1 starts without CAP_SYS_MODULE, CAP_SYS_TIME, CAP_SYS_RAWIO,
  CAP_SYSLOG and the other machine-wide ones (as systemd-nspawn does).

sshd is a unit of the host (``fdl-sshd.service``, enabled in the host's /etc), so
SSH sessions live in systemd's namespaces and ``sudo systemctl`` over SSH works.
Units that would act on the machine or load it for nothing are masked in the
host's own /etc (MASKED).  Nothing here touches this machine's own services.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import subprocess
import time
from pathlib import Path

import hostlab
from hostlab_boot import BootReport

SYSTEMD = "/lib/systemd/systemd"
CGROUP_PARENT = "fdl-lab"

# Masked in the host's /etc (unit -> why).
MASKED = {
    "console-getty.service": "no console: the host's /dev/console is its systemd.log",
    "ssh.service": "the lab's fdl-sshd.service is the host's SSH (on its lab address)",
    "postgresql.service": "would start the machine's PostgreSQL cluster in every host",
    "postgresql@.service": "would start the machine's PostgreSQL cluster in every host",
    "mariadb.service": "would start a MariaDB server in every host (its /var/lib/mysql: private, empty)",
    "e2scrub_reap.service": "acts on the machine's disks",
    "systemd-remount-fs.service": "remounts the root filesystem, whose superblock is the machine's",
    "apt-daily.timer": "periodic apt jobs: load for nothing",
    "apt-daily-upgrade.timer": "periodic apt jobs: load for nothing",
    "dpkg-db-backup.timer": "periodic job: load for nothing",
    "e2scrub_all.timer": "acts on the machine's disks",
    "fstrim.timer": "acts on the machine's disks",
    "man-db.timer": "periodic job: load for nothing",
}

# Capabilities PID 1 (and so every process of the host) does not get.
DROPPED_CAPS = ["sys_module", "sys_time", "sys_rawio", "syslog", "wake_alarm", "mac_admin",
                "mac_override", "sys_pacct", "block_suspend"]

SSHD_UNIT = f"""\
# fabdeploy host lab: the host's sshd on its lab address (hostlab_systemd)
[Unit]
Description=fabdeploy lab sshd
After=network.target

[Service]
ExecStart=/usr/sbin/sshd -D -e -f {hostlab.HOST_SSH_DIR}/sshd_config
RuntimeDirectory=sshd
RuntimeDirectoryPreserve=yes
KillMode=process

[Install]
WantedBy=multi-user.target
"""


def cgroup2_mount() -> Path:
    """Where this machine mounts the cgroup v2 hierarchy (/sys/fs/cgroup or .../unified)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"]:
            return Path(left.split()[4])
    raise hostlab.LabError("no cgroup2 hierarchy mounted on this machine: systemd hosts need one")


def cgroup_dir(name: str) -> Path | None:
    try:
        return cgroup2_mount() / CGROUP_PARENT / name
    except hostlab.LabError:
        return None


def kill_cgroup(name: str) -> None:
    """SIGKILL every process of the host's cgroup subtree (its systemd first of all)."""
    d = cgroup_dir(name)
    if d is None or not d.is_dir():
        return
    with contextlib.suppress(OSError):
        (d / "cgroup.kill").write_text("1\n")
    deadline = time.monotonic() + 5
    while (d / "cgroup.procs").exists() and _procs_in(d) and time.monotonic() < deadline:
        time.sleep(0.05)


def _procs_in(d: Path) -> bool:
    for sub, _dirs, _files in os.walk(d):
        with contextlib.suppress(OSError):
            if Path(sub, "cgroup.procs").read_text().strip():
                return True
    return False


def remove_cgroup(name: str) -> None:
    """Remove the host's cgroup subtree (its processes must be gone)."""
    d = cgroup_dir(name)
    if d is None or not d.is_dir():
        return
    deadline = time.monotonic() + 5
    while True:  # killed tasks leave their cgroup a moment after SIGKILL
        for sub, _dirs, _files in sorted(os.walk(d), key=lambda t: -t[0].count("/")):
            with contextlib.suppress(OSError):
                os.rmdir(sub)
        if not d.exists():
            return
        if time.monotonic() > deadline:
            raise hostlab.LabError(f"could not remove cgroup {d} of lab host {name}")
        time.sleep(0.1)


def prepare(host) -> None:
    """One-time files of a systemd host: /var overlay dirs, machine-id, sshd unit, masks."""
    fs = host.base / "fs"
    for d in ("var-upper", "var-work"):
        (fs / d).mkdir(mode=0o755)
    etc = fs / "etc"
    (etc / "machine-id").write_text(secrets.token_hex(16) + "\n")
    (etc / "hostname").write_text(host.name + "\n")  # systemd sets the host's UTS name from it
    with open(etc / "hosts", "a") as f:  # sudo resolves it
        f.write(f"127.0.1.1\t{host.name}\n")
    units = etc / "systemd" / "system"
    (units / "fdl-sshd.service").write_text(SSHD_UNIT)
    wants = units / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (wants / "fdl-sshd.service").unlink()
    (wants / "fdl-sshd.service").symlink_to("/etc/systemd/system/fdl-sshd.service")
    for unit in MASKED:
        link = units / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")


def boot_script(host) -> str:
    """Shell run as the host's PID 1-to-be: mounts, then exec systemd."""
    q = shlex.quote
    fs = host.base / "fs"
    lines = ["set -e", "mount --make-rprivate /",
             f"mount -n -t overlay overlay -o lowerdir=/var,upperdir={q(str(fs / 'var-upper'))},"
             f"workdir={q(str(fs / 'var-work'))} /var"]
    lines += [
        # /dev: private, the nodes a container gets
        "mount -n -t tmpfs -o mode=755,nosuid tmpfs /dev",
        "mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/zero c 1 5; mknod -m 666 /dev/full c 1 7",
        "mknod -m 666 /dev/random c 1 8; mknod -m 666 /dev/urandom c 1 9; mknod -m 666 /dev/tty c 5 0",
        "mkdir /dev/pts /dev/shm /dev/mqueue",
        "mount -n -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts",
        "ln -s pts/ptmx /dev/ptmx; mount -n -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm",
        "ln -s /proc/self/fd /dev/fd; ln -s /proc/self/fd/0 /dev/stdin",
        "ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr",
        f"touch /dev/console; mount -n --bind {q(str(host.base / 'systemd.log'))} /dev/console",
    ]
    for host_path, sub in hostlab.PRIVATE_DIRS:
        lines.append(f"mount -n --bind {q(str(fs / sub))} {q(host_path)}")
        if host_path == "/run":
            lines.append(f"mount -n --bind {q(str(host.base / 'ssh'))} {q(hostlab.HOST_SSH_DIR)}")
            lines.append(f"mount -n -o remount,bind,ro {q(hostlab.HOST_SSH_DIR)}")
    lines += [
        # kernel tunables and /sys are machine-wide: read-only; cgroups: our subtree only
        "mount -n --bind /proc/sys /proc/sys; mount -n -o remount,bind,ro /proc/sys",
        "if [ -e /proc/sysrq-trigger ]; then mount -n --bind /proc/sysrq-trigger /proc/sysrq-trigger;"
        " mount -n -o remount,bind,ro /proc/sysrq-trigger; fi",
        "umount -n -l /sys/fs/cgroup 2>/dev/null || true",
        "mount -n -o remount,bind,ro /sys",
        "mount -n -t cgroup2 cgroup2 /sys/fs/cgroup",
        f"hostname {q(host.name)}",
        "cd /",
        "exec setpriv --bounding-set " + ",".join("-" + c for c in DROPPED_CAPS)
        + f" env -i container=fabdeploy-lab TERM=dumb {SYSTEMD} --log-target=console",
    ]
    return "\n".join(lines) + "\n"


def boot(host) -> tuple[int, int]:
    """Start systemd as the host's PID 1; wait for its sshd.  Returns (init pid, sshd pid)."""
    cg = cgroup_dir(host.name)
    if cg is None:
        raise hostlab.LabError("no cgroup2 hierarchy mounted on this machine: systemd hosts need one")
    cg.mkdir(parents=True, exist_ok=True)
    script = host.base / "boot.sh"
    script.write_text(boot_script(host))
    log = host.base / "systemd.log"
    inner = shlex.join([hostlab._tool("unshare"), "--pid", "--fork", "--mount", "--uts", "--cgroup",
                        "--mount-proc", "--propagation", "private", "/bin/sh", str(script)])
    with open(log, "ab") as logf:
        proc = subprocess.Popen(
            [hostlab._tool("nsenter"), f"--net=/run/netns/{host.netns}", "/bin/sh", "-c",
             f"echo $$ > {shlex.quote(str(cg / 'cgroup.procs'))} && exec {inner}"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd="/",
            start_new_session=True, env={"PATH": hostlab._SBIN_PATH, "LANG": "C"})
    hostlab._PROCS[(str(host.root), host.name)] = proc
    hostlab._wait_ssh(host, proc, log, timeout=60)
    init_pid = _child_of(proc.pid)
    return init_pid, _sshd_pid(host, init_pid)


def _child_of(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(children) != 1:
        raise hostlab.LabError(f"unshare (pid {pid}) has children {children}, expected systemd alone")
    return int(children[0])


def _sshd_pid(host, init_pid: int) -> int:
    """The root-namespace pid of the host's sshd (its pidfile holds the host's own pid)."""
    deadline = time.monotonic() + 5
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError):
            inner = int(host.path("/run/sshd.pid").read_text())
            pidns = os.readlink(f"/proc/{init_pid}/ns/pid")
            for pid in hostlab._netns_pids(host.netns):
                with contextlib.suppress(OSError):
                    nspid = [ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
                             if ln.startswith("NSpid:")][0].split()
                    if int(nspid[-1]) == inner and os.readlink(f"/proc/{pid}/ns/pid") == pidns:
                        return pid
        if time.monotonic() > deadline:
            raise hostlab.LabError(f"sshd of systemd host {host.name} has no pid file /run/sshd.pid")
        time.sleep(0.1)


def boot_report(host) -> BootReport:
    """Wait until the host's systemd has finished booting; the active services, the failed units."""
    state = host.exec(["systemctl", "is-system-running", "--wait"], check=False, timeout=120)
    active = host.exec(["systemctl", "list-units", "--type=service", "--state=active",
                         "--plain", "--no-legend", "--no-pager"], timeout=30).stdout
    failed = host.exec(["systemctl", "list-units", "--state=failed", "--plain", "--no-legend",
                        "--no-pager"], timeout=30).stdout
    report = BootReport([ln.split()[0] for ln in active.splitlines() if ln.strip()], [],
                        [f"{ln.split()[0]}: failed (systemctl status {ln.split()[0]})"
                         for ln in failed.splitlines() if ln.strip()])
    if state.stdout.strip() not in ("running", "degraded"):
        report.failed.append(f"systemd of {host.name} is {state.stdout.strip() or 'unreachable'} "
                             f"after booting: {state.stderr.strip()}")
    return report
