"""Boot emulator for lab hosts without systemd (TestHost.reboot() of an init="lab" host).

After the lab has killed every process of the host, cleared its /run and /tmp
and started its sshd again, boot() starts what Debian's boot would start, read
from the host's own /etc the way systemd and cron read it:

* the units enabled in /etc/systemd/system/<target>.wants|.requires for the
  targets reached from default.target (hostlab_units.boot_targets), plus the
  services they Want/Require, ordered by After=/Before= (sysinit.target's first);
* each service as hostlab_units.plan() says: ExecStartPre, ExecStart,
  ExecStartPost, User/Group, Environment(File), WorkingDirectory, UMask,
  LimitNOFILE, RuntimeDirectory, LogsDirectory; Type=oneshot and forking are
  waited for (forking: its PIDFile), simple/exec/idle/notify run detached
  (notify: waited for READY=1 on a NOTIFY_SOCKET); output goes to
  /var/log/lab-boot/<unit>.log in the host;
* the @reboot lines of /etc/crontab and /etc/cron.d/* (as their user), when the
  host has cron.service enabled, as a real boot would (cron itself is not run).

Anything it cannot emulate is refused: one line in BootReport.failed naming
the unit and the directive, never a silent approximation.  Units a lab host
does not boot (its SSH is the lab's sshd, no consoles, the machine's disks)
and package timers/sockets are listed in BootReport.skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import hostlab_plan as hp
import hostlab_units as hu

# Units a lab host does not start (name or prefix -> why).
LAB_SKIP = {
    "ssh.service": "the lab's own sshd is the host's SSH (started before the boot)",
    "sshd.service": "the lab's own sshd is the host's SSH (started before the boot)",
    "getty@": "no consoles in a lab host",
    "serial-getty@": "no consoles in a lab host",
    "console-getty.service": "no consoles in a lab host",
    "e2scrub_reap.service": "acts on the machine's disks",
    "modprobe@": "loads kernel modules (machine-wide)",
}
CRON_UNITS = ("cron.service", "cronie.service")
_CRON_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # Debian's cron ignores other names in /etc/cron.d


@dataclass
class BootReport:
    """What a (re)boot started, what it skipped (and why), what failed: one line each."""
    started: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    pids: dict = field(default_factory=dict)  # unit -> main pid (emulated boots)

    def text(self) -> str:
        return "\n".join([f"started: {x}" for x in self.started]
                         + [f"skipped: {x}" for x in self.skipped]
                         + [f"FAILED:  {x}" for x in self.failed])


def boot(host) -> BootReport:
    """Start what the host's boot would start (its sshd already runs); what happened, one line each."""
    report = BootReport()
    names = enabled_units(host)
    host.exec(["install", "-d", "-m", "0755", hp.LOG_DIR, "/run/lab-boot/notify"])
    units, cron_enabled = [], False
    i = 0
    while i < len(names):
        name = names[i]
        i += 1
        skip = next((why for key, why in LAB_SKIP.items()
                     if name == key or (key.endswith("@") and name.startswith(key))), None)
        if skip:
            report.skipped.append(f"{name}: {skip}")
        elif name in CRON_UNITS:
            cron_enabled = True
        else:
            unit = _select(host, name, report)
            if unit is not None:
                units.append(unit)
                # what it Wants=/Requires= starts too
                names += [d for d in unit.words("Unit", "Wants") + unit.words("Unit", "Requires")
                          if d.endswith(".service") and d not in names]
    for unit in _ordered(units, names):
        try:
            p = hp.plan(host, unit)
        except hu.Refused as e:
            report.failed.append(str(e))
            continue
        _start(host, p, report)
    _cron(host, cron_enabled, report)
    for unit, pid in report.pids.items():  # detached services that died while the boot went on
        if not _alive(pid):
            report.failed.append(f"{unit}: exited after starting (pid {pid}); log: "
                                 f"{_tail(host, unit)}")
    return report


def enabled_units(host) -> list[str]:
    """Non-target units enabled in the host's /etc for the targets its boot reaches."""
    names: list[str] = []
    for target in hu.boot_targets(host):
        names += [n for n in hu.wants_of(host, target, etc_only=True)
                  if not n.endswith(".target") and n not in names]
    return names


def _select(host, name: str, report: BootReport):
    unit = hu.load(host, name)
    if unit is None:
        report.failed.append(f"{name}: enabled, but no unit file in {' or '.join(hu.UNIT_DIRS)}")
        return None
    if unit == "masked":
        report.skipped.append(f"{name}: masked")
        return None
    if not name.endswith(".service"):
        kind = name.rsplit(".", 1)[-1]
        if unit.path.startswith("/etc/"):
            report.failed.append(f"{name}: cannot emulate .{kind} units (only services)")
        else:
            report.skipped.append(f"{name}: a package's .{kind} unit, not emulated (only services)")
        return None
    try:
        why = hu.check_conditions(host, unit)
    except hu.Refused as e:
        report.failed.append(str(e))
        return None
    if why:
        report.skipped.append(f"{name}: {why}")
        return None
    return unit


def _ordered(units: list, names: list[str]) -> list:
    """Units in After=/Before= order (stable: enabling order otherwise)."""
    by = {u.name: u for u in units}
    after = {u.name: set() for u in units}
    for u in units:
        for dep in u.words("Unit", "After"):
            if dep in by:
                after[u.name].add(dep)
        for dep in u.words("Unit", "Before"):
            if dep in by:
                after[dep].add(u.name)
    out: list = []
    while len(out) < len(units):
        ready = [u for u in units if u not in out and not (after[u.name] - {x.name for x in out})]
        if not ready:  # a cycle: systemd would break it too; keep the enabling order
            ready = [u for u in units if u not in out]
        out.append(ready[0])
    return out


def command(p: hp.Plan, line: hp.ExecLine, env: dict | None = None) -> str:
    """The shell line that runs one Exec line of plan p inside the host (pure)."""
    q = shlex.quote
    parts = [f"cd {q(p.cwd)} 2>/dev/null || cd /" if p.cwd_optional else f"cd {q(p.cwd)} || exit 200",
             f"umask {q(p.umask)}"]
    if p.nofile:
        soft, _, hard = p.nofile.partition(":")
        parts.append(f"ulimit -Hn {q(hard or soft)} && ulimit -Sn {q(soft)} || exit 205")
    argv = []
    if p.uid and not line.as_root:
        argv += ["setpriv", f"--reuid={p.uid}", f"--regid={p.gid}",
                 f"--groups={','.join(map(str, p.groups))}" if p.groups else "--clear-groups"]
    argv += ["env", "-i"] + [f"{k}={v}" for k, v in sorted((env or p.env).items())] + line.argv
    parts.append("exec " + shlex.join(argv))
    return "; ".join(parts)


def _log(p: hp.Plan) -> str:
    return f"{hp.LOG_DIR}/{p.unit}.log"


def _sync(host, p: hp.Plan, line: hp.ExecLine) -> str | None:
    """Run one Exec line to completion; None, or why it failed."""
    q = shlex.quote
    res = host.exec(f"( {command(p, line)} ) >>{q(_log(p))} 2>&1 </dev/null", check=False,
                    timeout=p.timeout)
    if res.returncode != 0 and not line.ignore_failure:
        return f"{shlex.join(line.argv)} exited {res.returncode}; log: {_tail(host, p.unit)}"
    return None


def _prepare_dirs(host, p: hp.Plan) -> None:
    dirs = [(f"/run/{d}", p.runtime_mode) for d in p.runtime_dirs] + \
        [(f"/var/log/{d}", "0755") for d in p.logs_dirs]
    for d, mode in dirs:
        host.exec(["install", "-d", "-m", mode, "-o", str(p.uid), "-g", str(p.gid), d])


def _start(host, p: hp.Plan, report: BootReport) -> None:
    _prepare_dirs(host, p)
    for line in p.pre:
        why = _sync(host, p, line)
        if why:
            report.failed.append(f"{p.unit}: ExecStartPre {why}")
            return
    pid = None
    if p.type == "oneshot":
        for line in p.start:
            why = _sync(host, p, line)
            if why:
                report.failed.append(f"{p.unit}: ExecStart {why}")
                return
    elif p.type == "forking":
        why = _sync(host, p, p.start[0]) or None
        if why:
            report.failed.append(f"{p.unit}: ExecStart {why}")
            return
        if p.pidfile:
            pid = _read_pidfile(host, p.pidfile)
            if pid is None:
                report.failed.append(f"{p.unit}: forked, but PIDFile={p.pidfile} names no live process")
                return
    else:
        pid, why = _detached(host, p)
        if why:
            report.failed.append(f"{p.unit}: {why}")
            return
    for line in p.post:
        why = _sync(host, p, line)
        if why:
            report.failed.append(f"{p.unit}: ExecStartPost {why}")
            return
    bits = [p.type] + ([f"pid {pid}"] if pid else []) + ([f"user {p.user}"] if p.user != "root" else [])
    report.started.append(f"{p.unit} ({', '.join(bits)})" + "".join(f"; {n}" for n in p.notes))
    if pid and p.type != "forking":
        report.pids[p.unit] = pid


def _detached(host, p: hp.Plan) -> tuple[int | None, str | None]:
    env, sock = dict(p.env), None
    if p.type == "notify":
        path = f"/run/lab-boot/notify/{p.unit}"
        local = host.path(path)
        with contextlib.suppress(FileNotFoundError):
            local.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(local))
        os.chmod(local, 0o777)
        env["NOTIFY_SOCKET"] = path
    try:
        q = shlex.quote
        res = host.exec(f"setsid /bin/sh -c {q(command(p, p.start[0], env))} >>{q(_log(p))} 2>&1 "
                        f"</dev/null & echo $!")
        pid = int(res.stdout.split()[-1])
        if sock is not None:
            return pid, _wait_ready(host, p, sock, pid)
        return pid, None
    finally:
        if sock is not None:
            sock.close()
            with contextlib.suppress(OSError):
                host.path(f"/run/lab-boot/notify/{p.unit}").unlink()


def _wait_ready(host, p: hp.Plan, sock: socket.socket, pid: int) -> str | None:
    deadline = time.monotonic() + min(p.timeout, 120)
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        with contextlib.suppress(socket.timeout):
            if b"READY=1" in sock.recv(4096).split(b"\n"):
                return None
        if not _alive(pid):
            return f"Type=notify: exited before READY=1; log: {_tail(host, p.unit)}"
    return f"Type=notify: no READY=1 within {min(p.timeout, 120):g}s; log: {_tail(host, p.unit)}"


def _read_pidfile(host, path: str) -> int | None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            pid = int(hu.local(host, path).read_text().split()[0])
            if _alive(pid):
                return pid
        time.sleep(0.05)
    return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[:1]
    except OSError:
        return False
    return bool(state) and state[0] not in ("Z", "X")


def _tail(host, unit: str) -> str:
    with contextlib.suppress(OSError):
        lines = hu.local(host, f"{hp.LOG_DIR}/{unit}.log").read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:]) or "(empty)"
    return "(no log)"


def cron_jobs(host) -> list[tuple[str, str, str, dict]]:
    """(file, user, command, env) of every @reboot line of /etc/crontab and /etc/cron.d/*."""
    files = [hu.local(host, "/etc/crontab")]
    crond = hu.local(host, "/etc/cron.d")
    if crond.is_dir():
        files += sorted(f for f in crond.iterdir() if _CRON_NAME.match(f.name) and f.is_file())
    jobs = []
    for f in files:
        if not f.is_file():
            continue
        env: dict = {}
        shown = "/etc/crontab" if f.name == "crontab" else f"/etc/cron.d/{f.name}"
        for line in f.read_text(errors="replace").splitlines():
            line = line.strip()
            m = re.match(r"^([A-Za-z_]\w*)\s*=\s*(.*)$", line)
            if m:
                env[m.group(1)] = m.group(2).strip().strip("\"'")
            elif line.startswith("@reboot"):
                fields = line.split(None, 2)
                if len(fields) == 3:
                    jobs.append((shown, fields[1], fields[2], dict(env)))
    return jobs


def _cron(host, enabled: bool, report: BootReport) -> None:
    jobs = cron_jobs(host)
    if jobs and not enabled:
        for f in sorted({j[0] for j in jobs}):
            report.failed.append(f"{f}: @reboot lines, but no cron daemon is enabled in the host "
                                 f"({' or '.join(CRON_UNITS)}): a real boot would not run them")
        return
    if enabled:
        report.started.append(f"{CRON_UNITS[0]} (emulated: its @reboot jobs only, {len(jobs)} found)")
    for shown, user, cmd, env in jobs:
        if "%" in cmd.replace("\\%", ""):
            report.failed.append(f"{shown}: cannot emulate % (stdin) in the @reboot command {cmd!r}")
            continue
        try:
            uid, gid, home, _shell = hp.passwd(host, user)
        except KeyError:
            report.failed.append(f"{shown}: @reboot user {user} does not exist in the host")
            continue
        full = {"SHELL": "/bin/sh", "PATH": "/usr/bin:/bin", "HOME": home, "LOGNAME": user, **env}
        p = hp.Plan("cron", "simple", [], [], [], uid=uid, gid=gid,
                    groups=sorted({gid, *hp.member_of(host, user)}), user=user, env=full,
                    cwd=full["HOME"], cwd_optional=True)
        line = hp.ExecLine([full["SHELL"], "-c", cmd.replace("\\%", "%")])
        res = host.exec(f"setsid /bin/sh -c {shlex.quote(command(p, line))} >>{hp.LOG_DIR}/cron.log "
                        f"2>&1 </dev/null & echo $!")
        report.started.append(f"@reboot {shown} as {user} (pid {res.stdout.split()[-1]}): {cmd}")
