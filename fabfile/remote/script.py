"""Remote work as data: a Script is named phases of shell lines, run by one `sh -c` over one SSH channel.

Phases are separated by marker lines on stdout and stderr, so one remote invocation can carry several phases
and the runner still reports each phase (and the stderr of the one that failed) on its own.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from fabdeploy.errors import FabdeployError
from fabdeploy.remote import markers
from fabdeploy.remote.shell import ARG_MAX_BYTES, q, sh_command

MASK = "********"




@dataclass
class Phase:
    name: str
    lines: list[str]
    sudo: bool = False  # documentation only: the lines carry their own `sudo -n`
    # A failure does not stop the script: later phases see the name in $fabdeploy_failed and decide
    # (the health phase reverts when the restart failed). Never make the last phase keep_going.
    keep_going: bool = False
    # A shell test the script's own shell runs after the phase succeeded: false ends the script there,
    # successfully, what is left of its stdin read and dropped (a folded setup whose gate failed: fold.py).
    stop_unless: str = ""


@dataclass
class Script:
    """Phases to run in one remote `sh -c`; `secrets` are masked in display()."""

    phases: list[Phase]
    secrets: tuple[str, ...] = field(default_factory=tuple)
    # Lines run on the host when a phase fails (not keep_going), before the script exits; $fabdeploy_phase
    # names the phase. A detached script's own audit line and unlock (nobody else may be left to write them).
    on_failure: list[str] = field(default_factory=list)
    # A path prefix on the host: run detached (see detach.py), output in <detach>.out/.err, followed.
    detach: str = ""

    def text(self) -> str:
        # The process group, so that an interrupted run can stop its remote half (tar, pip, manage.py).
        out = ["set -u", "umask 022", "fabdeploy_failed=",
               markers.pgid()]
        if any("FD_ME" in ln for phase in self.phases for ln in phase.lines):
            out.append("FD_ME=$(id -un)")  # (once: remote/shell.py ME_WORD)
        if self.on_failure:
            out += ["fabdeploy_on_failure() {", "(", *self.on_failure, ") || true", "}"]
        for phase in self.phases:
            name = phase.name
            out.append(markers.begin(name))
            out.append("(")
            out.append("set -e")
            out.extend(phase.lines)
            out.append(")")
            out.append("rc=$?")
            out.append(markers.end(name))
            if phase.keep_going:
                out.append(f'[ "$rc" -eq 0 ] || fabdeploy_failed="$fabdeploy_failed {name}"')
            elif self.on_failure:
                out.append(f'[ "$rc" -eq 0 ] || {{ fabdeploy_phase={name}; fabdeploy_on_failure; exit "$rc"; }}')
            else:
                out.append('[ "$rc" -eq 0 ] || exit "$rc"')
            if phase.stop_unless:
                out.append(f"{phase.stop_unless} || {{ cat >/dev/null; exit 0; }}")
        return "\n".join(out) + "\n"

    def command(self) -> str:
        """The one command the SSH channel runs (sshd hands it to the user's shell as one argument): `sh -c`
        with the text, packed when it is large (remote/shell.py sh_command), or the detached wrapper. One
        that is still over Linux's 128 KiB limit of an argument is refused with one line, before it is sent."""
        if self.detach:
            from . import detach
            command = detach.command(self.detach, self.text())
        else:
            command = sh_command(self.text())
        if len(command.encode()) > ARG_MAX_BYTES:
            raise FabdeployError(f"the remote script of {', '.join(self.names)} is {len(command.encode())} bytes "
                                 f"even packed: over the {ARG_MAX_BYTES + 1} bytes Linux allows one argument")
        return command

    def display(self) -> str:
        return mask(self.text(), self.secrets)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.phases]


# "scheme://userinfo@": a URL's user:password (or token as user name) is masked wherever it shows, also when it is
# not in deploy.toml (an old value read from a host, a tool's error output). ssh/git URLs keep a plain user name.
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^/\s@'\"]+)@")


def _userinfo(m: re.Match) -> str:
    scheme, info = m.group(1), m.group(2)
    if ":" not in info and scheme.lower().rstrip(":/").split("+")[-1] in ("ssh", "git"):
        return m.group(0)
    return f"{scheme}{MASK}@"


def mask(text: str, secrets=()) -> str:
    """`text` with every secret value replaced by MASK (also as written in a uWSGI ini, with %% for %,
    shell-quoted, and as it reads inside a larger single-quoted word: a file's content written with printf)
    and every URL's userinfo masked."""
    inside = lambda v: v.replace("'", "'\"'\"'")  # noqa: E731 (as it reads inside a larger single-quoted word)
    for value in sorted((s for s in secrets if s), key=len, reverse=True):
        for form in (q(value), inside(value.replace("%", "%%")), inside(value), value.replace("%", "%%"), value):
            text = text.replace(form, MASK)
    return _USERINFO.sub(_userinfo, text)








