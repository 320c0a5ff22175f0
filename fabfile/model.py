"""The data a deploy passes between its steps: the Release being deployed and the host's Facts."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from fabdeploy.hosts.layout import NGINX_PID




@dataclass
class Release:
    id: str
    revision: str
    branch: str
    source: str  # "git" or "dir"
    deployed_at: str
    deployed_by: str
    venv_hash: str = ""
    has_wheels: bool = False
    fingerprint: str = ""  # of everything a deploy would produce: equal means "already live"

    def metadata(self) -> str:
        return json.dumps({
            "id": self.id, "revision": self.revision, "branch": self.branch, "source": self.source,
            "deployed_at": self.deployed_at, "deployed_by": self.deployed_by, "venv": self.venv_hash,
            "fingerprint": self.fingerprint,
        }, indent=2, sort_keys=True)



@dataclass
class Facts:
    """What the setup phase learned about a host."""

    python_version: str = ""
    python_platform: str = ""  # implementation, platform and C library: "cpython linux-x86_64 glibc-2.36"
    nginx_layout: str = "sites"
    nginx_user: str = "www-data"
    nginx_pid: str = NGINX_PID
    current: str = ""
    venvs: list[str] = field(default_factory=list)
    user: str = ""
    unchanged: str = ""  # the live release, when it already is what this deploy would produce

    @classmethod
    def parse(cls, raw: dict[str, str]) -> "Facts":
        return cls(
            unchanged=raw.get("unchanged", ""),
            python_version=raw.get("python_version", ""),
            python_platform=raw.get("python_platform", ""),
            nginx_layout=raw.get("nginx_layout", "sites"),
            nginx_user=raw.get("nginx_user") or "www-data",
            nginx_pid=raw.get("nginx_pid") or NGINX_PID,
            current=raw.get("current", ""),
            venvs=raw.get("venvs", "").split(),
            user=raw.get("user", ""),
        )


PENDING = "pending"  # <release>/.fabdeploy/pending: prepared, never made live


# A release a rollback must not pick: marked bad (it failed or was rolled back from), or never live.
UNUSABLE_FN = ('unusable() { [ -f "$1/.fabdeploy/bad" ] || [ -f "$1/.fabdeploy/' + PENDING + '" ]; }')
