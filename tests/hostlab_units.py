"""systemd unit files read from a lab host's own /etc, for the boot emulator (hostlab_boot).

Load a unit as systemd would (its file from /etc/systemd/system then
/lib/systemd/system, template instances, drop-ins, masks), find the targets the
boot reaches and the units enabled in them, and evaluate Condition*=.
hostlab_plan turns a loaded service into the commands to run.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system")

CONDITIONS = {"PathExists", "PathExistsGlob", "PathIsDirectory", "PathIsSymbolicLink",
              "DirectoryNotEmpty", "FileNotEmpty", "FileIsExecutable", "Virtualization", "Capability"}


class Refused(Exception):
    """The emulator cannot do what this unit asks; the message is one line."""


@dataclass
class Unit:
    name: str              # e.g. "getty@tty1.service"
    path: str              # host path of the unit file
    sections: dict         # section -> key -> [values] (empty assignments reset)

    def get(self, section: str, key: str) -> list[str]:
        return self.sections.get(section, {}).get(key, [])

    def last(self, section: str, key: str, default: str = "") -> str:
        vals = self.get(section, key)
        return vals[-1] if vals else default

    def words(self, section: str, key: str) -> list[str]:
        return [w for v in self.get(section, key) for w in v.split()]


# -- files -------------------------------------------------------------------


def parse(text: str) -> dict:
    """Sections of a unit file: {section: {key: [values]}}; `Key=` (empty) resets the list."""
    sections: dict = {}
    current = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            continue
        key, value = (x.strip() for x in line.split("=", 1))
        if value == "":
            current[key] = []
        else:
            current.setdefault(key, []).append(value)
    return sections


def local(host, path: str) -> Path:
    """The file on this machine that the host sees at path (its private dirs, else the machine's)."""
    p = posixpath.normpath(path)
    try:
        return host.path(p)
    except Exception:  # not private: the machine's own file (/lib, /usr, ...)
        return Path(p)


def _follow(host, path: str) -> str | None:
    """Host path after following symlinks (targets read in the host's view); None if dangling."""
    for _ in range(16):
        lp = local(host, path)
        if lp.is_symlink():
            target = os.readlink(lp)
            path = target if target.startswith("/") else posixpath.join(posixpath.dirname(path), target)
            continue
        return path if lp.exists() else None
    return None


def load(host, name: str) -> Unit | str | None:
    """The unit `name` as the host's systemd would load it; "masked", or None if not found."""
    base, inst = name, None
    m = re.match(r"^([^@]+)@([^.]*)(\.\w+)$", name)
    candidates = [name]
    if m and m.group(2):
        inst = m.group(2)
        candidates.append(f"{m.group(1)}@{m.group(3)}")
    found = None
    for cand in candidates:
        for d in UNIT_DIRS:
            p = f"{d}/{cand}"
            if local(host, p).is_symlink() or local(host, p).exists():
                real = _follow(host, p)
                if real == "/dev/null" or (real and local(host, real).stat().st_size == 0):
                    return "masked"
                if real:
                    found, base = real, cand
                    break
        if found:
            break
    if not found:
        return None
    text = local(host, found).read_text(errors="replace")
    dropins: dict[str, str] = {}
    for d in reversed(UNIT_DIRS):  # /etc last: it overrides a drop-in of the same name
        for n in {name, base}:
            dd = local(host, f"{d}/{n}.d")
            if dd.is_dir():
                for f in dd.iterdir():
                    if f.name.endswith(".conf"):
                        dropins[f.name] = f.read_text(errors="replace")
    for fname in sorted(dropins):
        text += "\n" + dropins[fname]
    unit = Unit(name, found, parse(text))
    unit.instance = inst  # type: ignore[attr-defined]
    return unit


def wants_of(host, target: str, etc_only: bool) -> list[str]:
    """Units linked in <dir>/<target>.wants and .requires (the host's /etc only, or /lib too)."""
    out = []
    for d in UNIT_DIRS[:1] if etc_only else UNIT_DIRS:
        for suffix in (".wants", ".requires"):
            dd = local(host, f"{d}/{target}{suffix}")
            if dd.is_dir():
                out += sorted(x.name for x in dd.iterdir())
    return out


def boot_targets(host) -> list[str]:
    """Targets a boot reaches from default.target (their Wants/Requires and .wants links)."""
    default = _follow(host, "/etc/systemd/system/default.target") \
        or _follow(host, "/lib/systemd/system/default.target")
    start = posixpath.basename(default) if default else "multi-user.target"
    seen: list[str] = []
    queue = ["sysinit.target", "basic.target", start]  # sysinit first, as its units are
    while queue:
        t = queue.pop(0)
        if t in seen:
            continue
        seen.append(t)
        unit = load(host, t)
        deps = []
        if isinstance(unit, Unit):
            deps += unit.words("Unit", "Requires") + unit.words("Unit", "Wants")
        deps += wants_of(host, t, etc_only=False)
        queue += [d for d in deps if d.endswith(".target")]
    return seen


# -- conditions ----------------------------------------------------------------


def check_conditions(host, unit: Unit) -> str | None:
    """None if the unit's Condition*= hold; else why not (one line).  Raises Refused on an unknown one."""
    triggers, failed_trigger = 0, None
    for key, values in unit.sections.get("Unit", {}).items():
        kind = key[len("Condition"):] if key.startswith("Condition") else \
            key[len("Assert"):] if key.startswith("Assert") else None
        if kind is None:
            continue
        if kind not in CONDITIONS:
            raise Refused(f"{unit.name}: cannot evaluate {key}= (emulated: "
                          f"{', '.join('Condition' + c for c in sorted(CONDITIONS))})")
        for value in values:
            trigger = value.startswith("|")
            v = value.lstrip("|")
            negate = v.startswith("!")
            ok = _condition(host, kind, v.lstrip("!")) != negate
            if trigger:
                triggers += 1
                if ok:
                    triggers = -10**6
                else:
                    failed_trigger = f"{key}={value} is false"
            elif not ok:
                if key.startswith("Assert"):
                    raise Refused(f"{unit.name}: {key}={value} failed")
                return f"{key}={value} is false"
    if triggers > 0:
        return failed_trigger
    return None


def _condition(host, kind: str, value: str) -> bool:
    if kind == "Virtualization":  # a lab host is a container (namespaces), never a VM
        return value in ("yes", "true", "1", "container")
    if kind == "Capability":  # the emulator runs units as root with every capability
        return True
    p = local(host, value)
    if kind == "PathExists":
        return p.exists() or p.is_symlink()
    if kind == "PathExistsGlob":
        return any(p.parent.glob(p.name))
    if kind == "PathIsDirectory":
        return p.is_dir()
    if kind == "PathIsSymbolicLink":
        return p.is_symlink()
    if kind == "DirectoryNotEmpty":
        return p.is_dir() and any(p.iterdir())
    if kind == "FileNotEmpty":
        return p.is_file() and p.stat().st_size > 0
    return p.is_file() and os.access(p, os.X_OK)  # FileIsExecutable
