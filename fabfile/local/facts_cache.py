"""What fab remembers of each host between deploys: the facts of its last successful setup and the fingerprint
(steps/live_check.py) it last went live with, so that a code-only redeploy can run setup and prepare in one
remote invocation (steps/fold.py). A guess, never trusted: the folded script checks on the host what it
assumed, and a missing, unreadable or corrupt file is no cache.

One JSON file per SSH target (user@host:port) under $XDG_CACHE_HOME (or ~/.cache)/fabdeploy/facts/, one
entry per deploy_to (two projects on one host keep apart). No secrets: host facts (python version, nginx
layout, the complete venvs' hashes) and a hash of the deploy's inputs."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from fabdeploy.model import Facts

# the facts worth remembering (`unchanged` and `current` change with every deploy)
KEPT = ("python_version", "python_platform", "nginx_layout", "nginx_user", "nginx_pid", "venvs", "user")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fabdeploy" / "facts"


def target_of(conn) -> str:
    """The cache's name for a connection: user@host:port."""
    return f"{conn.user}@{conn.host}:{conn.port}"


def path_of(target: str) -> Path:
    return cache_dir() / (re.sub(r"[^A-Za-z0-9._@-]", "_", target) + ".json")


def _read(target: str) -> dict:
    try:
        doc = json.loads(path_of(target).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def load(target: str, deploy_to: str) -> tuple[Facts, str] | None:
    """(facts, fingerprint) remembered for `target`'s `deploy_to`; None when there are none (or the file is
    not what save() writes)."""
    entry = _read(target).get(deploy_to)
    try:
        facts = entry["facts"]
        if not (isinstance(facts, dict) and all(isinstance(facts.get(k), str) for k in KEPT if k != "venvs")
                and isinstance(facts.get("venvs"), list) and all(isinstance(v, str) for v in facts["venvs"])
                and isinstance(entry.get("fingerprint", ""), str)):
            return None
        return Facts(**{k: facts[k] for k in KEPT}), entry.get("fingerprint", "")
    except (TypeError, KeyError):
        return None


def save(target: str, deploy_to: str, facts: Facts, fingerprint: str, venv: str = "") -> None:
    """Remember `facts` (plus `venv`, the venv this deploy made complete) and `fingerprint` for `target`'s
    `deploy_to`; best effort (a cache that cannot be written is no cache), replaced atomically."""
    kept = {k: v for k, v in dataclasses.asdict(facts).items() if k in KEPT}
    if venv and venv not in kept["venvs"]:
        kept["venvs"] = [*kept["venvs"], venv]
    doc = _read(target)
    doc[deploy_to] = {"facts": kept, "fingerprint": fingerprint}
    path = path_of(target)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
