#!/usr/bin/env python3
"""Test host lab: disposable "remote hosts" for fabdeploy end-to-end tests.

Each test host is a Linux network namespace ``fdl-<name>`` with its own
address (10.213.<index>.2), reached from the root namespace over a veth pair
(root side 10.213.<index>.1/24), and its own sshd.  sshd is started inside a
private mount namespace in which these directories are bind-mounted from
``<root>/<name>/fs/``::

    /srv            -> fs/srv
    /etc            -> fs/etc           (a copy of the machine's /etc: users, sudoers,
                                         nginx, supervisor, systemd units are the host's own)
    /var/log        -> fs/var-log       (the machine's /var/log directories, empty)
    /var/lib/nginx  -> fs/var-lib-nginx
    /run            -> fs/run           (so /var/run too)
    /usr/local/lib/fabdeploy -> fs/usr-local-lib-fabdeploy
    /home/deploy    -> fs/home-deploy
    /tmp            -> fs/tmp

Everything sshd spawns (login shells, sudo, nginx, uwsgi, ...) inherits that
network + mount namespace, so a deploy over SSH to ``deploy@10.213.N.2``
touches only the host's private directories for those paths.  Every other
path (/usr, /var/www, /opt, ...) is the machine's
real filesystem, shared by all hosts.

Networking: hosts reach each other at their 10.213.N.2 addresses (an nginx
load balancer on one host can proxy to uWSGI sockets on others), and the
root namespace (10.213.N.1, where the test client lives), but nothing outside
10.213.0.0/16.  The namespace has no default route, only
``10.213.0.0/16 via 10.213.N.1``.  The root namespace forwards between the
hosts' veths without any machine-wide setting (net.ipv4.ip_forward and
conf/all stay as they are; there is no iptables/nft):

* IPv4 forwarding is enabled on the host's root-side veth only
  (``/proc/sys/net/ipv4/conf/fdlNa/forwarding``): the kernel decides by the
  interface a packet *arrives on*, so only packets coming from lab hosts are
  ever forwarded.
* Two policy-routing rules keyed on that veth (``iif fdlNa``) confine what
  it forwards: pref 10213 looks destinations inside 10.213.0.0/16 up in the
  main table but suppresses routes less specific than /16 (the machine's
  default route), and pref 10214 answers everything else with "network
  unreachable".  So a packet for an address outside the lab, or for a lab
  address whose host does not exist, is refused instead of leaving through
  the machine's default route -- even if a process in the host adds its own
  default route.  Traffic not arriving on a lab veth never matches them.

The veth, its forwarding flag and its rules are created with the host and
removed by destroy().  rp_filter does not get in the way: the reverse path of
10.213.N.2 is the host's own veth.  (Writing net.ipv4.ip_forward or
conf/all/forwarding machine-wide resets every interface's flag, which would
cut hosts off from each other until they are re-created.)

Reboots: ``host.reboot()`` kills -9 every process of the host (``ip netns
pids``), flushes its nft ruleset, clears its /run and /tmp, starts sshd again
and then what the host's boot would start, read from its own /etc
(hostlab_boot: enabled systemd services, cron @reboot lines; it refuses what it
cannot emulate).  ``create_host(name, index, init="systemd")`` makes a host
whose PID 1 is systemd instead (hostlab_systemd: own PID, mount, UTS and cgroup
namespaces, sshd as a unit, ``host.systemctl(...)``); its reboot boots systemd
again.

Library use (pytest fixtures)::

    host = create_host("web1", 10)
    host.exec(["cat", "/etc/nginx/nginx.conf"])
    host.path("/srv/app/current")          # local directory backing it
    host.destroy()

CLI::

    python tests/hostlab.py up NAME INDEX [--init systemd]
    python tests/hostlab.py reboot NAME
    python tests/hostlab.py down NAME
    python tests/hostlab.py ls

Needs root, and ip, unshare, nsenter, mount, sshd, nginx, sudo, visudo,
runuser, useradd, usermod, ssh-keygen.  Stdlib only.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import http.client
import json
import os
import posixpath
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":  # one module object for the CLI and the helper modules
    sys.modules["hostlab"] = sys.modules[__name__]

LAB_ROOT = Path(os.environ.get("FABDEPLOY_LAB_ROOT", "/tmp/fabdeploy-lab"))

USER = "deploy"
SUDOERS_FILE = Path("/etc/sudoers.d/fabdeploy-lab")
SUDOERS_LINE = f"{USER} ALL=(ALL) NOPASSWD: ALL\n"

# Where base/ssh is bind-mounted (read-only) inside the host's mount
# namespace.  sshd must find its config, host key and authorized_keys there:
# with the default LAB_ROOT under /tmp the real base/ssh path is hidden by
# the /tmp bind mount inside the namespace.
HOST_SSH_DIR = "/run/fdl-ssh"

# (path inside the host, directory under base/fs).  Order matters for the
# bind mounts: /tmp is mounted last so that LAB_ROOT may live under /tmp.
PRIVATE_DIRS: list[tuple[str, str]] = [
    ("/srv", "srv"),
    ("/etc", "etc"),
    ("/var/log", "var-log"),
    ("/var/lib/nginx", "var-lib-nginx"),
    ("/var/lib/redis", "var-lib-redis"),  # a Redis of the host's own (fab provision, [cache] redis)
    ("/home/deploy", "home-deploy"),
    # where fabdeploy keeps host-wide binaries (the uWSGI emperor's copy): /usr is the machine's
    ("/usr/local/lib/fabdeploy", "usr-local-lib-fabdeploy"),
    ("/run", "run"),
    # database servers' data (fab provision, [database]): each host its own cluster
    ("/var/lib/postgresql", "var-lib-postgresql"),
    ("/var/lib/mysql", "var-lib-mysql"),
    ("/tmp", "tmp"),  # last: the lab root is under /tmp
]
# Extra aliases accepted by TestHost.path().
_PATH_ALIASES = {"/var/run": "/run"}

REQUIRED_TOOLS = ["ip", "unshare", "nsenter", "mount", "sshd", "nginx", "sudo",
                  "visudo", "runuser", "useradd", "usermod", "ssh-keygen"]

LAB_NET = "10.213.0.0/16"
# ip rule priorities of the per-host forwarding guard (see the docstring).
RULE_PREF_LAB = 10213
RULE_PREF_BLOCK = 10214

_LAB_ADDR_RE = re.compile(r"^10\.213\.\d{1,3}\.2$")
INITS = ("lab", "systemd")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# sshd Popen objects started by this process, so destroy() can reap them.
_PROCS: dict[tuple[str, str], subprocess.Popen] = {}


class LabError(Exception):
    """A lab operation failed; the message is a single line."""

    def __init__(self, message: str, result: subprocess.CompletedProcess | None = None):
        super().__init__(" ".join(str(message).split()))
        self.result = result


# --------------------------------------------------------------------------
# helpers


def _tool(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":" + _SBIN_PATH)
    if not path:
        raise LabError(f"required tool {name!r} not found in PATH or sbin directories")
    return path


def _check_prerequisites() -> None:
    if sys.platform != "linux":
        raise LabError("the host lab needs Linux network namespaces")
    if os.geteuid() != 0:
        raise LabError("the host lab must run as root (network namespaces, bind mounts, useradd)")
    missing = [t for t in REQUIRED_TOOLS
               if not shutil.which(t, path=os.environ.get("PATH", "") + ":" + _SBIN_PATH)]
    if missing:
        raise LabError("missing required tools: " + ", ".join(missing))


def _run(argv: list[str], check: bool = True, timeout: float = 30,
         input: str | None = None) -> subprocess.CompletedProcess:
    argv = [_tool(argv[0])] + list(argv[1:])
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                             input=input, stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LabError(f"timed out after {timeout}s: {shlex.join(argv)}") from None
    if check and res.returncode != 0:
        err = (res.stderr.strip() or res.stdout.strip()).splitlines()
        raise LabError(f"command failed (rc={res.returncode}): {shlex.join(argv)}: "
                       f"{err[-1] if err else ''}", res)
    return res


@contextlib.contextmanager
def _locked(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # state is the field after the ")" closing the command name
    state = data.rpartition(")")[2].split()[:1]
    return bool(state) and state[0] not in ("Z", "X")


def _netns_exists(netns: str) -> bool:
    return Path("/run/netns", netns).exists()


def _link_exists(dev: str) -> bool:
    return Path("/sys/class/net", dev).exists()


def _del_forward_rules(veth_root: str) -> None:
    """Delete the policy rules of veth_root (if any; the link may be gone)."""
    for pref in (RULE_PREF_LAB, RULE_PREF_BLOCK):
        for _ in range(20):  # normally one each; more only after odd failures
            if _run(["ip", "rule", "del", "pref", str(pref), "iif", veth_root],
                    check=False).returncode != 0:
                break


def _enable_lab_forwarding(veth_root: str) -> None:
    """Let the root namespace forward packets arriving on veth_root, to lab hosts only."""
    _del_forward_rules(veth_root)  # stale rules of an earlier host with this index
    # the guard goes in before forwarding is switched on
    _run(["ip", "rule", "add", "pref", str(RULE_PREF_LAB), "iif", veth_root, "to", LAB_NET,
          "lookup", "main", "suppress_prefixlength", "15"])
    _run(["ip", "rule", "add", "pref", str(RULE_PREF_BLOCK), "iif", veth_root, "unreachable"])
    knob = Path("/proc/sys/net/ipv4/conf", veth_root, "forwarding")
    try:
        knob.write_text("1\n")
        value = knob.read_text().strip()
    except OSError as e:
        raise LabError(f"cannot enable forwarding on {veth_root}: {e}") from None
    if value != "1":
        raise LabError(f"{knob} reads {value!r} after writing 1")


def _netns_pids(netns: str) -> list[int]:
    if not _netns_exists(netns):
        return []
    res = _run(["ip", "netns", "pids", netns], check=False)
    return sorted(int(x) for x in res.stdout.split() if x.isdigit())


def _reap(root: Path, name: str) -> None:
    proc = _PROCS.get((str(root), name))
    if proc is not None and proc.poll() is not None:
        _PROCS.pop((str(root), name), None)


def _kill_netns(netns: str, root: Path, name: str, term_wait: float = 5.0) -> None:
    """SIGTERM every process in netns, wait (bounded), then SIGKILL (at once if term_wait is 0)."""
    def signal_all(sig: int) -> None:
        for pid in _netns_pids(netns):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    if not _netns_pids(netns):
        _reap(root, name)
        return
    if term_wait > 0:
        signal_all(signal.SIGTERM)
    deadline = time.monotonic() + term_wait
    while time.monotonic() < deadline:
        _reap(root, name)
        if not _netns_pids(netns):
            return
        time.sleep(0.05)
    deadline = time.monotonic() + 5.0
    while True:
        signal_all(signal.SIGKILL)
        time.sleep(0.05)
        _reap(root, name)
        left = _netns_pids(netns)
        if not left:
            return
        if time.monotonic() > deadline:
            raise LabError(f"processes survive SIGKILL in netns {netns}: {left}")


def _remove_known_host(root: Path, address: str) -> None:
    kh = known_hosts(root)
    with _locked(root):
        if not kh.exists():
            return
        lines = kh.read_text().splitlines(keepends=True)
        keep = [ln for ln in lines if ln.split(" ", 1)[0] != address]
        if keep != lines:
            _atomic_write(kh, "".join(keep), 0o644)


def _atomic_write(path: Path, text: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _check_root_location(root: Path) -> None:
    """The lab root must stay reachable while the private dirs are mounted."""
    r = posixpath.normpath(str(root.resolve()))
    for host_path, _ in PRIVATE_DIRS:
        if host_path == "/tmp":
            continue  # handled by mounting /tmp last
        if r == host_path or r.startswith(host_path + "/"):
            raise LabError(f"lab root {r} must not be inside {host_path} (it is remapped in hosts)")


# --------------------------------------------------------------------------
# machine-wide setup


def client_key(root: Path = LAB_ROOT) -> Path:
    """Private key (ed25519, no passphrase) the client uses for every host."""
    return Path(root) / "client_key"


def known_hosts(root: Path = LAB_ROOT) -> Path:
    """known_hosts file with the host key of every lab host."""
    return Path(root) / "known_hosts"


def ensure_machine_setup(root: Path = LAB_ROOT) -> None:
    """Idempotent once-per-machine setup: deploy user, sudoers, client key."""
    root = Path(root)
    _check_prerequisites()
    _check_root_location(root)
    with _locked(root):
        os.chmod(root, 0o755)
        # user
        try:
            pw = pwd.getpwnam(USER)
        except KeyError:
            _run(["useradd", "-m", "-s", "/bin/bash", USER])
            pw = pwd.getpwnam(USER)
        shadow = {ln.split(":", 2)[0]: ln.split(":", 2)[1]
                  for ln in Path("/etc/shadow").read_text().splitlines() if ln.count(":") >= 2}
        pw_field = shadow.get(USER, "")
        if pw_field == "" or pw_field.startswith("!"):
            # '!' = locked: sshd (UsePAM no) refuses even key logins.
            _run(["usermod", "-p", "*", USER])
        home = Path(pw.pw_dir)
        if str(home) != "/home/deploy":
            raise LabError(f"user {USER} has home {home}, expected /home/deploy")
        home.mkdir(parents=True, exist_ok=True)
        # sudoers
        if not SUDOERS_FILE.exists() or SUDOERS_FILE.read_text() != SUDOERS_LINE \
                or stat.S_IMODE(SUDOERS_FILE.stat().st_mode) != 0o440:
            SUDOERS_FILE.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=SUDOERS_FILE.parent, prefix=".fabdeploy-lab.")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(SUDOERS_LINE)
                os.chmod(tmp, 0o440)
                _run(["visudo", "-cf", tmp])
                os.replace(tmp, SUDOERS_FILE)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        # client key
        key = client_key(root)
        if not key.exists() or not key.with_suffix(".pub").exists():
            for p in (key, key.with_suffix(".pub")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fabdeploy-lab-client",
                  "-f", str(key)])
        os.chmod(key, 0o600)
        kh = known_hosts(root)
        if not kh.exists():
            _atomic_write(kh, "", 0o644)


# --------------------------------------------------------------------------
# hosts


class TestHost:
    """One lab host.  Use create_host()/get_host() rather than the constructor."""

    __test__ = False  # not a pytest test class
    user = USER

    def __init__(self, name: str, index: int, root: Path = LAB_ROOT,
                 sshd_pid: int | None = None, init: str = "lab", init_pid: int | None = None):
        if not _NAME_RE.match(name):
            raise LabError(f"bad host name {name!r} (want [a-z0-9][a-z0-9_-]*, ≤40 chars)")
        if not isinstance(index, int) or not 1 <= index <= 250:
            raise LabError(f"bad host index {index!r} (want 1..250)")
        self.name = name
        self.index = index
        self.root = Path(root)
        self.address = f"10.213.{index}.2"
        self.gateway = f"10.213.{index}.1"
        self.netns = f"fdl-{name}"
        self.veth_root = f"fdl{index}a"
        self.veth_host = f"fdl{index}b"
        self.base = self.root / name
        self.sshd_pid = sshd_pid
        if init not in INITS:
            raise LabError(f"bad init {init!r} for host {name!r} (want one of: {', '.join(INITS)})")
        # "lab": sshd is started directly and reboot() emulates the boot
        # (hostlab_boot); "systemd": systemd is PID 1 of the host (hostlab_systemd).
        self.init = init
        self.init_pid = init_pid

    def __repr__(self) -> str:
        return f"<TestHost {self.name} {self.address} sshd={self.sshd_pid}>"

    # -- addressing ---------------------------------------------------------

    def ssh_target(self) -> str:
        return f"{self.user}@{self.address}"

    def ssh_options(self) -> list[str]:
        """ssh(1) options to reach this host strictly and non-interactively."""
        return ["-F", "/dev/null",
                "-i", str(client_key(self.root)),
                "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={known_hosts(self.root)}",
                "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=10"]

    def ssh(self, command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run command over real SSH as the deploy user (text output captured)."""
        argv = ["ssh", *self.ssh_options(), self.ssh_target(), command]
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                 stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise LabError(f"ssh to {self.name} timed out after {timeout}s: {command}") from None
        if check and res.returncode != 0:
            err = res.stderr.strip().splitlines()
            raise LabError(f"ssh to {self.name} failed (rc={res.returncode}): {command}: "
                           f"{err[-1] if err else ''}", res)
        return res

    def path(self, host_path: str) -> Path:
        """Local directory/file backing host_path (must be under a private dir)."""
        if not str(host_path).startswith("/"):
            raise LabError(f"host path must be absolute: {host_path!r}")
        p = posixpath.normpath(str(host_path))
        if p.startswith("//"):
            p = "/" + p.lstrip("/")
        for alias, target in _PATH_ALIASES.items():
            if p == alias or p.startswith(alias + "/"):
                p = target + p[len(alias):]
        for prefix, sub in PRIVATE_DIRS:
            if p == prefix or p.startswith(prefix + "/"):
                rest = p[len(prefix):].lstrip("/")
                local = self.base / "fs" / sub
                return local / rest if rest else local
        raise LabError(f"{host_path} is not private to lab hosts (shared with the machine); "
                       f"private: {', '.join(h for h, _ in PRIVATE_DIRS)}")

    # -- processes ----------------------------------------------------------

    def pids(self) -> list[int]:
        """Every pid in the host's network namespace (`ip netns pids`)."""
        return _netns_pids(self.netns)

    def _ns_pid(self) -> int:
        pid, what = (self.init_pid, "systemd") if self.init == "systemd" else (self.sshd_pid, "sshd")
        if pid is None or not _pid_alive(pid):
            raise LabError(f"host {self.name}: {what} (pid {pid}) is not running")
        return pid

    def exec(self, cmd: list[str] | str, check: bool = True, timeout: float = 60,
             user: str | None = None) -> subprocess.CompletedProcess:
        """Run cmd inside the host's net+mount namespaces, as root or `user`.

        A string is run with `bash -c`.  Output is captured as text.  A command
        that leaves a daemon holding stdout/stderr open makes this wait until
        timeout: redirect a daemon's output.
        """
        pid = self._ns_pid()
        argv = [_tool("nsenter"), f"--net=/proc/{pid}/ns/net", f"--mount=/proc/{pid}/ns/mnt"]
        if self.init == "systemd":
            argv += [f"--pid=/proc/{pid}/ns/pid", f"--uts=/proc/{pid}/ns/uts",
                     f"--cgroup=/proc/{pid}/ns/cgroup"]
        argv.append("--")
        if user and user != "root":
            argv += [_tool("runuser"), "-u", user, "--"]
        if isinstance(cmd, str):
            argv += ["/bin/bash", "-c", cmd]
            shown = cmd
        else:
            argv += list(cmd)
            shown = shlex.join(cmd)
        env = dict(os.environ)
        env["PATH"] = _SBIN_PATH
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                 stdin=subprocess.DEVNULL, cwd="/", env=env)
        except subprocess.TimeoutExpired:
            raise LabError(f"exec in {self.name} timed out after {timeout}s: {shown}") from None
        if check and res.returncode != 0:
            err = (res.stderr.strip() or res.stdout.strip()).splitlines()
            raise LabError(f"exec in {self.name} failed (rc={res.returncode}): {shown}: "
                           f"{err[-1] if err else ''}", res)
        return res

    def http(self, path: str = "/", host_header: str | None = None, timeout: float = 10,
             method: str = "GET", body: bytes | str | None = None,
             headers: dict | None = None) -> tuple[int, dict, bytes]:
        """HTTP request to address:80.  Returns (status, headers, body).

        Header names are lower-cased; repeated headers are joined with ", ".
        Non-2xx statuses are returned, not raised; connection errors raise OSError.
        """
        hdrs = dict(headers or {})
        if host_header is not None:
            hdrs["Host"] = host_header
        conn = http.client.HTTPConnection(self.address, 80, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            out: dict[str, str] = {}
            for k, v in resp.getheaders():
                k = k.lower()
                out[k] = f"{out[k]}, {v}" if k in out else v
            return resp.status, out, data
        finally:
            conn.close()

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """`sudo systemctl ARGS` over SSH (hosts created with init="systemd")."""
        if self.init != "systemd":
            raise LabError(f"host {self.name} has no systemd (create it with init='systemd')")
        return self.ssh("sudo systemctl " + shlex.join(args), check=check, timeout=timeout)

    # -- lifecycle ----------------------------------------------------------

    def reboot(self, check: bool = True):
        """Simulate a reboot: kill -9 every process of the host, flush its nft
        ruleset, clear its /run and /tmp, start sshd again, then start what the
        host's boot would start.

        init "lab": hostlab_boot emulates Debian's boot from the host's own /etc;
        init "systemd": systemd boots again as the host's PID 1.  Returns a
        hostlab_boot.BootReport; with check, a boot with failures raises LabError.
        """
        import hostlab_boot
        hostlab_systemd.kill_cgroup(self.name)
        _kill_netns(self.netns, self.root, self.name, term_wait=0)
        hostlab_systemd.remove_cgroup(self.name)
        # kernel state does not survive a reboot: the host's firewall tables go
        if shutil.which("nft", path=_SBIN_PATH):
            _run(["ip", "netns", "exec", self.netns, "nft", "flush", "ruleset"])
        for sub in ("run", "tmp"):
            _clear_dir(self.base / "fs" / sub)
        _make_run(self.base / "fs" / "run")
        _boot(self)
        if self.init == "systemd":
            report = hostlab_systemd.boot_report(self)
        else:
            report = hostlab_boot.boot(self)
        if check and report.failed:
            raise LabError(f"reboot of {self.name}: " + "; ".join(report.failed))
        return report

    def destroy(self) -> None:
        """Kill everything in the host, delete netns + veth, key line and files.

        Safe to call on a partly created or already destroyed host.
        """
        _destroy(self.root, self.name, self.netns, self.veth_root, self.address, self.base)
        self.sshd_pid = None


def _destroy(root: Path, name: str, netns: str, veth_root: str | None,
             address: str | None, base: Path) -> None:
    hostlab_systemd.kill_cgroup(name)  # a systemd host: its PID 1 first, at once
    _kill_netns(netns, root, name)
    hostlab_systemd.remove_cgroup(name)
    if _netns_exists(netns):
        _run(["ip", "netns", "del", netns], check=False)
    if veth_root and _link_exists(veth_root):
        _run(["ip", "link", "del", veth_root], check=False)
    if veth_root:
        _del_forward_rules(veth_root)
    if address:
        _remove_known_host(root, address)
    proc = _PROCS.pop((str(root), name), None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    if base.exists():
        shutil.rmtree(base, ignore_errors=True)
        if base.exists():
            raise LabError(f"could not remove {base}")
    if _netns_exists(netns):
        raise LabError(f"could not delete netns {netns}")


def _read_host_json(root: Path, name: str) -> dict | None:
    try:
        return json.loads((Path(root) / name / "host.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def get_host(name: str, index: int | None = None, root: Path = LAB_ROOT) -> TestHost:
    """TestHost object for an existing host (no creation).

    Reads base/host.json (written by create_host, possibly in another process)
    for the index and sshd pid; index may be omitted when host.json exists.
    """
    info = _read_host_json(root, name)
    if info is None:
        if index is None:
            raise LabError(f"no lab host {name!r} under {root} (no host.json)")
        return TestHost(name, index, root)
    if index is not None and info["index"] != index:
        raise LabError(f"lab host {name!r} has index {info['index']}, not {index}")
    return TestHost(name, info["index"], root, sshd_pid=info.get("sshd_pid"),
                    init=info.get("init", "lab"), init_pid=info.get("init_pid"))


def _copy_dirs(src: str, dst: Path) -> None:
    """The directory tree of src (owners and modes, no files) at dst."""
    for dirpath, _dirs, _files in os.walk(src):
        target = dst / os.path.relpath(dirpath, src)
        target.mkdir(exist_ok=True)
        st = os.stat(dirpath)
        os.chown(target, st.st_uid, st.st_gid)
        os.chmod(target, stat.S_IMODE(st.st_mode))


def _make_private_fs(host: TestHost) -> None:
    fs = host.base / "fs"
    fs.mkdir(parents=True)
    os.chmod(host.base, 0o755)
    os.chmod(fs, 0o755)
    dep = pwd.getpwnam(USER)
    for host_path, sub in PRIVATE_DIRS:
        d = fs / sub
        if sub == "etc":
            _run(["cp", "-a", "/etc", str(d)])
            # cron (installed for the pidfile manager's @reboot line) starts disabled in a lab host: a test
            # that wants it enables it in the host (its package enabled it in the machine's /etc); so do the
            # servers scripts/setup installs (never started on the machine; provision enables them)
            for unit in ("cron", "redis-server", "mariadb", "postgresql"):
                (d / f"systemd/system/multi-user.target.wants/{unit}.service").unlink(missing_ok=True)
        elif sub in ("var-log", "var-lib-redis"):
            _copy_dirs(host_path, d)
            d.mkdir(exist_ok=True)  # (a machine without that directory)
        else:
            d.mkdir()
        # mountpoint on the machine (e.g. /var/lib/nginx may not exist)
        Path(host_path).mkdir(parents=True, exist_ok=True)
    st = Path("/var/lib/nginx").stat()
    os.chown(fs / "var-lib-nginx", st.st_uid, st.st_gid)
    os.chmod(fs / "var-lib-nginx", stat.S_IMODE(st.st_mode))
    os.chmod(fs / "srv", 0o755)
    _make_run(fs / "run")
    home = fs / "home-deploy"
    if Path("/etc/skel").is_dir():
        for item in Path("/etc/skel").iterdir():
            _run(["cp", "-a", str(item), str(home)])
    for dirpath, dirnames, filenames in os.walk(home):
        for n in [dirpath] + [os.path.join(dirpath, x) for x in dirnames + filenames]:
            os.lchown(n, dep.pw_uid, dep.pw_gid)
    os.chmod(home, 0o755)
    os.chmod(fs / "tmp", 0o1777)


def _make_run(run: Path) -> None:
    """The host's /run as at creation (and after a reboot): what sshd needs."""
    os.chmod(run, 0o755)
    (run / "sshd").mkdir(mode=0o755)  # sshd privilege separation dir
    (run / "lock").mkdir()
    os.chmod(run / "lock", 0o1777)
    (run / HOST_SSH_DIR.rsplit("/", 1)[1]).mkdir(mode=0o755)


def _clear_dir(d: Path) -> None:
    """Remove everything inside d (not d itself)."""
    for item in d.iterdir():
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()


def _write_ssh_config(host: TestHost) -> Path:
    sshdir = host.base / "ssh"
    sshdir.mkdir(mode=0o755)
    os.chmod(sshdir, 0o755)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"fabdeploy-lab-{host.name}",
          "-f", str(sshdir / "ssh_host_ed25519_key")])
    pub = client_key(host.root).with_suffix(".pub").read_text()
    (sshdir / "authorized_keys").write_text(pub)
    os.chmod(sshdir / "authorized_keys", 0o644)
    cfg = sshdir / "sshd_config"
    cfg.write_text("\n".join([
        f"# fabdeploy host lab: {host.name}; read inside the host as {HOST_SSH_DIR}/sshd_config",
        f"ListenAddress {host.address}",
        "Port 22",
        f"HostKey {HOST_SSH_DIR}/ssh_host_ed25519_key",
        f"AuthorizedKeysFile {HOST_SSH_DIR}/authorized_keys",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        f"AllowUsers {USER}",
        "PidFile /run/sshd.pid",
        "Subsystem sftp internal-sftp",
        "MaxSessions 50",
        "MaxStartups 100",
        "LogLevel INFO",
        "PrintMotd no",
        "PrintLastLog no",
        "UseDNS no",
        "",
    ]))
    os.chmod(cfg, 0o644)
    return cfg


def _mount_script(host: TestHost) -> str:
    q = shlex.quote
    fs = host.base / "fs"
    lines = ["set -e"]
    for host_path, sub in PRIVATE_DIRS:
        # -n: no utab bookkeeping (it would create /run/mount on the machine)
        lines.append(f"mount -n --bind {q(str(fs / sub))} {q(host_path)}")
        if host_path == "/run":
            # sshd's files, read-only, at a path that survives the /tmp mount
            lines.append(f"mount -n --bind {q(str(host.base / 'ssh'))} {q(HOST_SSH_DIR)}")
            lines.append(f"mount -n -o remount,bind,ro {q(HOST_SSH_DIR)}")
    lines.append("cd /")
    lines.append(f"exec {q(_tool('sshd'))} -D -e -f {q(HOST_SSH_DIR + '/sshd_config')}")
    return "; ".join(lines)


def _tail(path: Path, n: int = 5) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(lines[-n:]) or "(empty log)"


def _ssh_banner(address: str, port: int = 22, timeout: float = 0.5) -> bool:
    """True if address:port accepts TCP and sends an SSH banner."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(2)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def create_host(name: str, index: int, root: Path = LAB_ROOT, init: str = "lab") -> TestHost:
    """Create (or re-create) lab host `name` with address 10.213.<index>.2.

    init="systemd" boots systemd as the host's PID 1 (see hostlab_systemd).
    """
    root = Path(root)
    host = TestHost(name, index, root, init=init)
    ensure_machine_setup(root)

    # another live host with the same index would lose its veth
    for other in root.iterdir():
        info = _read_host_json(root, other.name) if other.is_dir() else None
        if info and info.get("index") == index and info.get("name") != name \
                and _netns_exists(f"fdl-{info['name']}"):
            raise LabError(f"index {index} is in use by lab host {info['name']!r}")

    # leftovers of an earlier (possibly crashed) run
    old = _read_host_json(root, name)
    old_veth = f"fdl{old['index']}a" if old else None
    old_addr = f"10.213.{old['index']}.2" if old else None
    _destroy(root, name, host.netns, old_veth, old_addr, host.base)
    if _link_exists(host.veth_root):
        _run(["ip", "link", "del", host.veth_root])
    _remove_known_host(root, host.address)

    try:
        return _create(host)
    except BaseException:
        log = host.base / "sshd.log"
        saved = log.read_text(errors="replace") if log.exists() else None
        with contextlib.suppress(Exception):
            host.destroy()
        if saved is not None:  # keep the log for post-mortem
            with contextlib.suppress(OSError):
                host.base.mkdir(parents=True, exist_ok=True)
                log.write_text(saved)
        raise


def _start_sshd(host: TestHost) -> None:
    """Start the host's sshd in a fresh private mount namespace; wait until it answers."""
    log = host.base / "sshd.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [_tool("ip"), "netns", "exec", host.netns, _tool("unshare"), "--mount",
             "--propagation", "private", "/bin/sh", "-c", _mount_script(host)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd="/",
            start_new_session=True, env={"PATH": _SBIN_PATH, "LANG": "C"})
    _PROCS[(str(host.root), host.name)] = proc
    _wait_ssh(host, proc, log)

    # sshd is the Popen pid (ip netns exec, unshare and sh all exec); confirm
    # with its pid file, which lands in the private /run.
    pid = proc.pid
    pidfile = host.path("/run/sshd.pid")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int(pidfile.read_text().strip())
            break
        time.sleep(0.05)
    host.sshd_pid = pid
    if os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
        raise LabError(f"sshd for {host.name} (pid {pid}) is not in a private mount namespace")


def _wait_ssh(host: TestHost, proc: subprocess.Popen, log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise LabError(f"{'systemd' if host.init == 'systemd' else 'sshd'} for {host.name} "
                           f"exited (rc={proc.returncode}): {_tail(log)}")
        if _ssh_banner(host.address, 22):
            return
        if time.monotonic() > deadline:
            raise LabError(f"sshd for {host.name} not reachable on {host.address}:22 "
                           f"within {timeout:g}s: {_tail(log)}")
        time.sleep(0.1)


def _boot(host: TestHost) -> None:
    """Start the host's first processes (sshd, or systemd) and record them in host.json."""
    if host.init == "systemd":
        host.init_pid, host.sshd_pid = hostlab_systemd.boot(host)
    else:
        _start_sshd(host)
    # host.json first: known_hosts pruning treats lab addresses without a
    # host.json as stale.
    _atomic_write(host.base / "host.json", json.dumps({
        "name": host.name, "index": host.index, "address": host.address,
        "netns": host.netns, "sshd_pid": host.sshd_pid, "init": host.init,
        "init_pid": host.init_pid}, indent=2) + "\n", 0o644)


def _create(host: TestHost) -> TestHost:
    ns, a, b = host.netns, host.veth_root, host.veth_host
    _run(["ip", "netns", "add", ns])
    _run(["ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns])
    _run(["ip", "addr", "add", f"{host.gateway}/24", "dev", a])
    _run(["ip", "link", "set", a, "up"])
    _run(["ip", "-n", ns, "addr", "add", f"{host.address}/24", "dev", b])
    _run(["ip", "-n", ns, "link", "set", "lo", "up"])
    _run(["ip", "-n", ns, "link", "set", b, "up"])
    # other lab hosts via the root namespace; deliberately no default route
    _run(["ip", "-n", ns, "route", "add", LAB_NET, "via", host.gateway])
    _enable_lab_forwarding(a)

    host.base.mkdir(parents=True)
    _make_private_fs(host)
    _write_ssh_config(host)

    if host.init == "systemd":
        hostlab_systemd.prepare(host)
    _boot(host)

    keytype, key = (host.base / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    kh = known_hosts(host.root)
    with _locked(host.root):
        live = {info["address"] for d in host.root.iterdir() if d.is_dir()
                for info in [_read_host_json(host.root, d.name)] if info}
        lines = []
        for ln in kh.read_text().splitlines(keepends=True) if kh.exists() else []:
            addr = ln.split(" ", 1)[0]
            if addr == host.address or (_LAB_ADDR_RE.match(addr) and addr not in live):
                continue  # replaced, or left by a host that vanished uncleanly
            lines.append(ln)
        lines.append(f"{host.address} {keytype} {key}\n")
        _atomic_write(kh, "".join(lines), 0o644)
    return host


import hostlab_systemd  # noqa: E402  (uses the helpers above)

# --------------------------------------------------------------------------
# CLI


def _cmd_up(args) -> int:
    host = create_host(args.name, args.index, args.root, init=args.init)
    print(f"address:     {host.address}")
    print(f"ssh target:  {host.ssh_target()}")
    print(f"client key:  {client_key(host.root)}")
    print(f"known_hosts: {known_hosts(host.root)}")
    print(f"netns:       {host.netns}")
    print(f"sshd pid:    {host.sshd_pid}")
    print(f"files:       {host.base / 'fs'}")
    print("try:         ssh " + shlex.join(host.ssh_options() + [host.ssh_target()]))
    return 0


def _cmd_down(args) -> int:
    root = Path(args.root)
    info = _read_host_json(root, args.name)
    if info:
        get_host(args.name, None, root).destroy()
    else:
        if not _NAME_RE.match(args.name):
            raise LabError(f"bad host name {args.name!r}")
        _check_prerequisites()
        _destroy(root, args.name, f"fdl-{args.name}", None, None, root / args.name)
    print(f"destroyed {args.name}")
    return 0


def _cmd_reboot(args) -> int:
    report = get_host(args.name, None, Path(args.root)).reboot(check=False)
    print(report.text())
    return 1 if report.failed else 0


def _cmd_ls(args) -> int:
    root = Path(args.root)
    names = set()
    if root.is_dir():
        names |= {p.name for p in root.iterdir() if (p / "host.json").exists()}
    if Path("/run/netns").is_dir():
        names |= {p.name[4:] for p in Path("/run/netns").iterdir() if p.name.startswith("fdl-")}
    if not names:
        print("no lab hosts")
        return 0
    print(f"{'NAME':<20} {'INDEX':>5} {'ADDRESS':<16} {'SSHD':>8} {'NETNS':<6} STATE")
    for name in sorted(names):
        info = _read_host_json(root, name) or {}
        pid = info.get("sshd_pid")
        netns = _netns_exists(f"fdl-{name}")
        state = "up" if pid and _pid_alive(pid) and netns else ("stale" if info or netns else "?")
        print(f"{name:<20} {info.get('index', '-'):>5} {info.get('address', '-'):<16} "
              f"{pid or '-':>8} {'yes' if netns else 'no':<6} {state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hostlab", description="fabdeploy test host lab")
    p.add_argument("--root", type=Path, default=LAB_ROOT,
                   help=f"lab root directory (default {LAB_ROOT}; env FABDEPLOY_LAB_ROOT)")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="create (or re-create) a host")
    up.add_argument("name")
    up.add_argument("index", type=int, help="1..250; address is 10.213.INDEX.2")
    up.add_argument("--init", choices=INITS, default="lab",
                    help="lab: sshd only, reboot emulated; systemd: systemd as the host's PID 1")
    up.set_defaults(func=_cmd_up)
    down = sub.add_parser("down", help="destroy a host")
    down.add_argument("name")
    down.set_defaults(func=_cmd_down)
    rb = sub.add_parser("reboot", help="simulate a reboot of a host")
    rb.add_argument("name")
    rb.set_defaults(func=_cmd_reboot)
    ls = sub.add_parser("ls", help="list hosts")
    ls.set_defaults(func=_cmd_ls)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except LabError as e:
        print(f"hostlab: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
