"""Setup and prepare in one remote invocation (a code-only redeploy: one round trip less).

The prepare script depends on a few of setup's facts: the python version (the venv's hash), whether that venv
is complete (no wheels in the archive, nothing to build), the nginx layout and pid file (the config phase),
and whether the host has a SECRET_KEY that needs none sent (the code phase). When fab remembers them from the
host's last deploy (local/facts_cache.py), it builds the prepare script from the remembered facts and runs it
right after setup, in the same script, the archive on stdin, behind a gate: the end of the setup phase
compares what the host just reported with what was assumed. The gate passes: the prepare phases run as in
their own invocation. It fails (or setup ended early: "already live"): the script stops cleanly (its stdin
read and dropped) and fab runs the separate prepare invocation with the real facts.
"""
from __future__ import annotations

from fabdeploy.hosts.layout import VENV_COMPLETE
from fabdeploy.model import Facts
from fabdeploy.remote.markers import fact
from fabdeploy.remote.script import Phase, Script
from fabdeploy.remote.shell import q

FACT = "fold_missed"  # the gate's fact: what differed ("" = nothing; absent = the gate never ran)


def gate(assumed: Facts, venv_dir: str, flag: str, key_fp: str = "") -> list[str]:
    """Lines for the end of the setup phase (its variables in scope): when the facts the prepare script was
    built with are the host's, the venv it names is complete and the host has a SECRET_KEY (`key_fp`: that
    one's fingerprint), create `flag`; report what differed as the fold_missed fact."""
    checks = [
        (f'[ "$python_version" = {q(assumed.python_version)} ]', "python_version"),
        (f'[ "$nginx_layout" = {q(assumed.nginx_layout)} ]', "nginx_layout"),
        (f'[ "$nginx_pid" = {q(assumed.nginx_pid)} ]', "nginx_pid"),
        (f"[ -f {q(venv_dir + '/' + VENV_COMPLETE)} ]", "venv"),
        (f'[ "$secret_key_fp" = {q(key_fp)} ]' if key_fp else '[ -n "$secret_key_fp" ]', "secret_key"),
    ]
    return ["fold_missed=",
            *[f'{test} || fold_missed="$fold_missed {name}"' for test, name in checks],
            fact(FACT, "${fold_missed# }"),
            f'if [ -z "$fold_missed" ]; then : > {q(flag)}; fi']


def joined(gate_lines: list[str]) -> str:
    """How --verbose tells that the setup and prepare invocations it listed run as one."""
    return ("----- setup and prepare run as one invocation: the setup phase reads no stdin and ends with the gate "
            "below; prepare runs only when it passes\n" + "\n".join(gate_lines) + "\n----- end of the gate")


def folded(setup: Script, prepare: Script, gate_lines: list[str], flag: str) -> Script:
    """One script: setup's phases (the last, setup itself, never reading stdin and ending with the gate),
    then prepare's, run only when the gate created `flag` (removed again)."""
    *before, last = setup.phases
    last = Phase(last.name, ["exec </dev/null", *last.lines, *gate_lines], last.sudo, last.keep_going,
                 stop_unless=f"rm {q(flag)} 2>/dev/null")
    secrets = tuple(dict.fromkeys(setup.secrets + prepare.secrets))
    return Script([*before, last, *prepare.phases], secrets)
