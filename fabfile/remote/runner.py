"""The one runner: executes a Script on a host over a single SSH channel, streaming phase progress.

stdin (the release archive) is sent from a thread while stdout/stderr are read, so neither side blocks.
"""
from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message

from fabdeploy.errors import FabdeployError, RemoteError
from fabdeploy.remote.markers import MARK
from fabdeploy.remote.script import Script, mask


@dataclass
class PhaseResult:
    name: str
    rc: int | None = None
    started: float = 0.0
    duration: float = 0.0
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    """What a script printed; its marker lines read here (the one parser of the marker protocol)."""

    rc: int
    phases: dict[str, PhaseResult]
    stdout: str
    stderr: str
    host: str = ""

    @property
    def facts(self) -> dict[str, str]:
        """The `@@fabdeploy fact key=value` lines of stdout (markers.fact), as a dict."""
        facts = {}
        start = f"{MARK} fact "
        for line in self.stdout.splitlines():
            if line.startswith(start):
                key, _, value = line[len(start):].partition("=")
                facts[key] = value
        return facts

    def json(self, what: str = "report"):
        """The document of the `@@fabdeploy json ...` line of stdout (markers.PY_MARKERS' mark_json); a
        FabdeployError naming the host and `what` was expected when there is none."""
        start = f"{MARK} json "
        for line in self.stdout.splitlines():
            if line.startswith(start):
                try:
                    return json.loads(line[len(start):])
                except ValueError as exc:
                    raise FabdeployError(f"{self.host or 'the host'}: its {what} is not JSON ({exc})") from None
        raise FabdeployError(f"{self.host or 'the host'}: the host returned no {what}")


def _trace(host: str) -> None:
    """With $FABDEPLOY_TRACE set to a file, append one line per SSH channel opened (the benchmark counts)."""
    path = os.environ.get("FABDEPLOY_TRACE")
    if path:
        with open(path, "a") as f:
            f.write(f"channel {host}\n")


def exec_pipelined(chan, command: str) -> None:
    """Start `command` on a freshly opened session channel without waiting for the server's answer to the exec
    request (paramiko's exec_command waits: one round trip). The request still asks for the answer: a
    success is recorded as usual (`chan.event_ready`), a refusal closes the channel (paramiko's
    _request_failed), which run_script reports as refused. The server handles a channel's messages in order,
    so stdin sent right after arrives after the command started."""
    m = Message()
    m.add_byte(cMSG_CHANNEL_REQUEST)
    m.add_int(chan.remote_chanid)
    m.add_string("exec")
    m.add_boolean(True)
    m.add_string(command)
    chan._event_pending()
    chan.transport._send_user_message(m)


class SpareChannel:
    """A session channel opened in the background while an invocation runs, for the next one on the same
    connection (the deploy's publish after its prepare): the next run_script starts with its exec request
    instead of a round trip for the channel (and sshd's session setup) after the fleet's barrier."""

    def __init__(self, conn):
        self._chan: list = []
        transport = conn.client.get_transport() if conn.client else None

        def open_() -> None:
            try:
                self._chan.append(transport.open_session())
            except Exception:  # (the next run opens its own, and reports what is wrong then)
                pass
        self._thread = threading.Thread(target=open_, daemon=True, name="spare-channel")
        if transport is not None:
            self._thread.start()

    def take(self, wait: float = 10.0):
        """The open channel (once), or None: the next run opens its own."""
        if self._thread.ident is not None:  # (started)
            self._thread.join(wait)
        chan = self._chan.pop() if self._chan else None
        return chan if chan is not None and chan.active and not chan.closed else None

    def close(self) -> None:
        chan = self.take(wait=0)
        if chan is not None:
            chan.close()


class Interrupted(FabdeployError):
    """The run was cancelled (Ctrl-C) while a remote script was running."""


class _Lines:
    """Split a byte stream into lines, calling `emit(line)` for each complete one."""

    def __init__(self, emit: Callable[[str], None]):
        self.buf = b""
        self.emit = emit

    def feed(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.emit(line.decode("utf-8", "replace"))

    def close(self) -> None:
        if self.buf:
            self.emit(self.buf.decode("utf-8", "replace"))
            self.buf = b""


class _Phases:
    """The marker lines of one run, read as they arrive: each phase's notes, warnings, errors and other output
    lines, attributed by the begin/end markers of the stream they came on.

    stdout and stderr are two streams of one channel, read in turns: either may be ahead of the other. So a
    phase exists from its first begin marker (on either stream), and is reported (on_phase) once both streams
    have ended it: the stderr that holds its error line has been read by then (a phase reported at its
    stdout end alone could show an empty "FAILED:"; its stderr still unread). finish() reports the phases an
    ended stream left unreported (a run cut short)."""

    def __init__(self, remote: dict, on_phase=None, on_output=None):
        self.remote, self.on_phase, self.on_output = remote, on_phase, on_output
        self.phases: dict[str, PhaseResult] = {}
        self.current = {"out": None, "err": None}
        self.ended: dict[str, set[str]] = {"out": set(), "err": set()}
        self.reported: set[str] = set()
        self.out_all: list[str] = []
        self.err_all: list[str] = []

    def handle(self, stream: str, line: str) -> None:
        (self.out_all if stream == "out" else self.err_all).append(line)
        if line.startswith(MARK + " "):
            self._marker(stream, line)
            return
        name = self.current[stream]
        if name and name in self.phases:
            (self.phases[name].stdout if stream == "out" else self.phases[name].stderr).append(line)
        if self.on_output:
            self.on_output(stream, line)

    def _marker(self, stream: str, line: str) -> None:
        words = line[len(MARK) + 1:].split(" ", 2)
        kind = words[0]
        if kind == "pgid" and len(words) >= 2 and words[1].strip().isdigit():
            self.remote["pgid"] = int(words[1])
        elif kind == "begin" and len(words) >= 2:
            if words[1] not in self.phases:
                self.phases[words[1]] = PhaseResult(words[1], started=time.monotonic())
            self.current[stream] = words[1]
        elif kind == "end" and len(words) >= 3:
            self.current[stream] = None
            ph = self.phases.get(words[1])
            if ph is None:
                return
            if stream == "out":
                ph.rc = int(words[2]) if words[2].strip().isdigit() else 1
                ph.duration = time.monotonic() - ph.started
            self.ended[stream].add(ph.name)
            if ph.name in self.ended["out"] and ph.name in self.ended["err"]:
                self._report(ph)
        else:
            name = self.current[stream]
            if name and name in self.phases:
                rest = line[len(MARK) + 1 + len(kind) + 1:]
                what = {"note": "notes", "warn": "warnings", "error": "errors"}.get(kind)
                if what:
                    getattr(self.phases[name], what).append(rest)

    def _report(self, ph: PhaseResult) -> None:
        if ph.name not in self.reported:
            self.reported.add(ph.name)
            if self.on_phase:
                self.on_phase(ph)

    def finish(self) -> None:
        """Both streams are read to their end: report every phase that has its exit status (stdout's end
        marker) but not yet both end markers."""
        for ph in self.phases.values():
            if ph.rc is not None:
                self._report(ph)


def run_script(conn, script: Script, *, host: str, stdin: bytes | None = None, timeout: float = 3600,
               on_phase: Callable[[PhaseResult], None] | None = None,
               on_output: Callable[[str, str], None] | None = None,
               cancel: threading.Event | None = None, remote: dict | None = None,
               spare: SpareChannel | None = None, opened: Callable[[], None] | None = None) -> RunResult:
    """Run `script` on `conn` (an open fabric Connection); raise RemoteError naming host + phase on failure.

    `cancel` set: close the channel and raise Interrupted. `remote` receives the remote "pgid" at start.
    `spare`: a channel opened beforehand, used when it is still open. `opened`: called once the channel is
    open and the command sent (e.g. to open a SpareChannel for the next run).
    """
    remote = remote if remote is not None else {}
    parser = _Phases(remote, on_phase, on_output)
    phases, out_all, err_all = parser.phases, parser.out_all, parser.err_all

    try:
        chan = spare.take() if spare is not None else None
        if chan is None:
            chan = conn.client.get_transport().open_session()
        chan.settimeout(None)
        exec_pipelined(chan, script.command())
        _trace(host)
        if opened is not None:
            opened()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise RemoteError(host, script.names[0], f"SSH connection lost ({exc or type(exc).__name__})") from None

    send_error: list[BaseException] = []

    def send() -> None:
        try:
            if stdin:
                view = memoryview(stdin)
                for i in range(0, len(view), 32768):
                    chan.sendall(view[i:i + 32768])
            chan.shutdown_write()
        except (OSError, paramiko.SSHException, EOFError) as exc:  # remote stopped reading: its stderr says why
            send_error.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    outs = _Lines(lambda line: parser.handle("out", line))
    errs = _Lines(lambda line: parser.handle("err", line))
    deadline = time.monotonic() + timeout
    status_seen = 0.0
    try:
        # (paramiko signals this pipe when output or EOF arrives: the loop sleeps until then instead of waking
        # every 2 ms, 500 times a second per host, on the cores the hosts' own work needs)
        ready = chan.fileno()
        while True:
            busy = False
            if chan.recv_ready():
                outs.feed(chan.recv(65536))
                busy = True
            if chan.recv_stderr_ready():
                errs.feed(chan.recv_stderr(65536))
                busy = True
            if not busy:
                # sshd may send the exit status before the last output: done after EOF as well (or, when a
                # background process of a hook keeps the output open, 2 s after the status)
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    status_seen = status_seen or time.monotonic()
                    if chan.eof_received or time.monotonic() - status_seen > 2:
                        break
                if chan.closed and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if cancel is not None and cancel.is_set():
                    chan.close()
                    raise Interrupted(f"{host}: interrupted during {_running(phases, script)}")
                if time.monotonic() > deadline:
                    chan.close()
                    raise RemoteError(host, _running(phases, script), f"timed out after {timeout:.0f}s")
                if chan.eof_received:  # (the pipe stays signalled after EOF: the exit status is a poll away)
                    time.sleep(0.002)
                else:  # (a timeout: the exit status, a cancel and the deadline are looked at anyway)
                    select.select([ready], [], [], 0.05)
    except (socket.error, paramiko.SSHException, EOFError) as exc:
        raise RemoteError(host, _running(phases, script), f"SSH connection lost ({exc})") from None
    outs.close()
    errs.close()
    parser.finish()
    rc = chan.recv_exit_status() if chan.exit_status_ready() else -1
    sender.join(timeout=5)
    chan.close()
    result = RunResult(rc, phases, "\n".join(out_all), "\n".join(err_all), host)
    if rc != 0:
        failed = _running(phases, script, failed=True)
        ph = phases.get(failed)
        if ph and ph.errors:  # the script said what is wrong; its other stderr lines are the detail
            raise RemoteError(host, failed, mask(ph.errors[-1], script.secrets),
                              mask("\n".join(ph.stderr[-15:]), script.secrets))
        tail_lines = (ph.stderr if ph and ph.stderr else err_all)[-15:]
        message = "SSH connection lost" if rc == -1 else f"exit status {rc}"
        if rc == -1 and chan.event.is_set() and not chan.event_ready:
            message = "the SSH server refused to run the script (exec request failed)"
        raise RemoteError(host, failed, message, mask("\n".join(tail_lines), script.secrets))
    return result


def _running(phases: dict[str, PhaseResult], script: Script, failed: bool = False) -> str:
    """The phase that was running (or failed): the last begun without a zero exit."""
    for name in reversed(script.names):
        ph = phases.get(name)
        if ph is not None and (ph.rc is None or ph.rc != 0):
            return name
    for name in script.names:
        if name not in phases:
            return name
    return script.names[-1]
