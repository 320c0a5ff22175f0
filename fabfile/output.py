"""Console output: one line per phase per host, safe to call from several host threads."""
from __future__ import annotations

import sys
import threading

from .runner import PhaseResult

_lock = threading.Lock()


class Printer:
    def __init__(self, verbose: bool = False, stream=None, width: int = 0):
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self.width = width

    def line(self, host: str, text: str) -> None:
        with _lock:
            self.stream.write(f"{host:<{self.width}}  {text}\n")
            self.stream.flush()

    def info(self, text: str) -> None:
        with _lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def warn(self, text: str) -> None:
        with _lock:
            sys.stderr.write(f"warning: {text}\n")
            sys.stderr.flush()

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
