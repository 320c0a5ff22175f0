"""A lab host's service unit as the commands the boot emulator (hostlab_boot) runs.

plan() turns a loaded unit (hostlab_units.Unit) into a Plan: its Exec lines
(prefixes, specifiers, $VAR and ${VAR}), user and group from the host's own
/etc/passwd and /etc/group, environment, working directory, umask, runtime
directories -- or refuses it (hostlab_units.Refused) with one line naming the
unit and the directive it cannot emulate.  Pure: it only reads the host's files.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field

from hostlab_units import Refused, Unit, local

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOG_DIR = "/var/log/lab-boot"

# [Service] keys the emulator carries out.
SUPPORTED = {"Type", "ExecStartPre", "ExecStart", "ExecStartPost", "User", "Group", "Environment",
             "EnvironmentFile", "WorkingDirectory", "PIDFile", "UMask", "RuntimeDirectory",
             "RuntimeDirectoryMode", "RuntimeDirectoryPreserve", "LogsDirectory", "TimeoutStartSec",
             "TimeoutSec", "StandardInput", "StandardOutput", "StandardError", "RemainAfterExit",
             "SyslogIdentifier", "GuessMainPID", "NotifyAccess", "LimitNOFILE", "SupplementaryGroups"}
# Keys that change nothing about starting a unit at boot (stop, reload, restart policy).
BOOT_IRRELEVANT = {"ExecStop", "ExecStopPost", "ExecReload", "KillMode", "KillSignal", "SendSIGKILL",
                   "SendSIGHUP", "FinalKillSignal", "RestartKillSignal", "TimeoutStopSec",
                   "TimeoutAbortSec", "Restart", "RestartSec", "RestartPreventExitStatus",
                   "RestartForceExitStatus", "SuccessExitStatus", "WatchdogSec", "OOMPolicy",
                   "StartLimitBurst", "StartLimitIntervalSec", "StartLimitInterval"}
# Confinement and resource keys: the emulated process runs without them (listed in the report).
NOT_APPLIED_PREFIXES = ("Protect", "Private", "Restrict", "SystemCall", "Limit", "Memory", "CPU", "IO",
                        "Tasks", "IPAddress", "ReadWrite", "ReadOnly", "Inaccessible", "Device")
NOT_APPLIED = {"NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities", "LockPersonality",
               "KeyringMode", "RemoveIPC", "Nice", "OOMScoreAdjust", "Slice", "Delegate",
               "UMaskDirectories", "SecureBits"}
EMULATED_TYPES = {"simple", "exec", "notify", "forking", "oneshot", "idle"}


@dataclass
class ExecLine:
    argv: list[str]
    ignore_failure: bool = False   # "-" prefix
    as_root: bool = False          # "+" prefix
    text: str = ""


@dataclass
class Plan:
    unit: str
    type: str
    pre: list[ExecLine]
    start: list[ExecLine]
    post: list[ExecLine]
    uid: int | None = None
    gid: int | None = None
    groups: list[int] = field(default_factory=list)  # supplementary: the user's, plus SupplementaryGroups=
    user: str = "root"
    env: dict = field(default_factory=dict)
    cwd: str = "/"
    cwd_optional: bool = False
    umask: str = "0022"
    nofile: str | None = None
    pidfile: str | None = None
    runtime_dirs: list[str] = field(default_factory=list)
    runtime_mode: str = "0755"
    logs_dirs: list[str] = field(default_factory=list)
    timeout: float = 90.0
    notes: list[str] = field(default_factory=list)


# -- plans ---------------------------------------------------------------------


def passwd(host, user: str) -> tuple[int, int, str, str]:
    """(uid, gid, home, shell) of user in the host's own /etc/passwd."""
    for line in local(host, "/etc/passwd").read_text().splitlines():
        f = line.split(":")
        if len(f) >= 7 and (f[0] == user or (user.isdigit() and f[2] == user)):
            return int(f[2]), int(f[3]), f[5], f[6]
    raise KeyError(user)


def group_id(host, group: str) -> int:
    for line in local(host, "/etc/group").read_text().splitlines():
        f = line.split(":")
        if len(f) >= 3 and (f[0] == group or (group.isdigit() and f[2] == group)):
            return int(f[2])
    raise KeyError(group)


def member_of(host, user: str) -> list[int]:
    """Groups listing user as a member in the host's /etc/group (what initgroups adds)."""
    out = []
    for line in local(host, "/etc/group").read_text().splitlines():
        f = line.split(":")
        if len(f) >= 4 and user in f[3].split(","):
            out.append(int(f[2]))
    return out


def specifiers(unit: Unit, text: str, home: str = "/root", user: str = "root") -> str:
    """Expand %n, %i, %t, ... as systemd does in a system unit."""
    inst = getattr(unit, "instance", None) or ""
    prefix = unit.name.split("@")[0].rsplit(".", 1)[0]
    table = {"n": unit.name, "N": unit.name.rsplit(".", 1)[0], "p": prefix, "P": prefix, "i": inst,
             "I": inst, "j": prefix.rsplit("-", 1)[-1], "t": "/run", "T": "/tmp", "V": "/var/tmp",
             "S": "/var/lib", "C": "/var/cache", "L": "/var/log", "E": "/etc", "h": home, "u": user,
             "%": "%"}

    def sub(m):
        if m.group(1) not in table:
            raise Refused(f"{unit.name}: cannot expand specifier %{m.group(1)} in {text!r}")
        return table[m.group(1)]
    return re.sub(r"%(.)", sub, text)


def env_file(host, unit: Unit, spec: str) -> dict:
    optional = spec.startswith("-")
    path = spec.lstrip("-")
    lp = local(host, path)
    if not lp.is_file():
        if optional:
            return {}
        raise Refused(f"{unit.name}: EnvironmentFile={path} does not exist in the host")
    out = {}
    for line in lp.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        k, v = line.split("=", 1)
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        out[k.strip()] = v
    return out


def exec_line(unit: Unit, value: str, env: dict, home: str, user: str) -> ExecLine:
    """One Exec*= value: prefixes, specifiers, $VAR / ${VAR}, quoting."""
    line = ExecLine([], text=value)
    rest = value
    expand = True
    while rest and rest[0] in "-+!:@|":
        c = rest[0]
        if c == "-":
            line.ignore_failure = True
        elif c == "+":
            line.as_root = True
        elif c == ":":
            expand = False
        elif c in "@|":
            raise Refused(f"{unit.name}: cannot emulate the {c!r} prefix in {value!r}")
        rest = rest[1:]  # "!" / "!!": no sandboxing is applied anyway
    try:
        words = shlex.split(specifiers(unit, rest, home, user))
    except ValueError as e:
        raise Refused(f"{unit.name}: cannot parse {value!r}: {e}") from None
    for w in words:
        if expand and re.fullmatch(r"\$\w+", w):
            line.argv += env.get(w[1:], "").split()
        elif expand:
            line.argv.append(re.sub(r"\$\$|\$\{(\w+)\}",
                                    lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), ""), w))
        else:
            line.argv.append(w)
    if not line.argv:
        raise Refused(f"{unit.name}: empty command in {value!r}")
    if not line.argv[0].startswith("/"):
        for d in SYSTEM_PATH.split(":"):
            if os.access(f"{d}/{line.argv[0]}", os.X_OK):
                line.argv[0] = f"{d}/{line.argv[0]}"
                break
        else:
            raise Refused(f"{unit.name}: {line.argv[0]} not found in {SYSTEM_PATH}")
    return line


def plan(host, unit: Unit) -> Plan:
    """What starting this service means; Refused if any of it cannot be emulated."""
    svc = unit.sections.get("Service", {})
    notes = []
    for key in svc:
        if key in SUPPORTED or key in BOOT_IRRELEVANT:
            continue
        if key in NOT_APPLIED or key.startswith(NOT_APPLIED_PREFIXES):
            notes.append(key)
            continue
        raise Refused(f"{unit.name}: cannot emulate {key}={svc[key][-1]}")
    for section in unit.sections:
        if section not in ("Unit", "Service", "Install"):
            raise Refused(f"{unit.name}: cannot emulate a [{section}] section")
    typ = unit.last("Service", "Type", "simple" if unit.get("Service", "ExecStart") else "oneshot")
    if typ not in EMULATED_TYPES:
        raise Refused(f"{unit.name}: cannot emulate Type={typ} (emulated: {', '.join(sorted(EMULATED_TYPES))})")
    user = specifiers(unit, unit.last("Service", "User", "root"))
    try:
        uid, gid, home, shell = passwd(host, user)
    except KeyError:
        raise Refused(f"{unit.name}: User={user} does not exist in the host's /etc/passwd") from None
    group = unit.last("Service", "Group")
    if group:
        try:
            gid = group_id(host, specifiers(unit, group))
        except KeyError:
            raise Refused(f"{unit.name}: Group={group} does not exist in the host's /etc/group") from None
    groups = [gid] + member_of(host, user)
    for g in unit.words("Service", "SupplementaryGroups"):
        try:
            groups.append(group_id(host, specifiers(unit, g)))
        except KeyError:
            raise Refused(f"{unit.name}: SupplementaryGroups={g} does not exist in the host's /etc/group") from None
    env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
    if unit.get("Service", "User"):
        env.update(HOME=home, USER=user, LOGNAME=user, SHELL=shell)
    for value in unit.get("Service", "Environment"):
        for word in shlex.split(specifiers(unit, value, home, user)):
            if "=" in word:
                k, v = word.split("=", 1)
                env[k] = v
    for spec in unit.get("Service", "EnvironmentFile"):
        env.update(env_file(host, unit, specifiers(unit, spec, home, user)))
    lines = {k: [exec_line(unit, v, env, home, user) for v in unit.get("Service", k)]
             for k in ("ExecStartPre", "ExecStart", "ExecStartPost")}
    if typ != "oneshot" and len(lines["ExecStart"]) != 1:
        raise Refused(f"{unit.name}: Type={typ} needs exactly one ExecStart= (has {len(lines['ExecStart'])})")
    for key in ("StandardOutput", "StandardError"):
        value = unit.last("Service", key, "journal")
        if value.split("+")[0] not in ("journal", "inherit", "syslog", "kmsg", "null", "tty"):
            raise Refused(f"{unit.name}: cannot emulate {key}={value} (output goes to {LOG_DIR}/)")
    if unit.last("Service", "StandardInput", "null") != "null":
        raise Refused(f"{unit.name}: cannot emulate StandardInput={unit.last('Service', 'StandardInput')}")
    cwd = specifiers(unit, unit.last("Service", "WorkingDirectory", "/"), home, user)
    p = Plan(unit.name, typ, lines["ExecStartPre"], lines["ExecStart"], lines["ExecStartPost"],
             uid=uid, gid=gid, groups=sorted(set(groups)), user=user, env=env, cwd=home if cwd.lstrip("-") == "~" else cwd.lstrip("-"),
             cwd_optional=cwd.startswith("-"), umask=unit.last("Service", "UMask", "0022"),
             nofile=unit.last("Service", "LimitNOFILE") or None,
             pidfile=specifiers(unit, unit.last("Service", "PIDFile")) or None,
             runtime_dirs=[specifiers(unit, w) for w in unit.words("Service", "RuntimeDirectory")],
             runtime_mode=unit.last("Service", "RuntimeDirectoryMode", "0755"),
             logs_dirs=[specifiers(unit, w) for w in unit.words("Service", "LogsDirectory")],
             timeout=_seconds(unit.last("Service", "TimeoutStartSec", unit.last("Service", "TimeoutSec", "90"))),
             notes=[f"not applied: {', '.join(notes)}"] if notes else [])
    return p


def _seconds(value: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m)?\s*", value)
    if value.strip() == "infinity" or not m:
        return 90.0
    n = float(m.group(1))
    return {"ms": n / 1000, "min": n * 60, "m": n * 60}.get(m.group(2) or "s", n)
