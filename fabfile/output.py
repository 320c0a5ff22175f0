"""Console output: one line per phase per host, safe to call from several host threads.

Every line fabdeploy prints goes through here and is masked once, on the way out: the values registered with
add_secrets() (every [django] env value, the pip.index_url userinfo) and any URL's userinfo (script.mask).
"""
from __future__ import annotations

import sys
import threading

from fabdeploy.remote.runner import PhaseResult
from fabdeploy.remote.script import mask

_lock = threading.Lock()
_secrets: set[str] = set()


def add_secrets(values) -> None:
    """Values to mask in everything printed from now on (the deploy.toml of this run)."""
    with _lock:
        _secrets.update(v for v in values if v)


def masked(text: str) -> str:
    """`text` as it may be printed: registered secrets and URL userinfo masked."""
    return mask(text, tuple(_secrets))


class Printer:
    def __init__(self, verbose: bool = False, stream=None, width: int = 0, secrets=()):
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self.width = width
        add_secrets(secrets)

    def _write(self, stream, text: str) -> None:
        text = masked(text)
        with _lock:
            stream.write(text + "\n")
            stream.flush()

    def line(self, host: str, text: str) -> None:
        self._write(self.stream, f"{host:<{self.width}}  {text}")

    def info(self, text: str) -> None:
        self._write(self.stream, text)

    def warn(self, text: str) -> None:
        self._write(sys.stderr, f"warning: {text}")

    QUIET_PHASES = ("lock", "finish", "facts")  # bookkeeping: shown only when they have something to say

    def phase(self, host: str, ph: PhaseResult) -> None:
        detail = "; ".join(n for n in ph.notes if n.strip())
        if ph.rc:
            why = (ph.errors or ph.stderr or [f"exit status {ph.rc}"])[-1]
            self.line(host, f"{ph.name:<8} FAILED: {why}")
            return
        if ph.name in self.QUIET_PHASES and not detail and not ph.warnings:
            return
        self.line(host, f"{ph.name:<8} {detail:<60} {ph.duration:6.2f}s".rstrip())
        for w in ph.warnings:
            self.line(host, f"         check: {w}")

    def debug(self, host: str, text: str) -> None:
        if self.verbose:
            for ln in text.rstrip("\n").splitlines():
                self.line(host, f"| {ln}")
