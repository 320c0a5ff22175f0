"""Resolve [secrets] on the deploying machine, once, before any SSH connection.

Rules (deploy.example.toml and the README say the same):
- `env`: the variable of this process's environment.
- `file`: a path relative to deploy.toml (~ expanded). format "dotenv" (the default): lines `KEY=value`
  (blank lines, `# comments` and an `export ` prefix allowed; a value may be 'single' or "double" quoted,
  else it ends at ` #`); the line of `key`, default the secret's own name. format "raw": the whole file.
- `command`: run without a shell (`shell = true`: the string through `sh -c`), stdin and the terminal left
  to it (a secret manager may ask for a passphrase), stdout captured; a non-zero exit or a timeout fails.
- A value loses its trailing newlines; it must then be one line. An empty value counts as absent.
- Absent (unset variable, no file, no such key, empty output): an error, unless `required = false` (then the
  app simply does not get the name). A command that fails is an error even then.
Errors are one line naming the secret and its source, never its value (SecretError, a ConfigError).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from fabdeploy import database
from fabdeploy.config import Config
from fabdeploy.config.secrets import source_of
from fabdeploy.errors import ConfigError

COMMAND_TIMEOUT = 120  # seconds a secret manager's command may take (it may ask for a passphrase)
_DOTENV = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


class SecretError(ConfigError):
    """A [secrets] value could not be resolved: one line naming the secret and its source."""


@dataclass
class Resolved:
    values: dict[str, str] = field(default_factory=dict)  # NAME -> value (absent optional ones left out)
    warnings: list[str] = field(default_factory=list)  # one line each (a secret file tracked by git)
    absent: list[str] = field(default_factory=list)  # optional secrets without a value
    files: set = field(default_factory=set)  # secret files already checked against git


def resolve(cfg: Config, environ=None, strict: bool = True) -> Resolved:
    """Every [secrets] value; raises SecretError on the first one that cannot be had (strict=False: that
    secret is left out and its error becomes a warning: tasks that only need the values to mask them)."""
    environ = os.environ if environ is None else environ
    base = cfg.path.parent if cfg.path else Path.cwd()
    out = Resolved()
    for name, spec in cfg.data.get("secrets", {}).items():
        try:
            value = resolve_one(name, spec, base, environ, out)
        except SecretError as exc:
            if strict:
                raise
            out.warnings.append(f"{exc} (not masked in this output)")
            continue
        if value is None:
            out.absent.append(name)
        else:
            out.values[name] = value
    return out


def resolve_one(name: str, spec: dict, base: Path, environ, out: Resolved) -> str | None:
    """One secret's value, None when it is optional and absent (warnings go to out.warnings)."""
    where = f"secrets.{name} ({source_of(spec)})"
    if "env" in spec:
        value = environ.get(spec["env"], "")
        missing = f"the variable {spec['env']} is not set" if spec["env"] not in environ else \
            f"the variable {spec['env']} is empty"
    elif "file" in spec:
        path = (base / Path(spec["file"]).expanduser()).resolve()
        value, missing = read_file(path, spec, name, where)
        warning = (f"secrets.{name}: {spec['file']} is tracked by git: everyone with the repository has it "
                   "(git rm --cached it and list it in .gitignore)")
        if path.is_file() and path not in out.files:
            out.files.add(path)
            if git_tracked(path):
                out.warnings.append(warning)
    else:
        value = run_command(spec, where, base, environ)
        missing = "the command printed nothing"
    value = value.rstrip("\r\n")
    if not value:
        if spec.get("required", True):
            raise SecretError(f"{where}: {missing} (required; set required = false to allow it)")
        return None
    if "\n" in value or "\r" in value or "\0" in value:
        raise SecretError(f"{where}: the value has several lines; a secret must be one line")
    return value


def read_file(path: Path, spec: dict, name: str, where: str) -> tuple[str, str]:
    """(value or "", why it is missing) from a secret file."""
    if not path.exists():
        return "", f"{path} does not exist"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise SecretError(f"{where}: cannot read {path}: {why}") from None
    if spec.get("format", "dotenv") == "raw":
        return text, f"{path} is empty"
    key = spec.get("key", name)
    found = parse_dotenv(text, path, where)
    return found.get(key, ""), f"{path} has no line {key}=..."


def parse_dotenv(text: str, path: Path, where: str) -> dict[str, str]:
    """KEY -> value of a dotenv file (the last line of a key wins). A line that is none of KEY=value, blank
    or a comment is an error naming its number (never its text: it may hold a value)."""
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _DOTENV.match(line)
        if not m:
            raise SecretError(f"{where}: {path} line {number} is not KEY=value")
        key, raw = m.group(1), m.group(2)
        if raw[:1] in ("'", '"'):
            quote = raw[0]
            end = raw.find(quote, 1)
            while quote == '"' and end > 0 and raw[end - 1] == "\\":
                end = raw.find(quote, end + 1)
            if end < 0 or raw[end + 1:].strip() and not raw[end + 1:].lstrip().startswith("#"):
                raise SecretError(f"{where}: {path} line {number}: unbalanced quotes")
            value = raw[1:end]
            if quote == '"':
                value = value.replace('\\"', '"').replace("\\\\", "\\")
        else:
            value = re.split(r"\s+#", raw, maxsplit=1)[0]
        out[key] = value
    return out


def run_command(spec: dict, where: str, cwd: Path, environ) -> str:
    """The command's stdout. Its stderr is captured and its last line shown when it fails (a secret
    manager's error message; the value of this secret is not known to be in it, others are masked by the
    caller's printer)."""
    argv = ["sh", "-c", spec["command"]] if spec.get("shell") else list(spec["command"])
    try:
        res = subprocess.run(argv, cwd=cwd, env=dict(environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             timeout=COMMAND_TIMEOUT)
    except FileNotFoundError:
        raise SecretError(f"{where}: command {argv[0]!r} not found") from None
    except PermissionError:
        raise SecretError(f"{where}: command {argv[0]!r} is not executable") from None
    except subprocess.TimeoutExpired:
        raise SecretError(f"{where}: the command did not finish within {COMMAND_TIMEOUT}s") from None
    if res.returncode != 0:
        tail = res.stderr.decode(errors="replace").strip().splitlines()
        said = f": {tail[-1][:200]}" if tail else ""
        raise SecretError(f"{where}: the command failed (exit status {res.returncode}){said}")
    try:
        return res.stdout.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"{where}: the command's output is not UTF-8 text") from None


def git_tracked(path: Path) -> bool:
    """Whether git tracks `path` in the repository it is in (False outside one, or without git)."""
    try:
        res = subprocess.run(["git", "-C", str(path.parent), "ls-files", "--error-unmatch", path.name],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def apply(cfg: Config, environ=None, strict: bool = True) -> Resolved:
    """resolve() and keep the values on cfg (cfg.secret_env: the env file, masking, the fingerprint)."""
    resolved = resolve(cfg, environ, strict)
    if strict and database.external(cfg) and database.uses_server(cfg) and "DATABASE_URL" in resolved.values:
        problem = database.check_url(cfg, resolved.values["DATABASE_URL"])
        if problem:
            raise SecretError(f"secrets.DATABASE_URL ({source_of(cfg.data['secrets']['DATABASE_URL'])}) {problem}")
    cfg.secret_env = dict(resolved.values)
    return resolved


def digest(cfg: Config) -> str:
    """A hash of every resolved [secrets] name and value, for the "already live" fingerprint (a new value
    makes a real deploy). Salted with the names of the other parts so it is no plain hash of one value; it
    only ever goes into the fingerprint (release.json on the host, readable like app.env itself)."""
    if not cfg.secret_env:
        return ""
    text = json.dumps(sorted(cfg.secret_env.items()))
    return hashlib.sha256(("fabdeploy-secrets:" + cfg.project.name + ":" + text).encode()).hexdigest()
