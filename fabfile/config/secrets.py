"""[secrets] of deploy.toml: environment variables the app gets whose values never live in deploy.toml.

Each entry is `NAME = { <source>, ... }` with exactly one source:

    { env = "VAR" }                          a variable of the deploying machine's environment
    { file = "path" }                        a dotenv file (relative to deploy.toml): its line NAME=value
    { file = "path", key = "OTHER" }         ... its line OTHER=value
    { file = "path", format = "raw" }        the whole file is the value (trailing newlines dropped)
    { command = ["argv", ...] }              the command's stdout (no shell; trailing newlines dropped)
    { command = "a | b", shell = true }      the same through `sh -c`

and `required = false` to let the value be absent. Here only the form is checked (parse_config, no side
effects); fabdeploy.local.secrets resolves the values on the deploying machine.
"""
from __future__ import annotations

import re

from fabdeploy.config.checks import _ENV_KEY, RESERVED_ENV, _suggest

SOURCES = ("env", "file", "command")
FIELDS = {"env": (), "file": ("key", "format"), "command": ("shell",)}  # the options each source allows
FORMATS = ("dotenv", "raw")
# names that may come from [secrets] although [django] env refuses them: SECRET_KEY goes to shared/secret_key
SECRETS_MAY_SET = ("SECRET_KEY",)
_LOOKS_SECRET = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|KEY", re.I)
_URL_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@\s]*:[^/@\s]+@")


def source_of(spec: dict) -> str:
    """How a (checked) entry is named in messages: `env SENTRY_DSN`, `file .secrets/prod.env`, `command pass`."""
    kind = next(s for s in SOURCES if s in spec)
    value = spec[kind]
    shown = " ".join(value) if isinstance(value, list) else value
    return f"{kind} {shown}"


def check_secret(name: str, spec, django_env: dict) -> str | None:
    """The end of a one-line message when `NAME = spec` is not a valid [secrets] entry, else None."""
    if not _ENV_KEY.match(name):
        return f"has an invalid variable name {name!r}"
    where = f"secrets.{name}"
    if name.startswith("FABDEPLOY_") or (name in RESERVED_ENV and name not in SECRETS_MAY_SET):
        return (f"{where}: fabdeploy sets {name} itself, or it changes the code the app runs "
                "(the fleet's Django key is SECRET_KEY)")
    if name in django_env:
        return f"{where}: {name} is also in django.env; keep one of them"
    if not isinstance(spec, dict):
        return (f'{where} must be a table like {{ env = "VAR" }}, {{ file = "path" }} or '
                '{ command = ["argv", ...] }')
    sources = [s for s in SOURCES if s in spec]
    if len(sources) != 1:
        return (f"{where} needs exactly one source of env, file, command (got "
                f"{', '.join(sources) or 'none'})")
    kind = sources[0]
    allowed = (kind, "required", *FIELDS[kind])
    for key in spec:
        if key not in allowed:
            others = [k for k in ("required", "key", "format", "shell") if k not in allowed]
            if key in others:
                return f"{where}: {key} does not go with {kind} (it goes with " \
                       f"{'file' if key in ('key', 'format') else 'command'})"
            return f"{where} has an unknown key {key!r}{_suggest(key, allowed)}"
    if not isinstance(spec.get("required", True), bool):
        return f"{where}.required must be true or false"
    value = spec[kind]
    if kind == "env":
        if not isinstance(value, str) or not _ENV_KEY.match(value):
            return f"{where}.env must be the name of an environment variable"
    elif kind == "file":
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            return f"{where}.file must be a path (relative to deploy.toml)"
        fmt = spec.get("format", "dotenv")
        if fmt not in FORMATS:
            return f'{where}.format must be "dotenv" (lines KEY=value) or "raw" (the whole file is the value)'
        if "key" in spec:
            if fmt == "raw":
                return f'{where}.key needs format = "dotenv" (a raw file holds one value)'
            if not isinstance(spec["key"], str) or not _ENV_KEY.match(spec["key"]):
                return f"{where}.key must be a variable name of the dotenv file"
    else:
        shell = spec.get("shell", False)
        if not isinstance(shell, bool):
            return f"{where}.shell must be true or false"
        if shell:
            if not isinstance(value, str) or not value.strip():
                return f'{where}.command must be one string with shell = true ("vault kv get ... | head -n1")'
        elif isinstance(value, str):
            return f'{where}.command is a string: make it a list of words (["pass", "show", "shop/db"]) or ' \
                   "set shell = true to run it with sh -c"
        elif not isinstance(value, list) or not value or not all(isinstance(w, str) and w for w in value):
            return f'{where}.command must be a non-empty list of words like ["pass", "show", "shop/db"]'
    return None


def check_secrets(value, django_env: dict) -> str | None:
    """[secrets] as a whole: a table of entries (check_secret)."""
    if not isinstance(value, dict):
        return "secrets must be a table [secrets]"
    for name, spec in value.items():
        problem = check_secret(name, spec, django_env)
        if problem:
            return problem if problem.startswith("secrets.") else f"secrets {problem}"
    return None


def secret_looking_env(django_env: dict) -> list[str]:
    """One warning per literal [django] env value that looks like a secret (by its name, or a URL with a
    password), pointing to [secrets]."""
    out = []
    for name, value in sorted(django_env.items()):
        by_name = _LOOKS_SECRET.search(name)
        by_url = isinstance(value, str) and _URL_PASSWORD.match(value)
        if by_name or by_url:
            why = "a URL with a password" if by_url and not by_name else "its name looks secret"
            out.append(f"django.env.{name} is a literal value in deploy.toml ({why}): move it to [secrets] "
                       f'(e.g. {name} = {{ env = "{name}" }}) so the value stays out of the file')
    return out
