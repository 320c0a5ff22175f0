"""A provisioning step as data: a check (shell lines; status 0 = already right; they may set $what, the
change to make) and the apply lines. step_lines() frames one step: it reports `ok`, `would change: <what>`
(plan) or `changed: <what>` as marker lines of kind `prov` (`<step> <result>`); a failing apply stops the script
with one line naming the step and the last line of its output."""
from __future__ import annotations

from dataclasses import dataclass, field

from fabdeploy.remote.markers import fail_expanded, line, prefix

KIND = "prov"


@dataclass(frozen=True)
class Step:
    name: str
    check: list[str]  # status 0: nothing to do; may set $what
    apply: list[str] = field(default_factory=list)
    what: str = ""  # the default $what (double-quoted: may use expansions of the check)
    skip: str = ""  # set: a step provision does not take yet, reported as `skipped (<skip>)`


def step_lines(step: Step, plan: bool) -> list[str]:
    """One step of the provisioning script (run as root, `set -e` around it)."""
    name = step.name
    if step.skip:
        return [f"# step {name}", line(KIND, f"{name} skipped ({step.skip})")]
    out = [f"# step {name}", f'what="{step.what}"',
           "fabdeploy_check() {", *(["  " + ln for ln in step.check] or ["  true"]), "}"]
    if plan or not step.apply:
        act = [line(KIND, f"{name} would change: $what")]
    else:
        log = f"/tmp/.fabdeploy-provision.{name}.$$"
        act = ["if (", "  set -e", *["  " + ln for ln in step.apply], f") >{log} 2>&1; then",
               f"  rm -f {log}; " + line(KIND, f"{name} changed: $what"),
               "else",
               f'  err=$(grep -v "^[[:space:]]*$" {log} | tail -n 1); rm -f {log}',
               "  " + fail_expanded(f"step {name} failed ($what): $err"),
               "fi"]
    return [*out, "if fabdeploy_check; then " + line(KIND, f"{name} ok"), "else", *act, "fi"]


def parse(stdout: str) -> list[tuple[str, str]]:
    """(step, result) of every step line a provisioning script printed, in order."""
    start = prefix(KIND)
    out = []
    for ln in stdout.splitlines():
        if ln.startswith(start):
            name, _, result = ln[len(start):].partition(" ")
            out.append((name, result))
    return out


def not_yet(name: str, why: str) -> Step:
    """A step provision will take later: reported as `skipped (not yet: why)`, never changes anything."""
    return Step(name, [], skip=f"not yet: {why}")
