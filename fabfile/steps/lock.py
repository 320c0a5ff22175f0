"""The deploy lock and the audit log, as shell lines that ride inside other phases (no extra round trip).

Lock: an atomic ``mkdir <deploy_to>/.fabdeploy-lock`` holding who/where/pid/when and a random token;
only the holder's token releases it. Its age is the directory's mtime: every remote invocation of the
holder touches it at its start and a background loop keeps touching it while that invocation runs
(keep_alive), so only a lock whose run is gone (or idle between invocations for longer than ``lock.ttl``)
gets older than ``lock.ttl``. Such a lock is reported as stale, never ignored; ``fab unlock`` breaks it.
Audit: one JSON line per deploy/rollback appended to ``shared/log/audit.jsonl``; a line that cannot be
written is a warning, never a failure (the release is live by then).
"""
from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass

from fabdeploy.config import Config
from fabdeploy.hosts.layout import Layout
from fabdeploy.remote.detach import ERR_VAR
from fabdeploy.remote import markers
from fabdeploy.remote.markers import fail_expanded
from fabdeploy.remote.script import Phase, mask
from fabdeploy.remote.shell import q, read_word


@dataclass(frozen=True)
class LockOwner:
    action: str
    who: str
    token: str
    pid: int
    since: str

    @classmethod
    def new(cls, action: str, who: str) -> "LockOwner":
        return cls(action, who, secrets.token_hex(8), os.getpid(),
                   time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def describe(self) -> str:
        return f"{self.who} (pid {self.pid}, {self.action}, since {self.since})"


def lock_dir(cfg: Config) -> str:
    return f"{Layout(cfg.paths.deploy_to).deploy_to}/.fabdeploy-lock"


def audit_file(cfg: Config) -> str:
    return f"{Layout(cfg.paths.deploy_to).log}/audit.jsonl"


_LAST_ERR_LINE = "\"$(printf '%s' \"$err\" | tail -n 1)\""  # the last line of $err, as one shell word

LOCKED = 75  # exit status of a run refused by the lock (EX_TEMPFAIL)


def capped_wait(cfg: Config, wait: int, warn) -> int:
    """A lock wait of at most lock.ttl seconds (by then the holder's lock is stale and only `fab unlock` frees
    it); a longer one is cut, with one `warn` line. Invocations that wait add it to their timeout, so the
    deploying side never gives up on a remote loop that still waits (and would take the lock later)."""
    ttl = cfg.lock.ttl
    if wait > ttl:
        warn(f"a lock wait of {wait}s is longer than lock.ttl = {ttl}s: waiting {ttl}s at most")
        return ttl
    return wait


def acquire(cfg: Config, owner: LockOwner, wait: int = 0) -> list[str]:
    L = lock_dir(cfg)
    ttl = cfg.lock.ttl
    return [
        "waited=0; again=",
        f"while ! err=$(mkdir {q(L)} 2>&1); do",
        # mkdir failed but there is no lock: either it was just released (try once more) or mkdir cannot work
        f'  if [ ! -d {q(L)} ]; then [ -z "$again" ] || '
        + fail_expanded("cannot take the deploy lock: $err") + "; again=1; continue; fi",
        f"  if [ \"$waited\" -ge {int(wait)} ]; then",
        f"    holder=$(cat {q(L + '/info')} 2>/dev/null || echo 'an unknown holder')",
        f"    age=$(( $(date +%s) - $(stat -c %Y {q(L)} 2>/dev/null || date +%s) ))",
        f"    if [ \"$age\" -gt {ttl} ]; then",
        "      " + fail_expanded(f"deploy lock is STALE: held by $holder for ${{age}}s (older than lock.ttl = {ttl}s); "
                             "if that run is gone, break it with: fab unlock", LOCKED),
        "    fi",
        "    " + fail_expanded("deploy lock held by $holder for ${age}s; retry later or pass --wait SECONDS", LOCKED),
        "  fi",
        # a line per second: once the deploying side is gone the write kills this loop (SIGPIPE) before the
        # next mkdir, so a waiter never takes the lock for a run that no longer exists
        "  sleep 1; waited=$((waited + 1)); " + markers.line("waiting", "$waited"),
        "done",
        # a lock without its owner files (a full disk) would block every later run: remove it and say why
        f"if ! err=$({{ printf '%s\\n' {q(owner.describe())} > {q(L + '/info')} && "
        f"printf '%s\\n' {q(owner.token)} > {q(L + '/token')} && date +%s > {q(L + '/started')}; }} 2>&1); then",
        f"  rm -rf {q(L)}",
        "  " + markers.fail(f"cannot write the deploy lock files in {L} (disk full?): ", then=_LAST_ERR_LINE),
        "fi",
        *keep_alive(cfg, owner),
    ]


def keep_alive(cfg: Config, owner: LockOwner) -> list[str]:
    """Lines for the start of each remote invocation of the lock's holder: refresh the lock now, and every
    lock.ttl/4 seconds while this invocation's shell lives (a background loop that stops with the shell, or
    as soon as the lock is not ours), so a long phase (pip, a slow hook) never makes it look stale."""
    L = lock_dir(cfg)
    every = max(1, cfg.lock.ttl // 4)
    return [
        f"if {held(cfg, owner)}; then touch -c {q(L)}; fi",
        f"(n={every}; while kill -0 $$ 2>/dev/null; do if [ \"$n\" -le 0 ]; then {held(cfg, owner)} || exit 0; "
        f"touch -c {q(L)} || true; n={every}; fi; n=$((n - 1)); sleep 1; done) </dev/null >/dev/null 2>&1 &",
    ]


def kept_alive(phase: Phase, cfg: Config, owner: LockOwner) -> Phase:
    """The phase, starting with keep_alive (for the first phase of a holder's later invocations)."""
    return Phase(phase.name, [*keep_alive(cfg, owner), *phase.lines], phase.sudo, phase.keep_going)


def held(cfg: Config, owner: LockOwner) -> str:
    """A shell condition: this run holds the deploy lock."""
    # (the token read with `read`: no process; a compound command, so `! held` and `held || x` read as before)
    return f"{{ {read_word('fd_tok', lock_dir(cfg) + '/token')}; [ \"$fd_tok\" = {q(owner.token)} ]; }}"


def release(cfg: Config, owner: LockOwner) -> list[str]:
    return [f"if {held(cfg, owner)}; then rm -rf {q(lock_dir(cfg))}; fi"]


def audit(cfg: Config, owner: LockOwner, record: dict, dynamic: dict[str, str] | None = None) -> list[str]:
    """Append one JSON line: the record, remote time, the duration since the lock was taken, and
    `dynamic` fields whose values are shell words known only on the host (plain release ids)."""
    L = lock_dir(cfg)
    secrets = cfg.secret_values()  # the audit log never gets a secret (an error message may quote one)
    fields = {k: mask(v, secrets) if isinstance(v, str) else v
              for k, v in {"action": owner.action, "who": owner.who, **record}.items()}
    head = json.dumps(fields, sort_keys=True)[:-1]  # an argument of printf, never part of its format
    dynamic = dynamic or {}
    fmt = "%s" + "".join(f', "{k}": "%s"' for k in dynamic) + ', "time": "%s", "duration": %s}\\n'
    args = q(head) + " " + "".join(f"{v} " for v in dynamic.values())
    A = audit_file(cfg)
    log = q(Layout(cfg.paths.deploy_to).log)
    # (one `date` for the time and the seconds, the lock's start read with `read`, mkdir only when missing)
    return [
        f"if ! err=$({{ {{ [ -d {log} ] || mkdir -p {log}; }} && {{ {read_word('start', L + '/started')}; }} && "
        "fd_now=$(date -u '+%Y-%m-%dT%H:%M:%SZ %s') && "
        'case $start in ""|*[!0-9]*) start=${fd_now#* };; esac && '
        f"(umask 027; printf {q(fmt)} {args}\"${{fd_now% *}}\" \"$(( ${{fd_now#* }} - start ))\" "
        f">> {q(A)}); }} 2>&1); then",
        "  " + markers.literal("warn", f"could not append the audit line to {A}: ", _LAST_ERR_LINE),
        "fi",
    ]


def finish(cfg: Config, owner: LockOwner, record: dict, dynamic: dict[str, str] | None = None) -> Phase:
    """The last phase of a locked run: audit line, then release the lock."""
    return Phase("finish", [*audit(cfg, owner, record, dynamic), *release(cfg, owner)])


def failed_finish(cfg: Config, owner: LockOwner, record: dict) -> Phase:
    """After a failure: the audit line (best effort: the layout may not exist), then release the lock; a
    run that never held the lock (refused by another's) writes nothing."""
    return Phase("finish", [f"if {held(cfg, owner)}; then", "(", *audit(cfg, owner, record),
                            ") 2>/dev/null || true", *release(cfg, owner), "fi"])


def failed_here(cfg: Config, owner: LockOwner, record: dict) -> list[str]:
    """Script.on_failure lines of a detached run: while it holds the lock, a `failed` audit line whose error
    is the failed phase and its last error marker (read from the run's stderr file, JSON-escaped), then
    release the lock. The deploying side may be gone; when it is not, its own cleanup finds the lock
    released and writes nothing more."""
    last_error = (f"sed -n 's/^{markers.prefix('error')}//p' \"${{{ERR_VAR}:-/dev/null}}\" 2>/dev/null | tail -n 1 "
                  r"""| tr -d '\000-\037' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'""")
    return [f"if {held(cfg, owner)}; then",
            f'fabdeploy_error="$fabdeploy_phase failed: $({last_error})"',
            "(", *audit(cfg, owner, record, {"error": '"$fabdeploy_error"'}), ") 2>/dev/null || true",
            *release(cfg, owner), "fi"]


def unlock(cfg: Config, force: bool) -> Phase:
    """Break the lock: always when older than lock.ttl, younger only with force."""
    L = lock_dir(cfg)
    ttl = cfg.lock.ttl
    return Phase("unlock", [
        f"if [ ! -d {q(L)} ]; then {markers.literal('note', 'not locked')}; exit 0; fi",
        f"holder=$(cat {q(L + '/info')} 2>/dev/null || echo 'an unknown holder')",
        f"age=$(( $(date +%s) - $(stat -c %Y {q(L)} 2>/dev/null || date +%s) ))",
        f"if [ \"$age\" -le {ttl} ] && [ {1 if force else 0} = 0 ]; then",
        "  " + fail_expanded(f"deploy lock held by $holder for ${{age}}s is younger than lock.ttl = {ttl}s; "
                         "if that run is really gone: fab unlock --force"),
        "fi",
        f"rm -rf {q(L)}",
        markers.note("removed the lock held by $holder for ${age}s"),
    ])
