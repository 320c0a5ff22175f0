"""The marker protocol, writing side: the one place that builds the shell (and the Python snippet) printing the
`@@fabdeploy <kind> <text>` lines of a remote script. Reading them is the runner's job (remote/runner.py).

Kinds: begin/end (a phase's frame), pgid, note (shown on the phase's summary line), warn, error (the phase's
whole error message, on stderr), fact (key=value for the deploying side), json (one JSON document), waiting.

Two quoting forms: `note`, `warn`, `line`, `fact` and `fail_expanded` double-quote their text, so it may use
shell expansions ($n, $(...)) and must never hold untrusted text; `literal` and `fail` single-quote it (any
text is safe) and may append `then`, shell words the host expands (e.g. '"$err"').
"""
from __future__ import annotations

from fabdeploy.remote.shell import q

MARK = "@@fabdeploy"


def prefix(kind: str) -> str:
    """The start of a `kind` marker line: `@@fabdeploy <kind> ` (for greps and case patterns on the host)."""
    return f"{MARK} {kind} "


def line(kind: str, text: str) -> str:
    """echo a `kind` marker; `text` is double-quoted (it may use shell expansions)."""
    return f'echo "{MARK} {kind} {text}"'


def literal(kind: str, text: str, then: str = "") -> str:
    """echo a `kind` marker whose `text` is taken as is (single-quoted), followed by the words `then`."""
    return f"echo {q(prefix(kind) + text)}{then}"


def note(text: str) -> str:
    """A line whose text the deploying side shows on the phase's summary line (shell expansions allowed)."""
    return line("note", text)


def warn(text: str) -> str:
    """A warning the deploying side shows after the phase (shell expansions allowed)."""
    return line("warn", text)


def fail(message: str, code: int = 1, then: str = "") -> str:
    """Stop the phase with a message the deploying side shows as the whole error (no stderr tail); the
    message is taken as is, `then` (shell words, e.g. '"$(tail -n 1 f)"') is appended on the host."""
    return f"{{ {literal('error', message, then)} >&2; exit {code}; }}"


def fail_expanded(message: str, code: int = 1) -> str:
    """Stop with a message the deploying side shows as the error; the message is double-quoted, so it may
    use shell expansions ($holder, $T...): never put untrusted text in it."""
    return f"{{ {line('error', message)} >&2; exit {code}; }}"


def fact(key: str, shell_expr: str) -> str:
    """A line that reports `key=<value of shell_expr>` for the deploying side (RunResult.facts)."""
    return line("fact", f"{key}={shell_expr}")


def pgid() -> str:
    """The script's process group (so that an interrupted run can stop its remote half)."""
    # (the fifth field of /proc/$$/stat, read without a process: the third after the command name's ") ")
    return ('fd_pg() { echo "' + MARK + ' pgid $3"; }; read -r fd_st < /proc/$$/stat; '
            'fd_pg ${fd_st##*") "}')


def begin(name: str) -> str:
    """A phase starts: on stdout and stderr (each stream's lines are attributed to it)."""
    return f"{literal('begin', name)}; {literal('begin', name)} >&2"


def end(name: str) -> str:
    """A phase ended with status $rc: on stdout and stderr."""
    return f"{line('end', name + ' $rc')}; {line('end', name + ' $rc')} >&2"


def relay(kind: str) -> str:
    """A filter passing on only the `kind` marker lines of its input (those of an embedded program)."""
    return f"grep {q('^' + prefix(kind))}"


def as_markers(kind: str) -> str:
    """A filter turning every line of its input into a `kind` marker line."""
    return f"sed {q('s/^/' + prefix(kind) + '/')}"


# For Python programs run on the host: mark() prints one marker line, mark_json() the json marker.
PY_MARKERS = f"""
import json as _fabdeploy_json, sys as _fabdeploy_sys
def mark(kind, text, err=False):
    print("{MARK} " + kind + " " + text, file=_fabdeploy_sys.stderr if err else _fabdeploy_sys.stdout, flush=True)
def mark_json(obj):
    mark("json", _fabdeploy_json.dumps(obj))
"""
