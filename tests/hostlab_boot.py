"""Boot emulator for lab hosts without systemd (placeholder, filled below)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BootReport:
    """What a (re)boot started, what it skipped (and why), what failed: one line each."""
    started: list[str]
    skipped: list[str]
    failed: list[str]

    def text(self) -> str:
        return "\n".join([f"started: {x}" for x in self.started]
                         + [f"skipped: {x}" for x in self.skipped]
                         + [f"FAILED:  {x}" for x in self.failed])
