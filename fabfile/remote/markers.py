"""The marker protocol: the one place that writes the `@@fabdeploy <kind> ...` lines a remote script
prints (note, warn, error, fact) and the one that reads facts back."""
from __future__ import annotations

from fabdeploy.remote.shell import q


def note(text: str) -> str:
    """A line whose text the deploying side shows on the phase's summary line."""
    return f'echo "{MARK} note {text}"'



def fail(message: str, code: int = 1) -> str:
    """Stop the phase with a message the deploying side shows as the whole error (no stderr tail)."""
    return f"{{ echo {q(MARK + ' error ' + message)} >&2; exit {code}; }}"


MARK = "@@fabdeploy"



def fail_expanded(message: str, code: int = 1) -> str:
    """Stop with a message the deploying side shows as the error; the message is double-quoted, so it may
    use shell expansions ($holder, $T...): never put untrusted text in it."""
    return f'{{ echo "{MARK} error {message}" >&2; exit {code}; }}'



def fact(key: str, shell_expr: str) -> str:
    """A line that reports `key=<value of shell_expr>` for the deploying side to parse."""
    return f'echo "{MARK} fact {key}={shell_expr}"'



def parse_facts(stdout: str) -> dict[str, str]:
    facts = {}
    prefix = f"{MARK} fact "
    for line in stdout.splitlines():
        if line.startswith(prefix):
            key, _, value = line[len(prefix):].partition("=")
            facts[key] = value
    return facts
