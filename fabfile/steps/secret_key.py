"""One Django SECRET_KEY for every app host of a project (shared/secret_key, 0600).

Behind a balancer a session, CSRF token or password-reset link signed on one app host must be valid on the
next. The setup invocation reports a fingerprint of each host's key (a hash, never the key); before any host
changes anything the deploying side compares them and decides which key each host gets (`decide`). The key
itself only travels inside the prepare script (masked in every display) or in one read of a holder's file.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from fabdeploy.errors import FabdeployError
from fabdeploy.hosts.layout import Layout
from fabdeploy.remote.markers import fact, fail
from fabdeploy.remote.script import Phase, Script
from fabdeploy.remote.shell import q

FACT = "secret_key_fp"


def fingerprint_lines(deploy_to: str) -> list[str]:
    """Setup lines reporting secret_key_fp=<16 hex> of shared/secret_key (empty when there is none). A
    domain-separated SHA-256 of the key as Django reads it: equal keys, equal fingerprints."""
    key = Layout(deploy_to).secret_key
    return [f"if [ -s {q(key)} ]; then secret_key_fp=$(printf 'fabdeploy-secret-key:%s' \"$(cat {q(key)})\" "
            "| sha256sum | cut -c1-16); else secret_key_fp=; fi",
            fact(FACT, "$secret_key_fp")]


@dataclass
class KeyPlan:
    """What the deploy does about the key: nothing, install a freshly generated one, or install the key of
    `source` (a host of this run) on `targets`."""

    targets: list[str] = field(default_factory=list)
    source: str = ""
    generate: bool = False


def key_fingerprint(key: str) -> str:
    """What fingerprint_lines reports for a host whose shared/secret_key holds `key`."""
    return hashlib.sha256(f"fabdeploy-secret-key:{key.rstrip(chr(10))}".encode()).hexdigest()[:16]


def decide(fps: dict[str, str], adopt: str | None = None, configured: str = "") -> KeyPlan:
    """fps: app host -> fingerprint ("" = no key yet), in deploy order. One line naming the hosts when the
    keys differ (and no --adopt-secret-key says which one to keep). `configured`: the SECRET_KEY of
    [secrets], which every host gets (KeyPlan.source stays "": the caller has the key)."""
    if configured:
        return KeyPlan([h for h, fp in fps.items() if fp != key_fingerprint(configured)])
    if adopt:
        if adopt not in fps:
            raise FabdeployError(f"--adopt-secret-key {adopt}: not an app host of this deploy "
                                 f"(app hosts: {', '.join(fps)})")
        if not fps[adopt]:
            raise FabdeployError(f"--adopt-secret-key {adopt}: that host has no shared/secret_key to adopt")
        return KeyPlan([h for h, fp in fps.items() if fp != fps[adopt]], adopt)
    keys = sorted({fp for fp in fps.values() if fp})
    if len(keys) > 1:
        groups = "; ".join(f"{', '.join(h for h, fp in fps.items() if fp == k)} ({k[:8]})" for k in keys)
        missing = [h for h, fp in fps.items() if not fp]
        raise FabdeployError(
            f"the app hosts have different SECRET_KEYs (shared/secret_key): {groups}"
            + (f"; none on {', '.join(missing)}" if missing else "")
            + ": sessions and CSRF tokens signed on one would be rejected by the others. Nothing was changed; "
            "keep one host's key everywhere with: fab deploy --adopt-secret-key HOST")
    if keys:
        targets = [h for h, fp in fps.items() if not fp]
        return KeyPlan(targets, next(h for h, fp in fps.items() if fp) if targets else "")
    if len(fps) == 1:
        return KeyPlan()  # one host: it generates its own on the first deploy, as always (never leaves it)
    return KeyPlan(list(fps), generate=True)


def new_key() -> str:
    return secrets.token_urlsafe(50)


def read_script(deploy_to: str) -> Script:
    """One invocation printing a host's key (the caller never displays it)."""
    key = Layout(deploy_to).secret_key
    return Script([Phase("secret_key", [f"[ -s {q(key)} ] || {fail('no shared/secret_key')}", f"cat {q(key)}"])])


def parse_key(text: str, host: str) -> str:
    key = text.strip()
    if not key or "\n" in key:
        raise FabdeployError(f"{host}: shared/secret_key is not one line of text; cannot copy it to the other hosts")
    return key
