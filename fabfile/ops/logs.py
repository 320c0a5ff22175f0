"""`fab logs`: the app server log, what the process manager writes about the project, and this site's nginx
access/error logs, from every host at once.

Read-only and lock-free. -n shows the last lines; -f follows, merging the hosts' streams live with each
line prefixed by host and log. The remote `tail` is tied to the SSH channel's stdin: when the channel
closes (Ctrl-C here, or this process dying), `cat` sees EOF and kills tail, so nothing is left running.
"""
from __future__ import annotations

import threading
import time

import paramiko

from fabdeploy import appserver, manager
from fabdeploy.appserver.base import app_user
from fabdeploy.config import Config
from fabdeploy.errors import FabdeployError
from fabdeploy.hosts.connect import host_label
from fabdeploy.hosts.fleet import on_each_host
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.roles import Server, balanced, runs_nginx, server_of
from fabdeploy.manager.base import LogFilter
from fabdeploy.output import Printer
from fabdeploy.remote.shell import q

WHICH = ("app", "manager", "access", "error")  # (manager: supervisor's output file, the emperor's lines)


def log_files(cfg: Config, server: Server | None = None) -> dict[str, str]:
    """The logs a host has: the app server's (not on a load balancer) and this site's nginx logs (not on an
    app host behind a load balancer, unless balancer.app_nginx)."""
    name = cfg.project.name
    files = {"app": appserver.of(cfg).paths(Layout(cfg.paths.deploy_to)).log,
             "access": f"/var/log/nginx/{name}.access.log",
             "error": f"/var/log/nginx/{name}.error.log"}
    if server is not None and server.role == "lb" and balanced(cfg):
        del files["app"]
    if not runs_nginx(cfg, server):
        del files["access"], files["error"]
    return files


def tail_command(files: list[str], lines: int, follow: bool, app_log: str = "", app_user: str = "") -> str:
    """One remote command; sudo only when a log is not readable by the SSH user: `sudo -n -u <app user>` when
    only the app server's log (app_log, the app user's file) is not, else `sudo -n`."""
    words = " ".join(q(f) for f in files)
    as_app = (f'if [ "$f" = {q(app_log)} ] && [ -z "$S" ]; then S={q("sudo -n -u " + app_user)}; else S="sudo -n"; fi'
              if app_log and app_user else 'S="sudo -n"')
    sudo = f'S=; for f in {words}; do [ ! -e "$f" ] || [ -r "$f" ] || {{ {as_app}; }}; done; '
    if not follow:
        return f"{sudo}$S tail -v -n {int(lines)} {words}"
    body = f'tail -v -n {int(lines)} -F "$@" & t=$!; cat >/dev/null; kill $t 2>/dev/null'
    return f"{sudo}exec $S sh -c {q(body)} sh {words}"


def journal_command(argv: list[str], lines: int, follow: bool) -> str:
    """The app server's output from the manager's journal (a manager with `journal`: systemd), with the same
    channel-tied lifetime as tail_command."""
    words = " ".join(q(w) for w in argv) + f" -n {int(lines)}"
    if not follow:
        return words
    body = f'{words} -f & t=$!; cat >/dev/null; kill $t 2>/dev/null'
    return f"exec sh -c {q(body)}"


def filter_command(f: LogFilter, lines: int, follow: bool) -> str:
    """The last `lines` lines of a shared log that match f.pattern (followed with -f, the same channel-tied
    lifetime as tail_command): the journal of f.unit where systemd runs, else the file f.path."""
    journal = journal_command(["sudo", "-n", "journalctl", "--no-pager", "-o", "short-iso", "-u", f.unit,
                               "--grep", f.pattern], lines, follow)
    body = f'S=; [ ! -e "$2" ] || [ -r "$2" ] || S="sudo -n"; $S grep -E -- "$1" "$2" 2>/dev/null | tail -n {int(lines)}'
    if follow:  # (tail ends by itself within a second of this shell: --pid)
        body += ('; $S tail -n 0 -F --pid=$$ "$2" 2>/dev/null | grep --line-buffered -E -- "$1" & t=$!; '
                 "cat >/dev/null; kill $t 2>/dev/null")
    return (f"if [ -d /run/systemd/system ] && command -v journalctl >/dev/null 2>&1; then {journal}; "
            f"else sh -c {q(body)} sh {q(f.pattern)} {q(f.path)}; fi")


def stream(conn, cfg: Config, files: dict[str, str], lines: int, follow: bool, printer: Printer,
           cancel: threading.Event, command: str | None = None, label: str = "") -> None:
    """Print a host's logs as they come: `files` through tail (labelled by tail's headers), or the output of
    `command` labelled `label`."""
    host = host_label(conn)
    label_of = {path: which for which, path in files.items()}
    chan = conn.client.get_transport().open_session()
    chan.exec_command(command or tail_command(list(files.values()), lines, follow, files.get("app", ""),
                                              app_user(cfg)))
    if not follow:
        chan.shutdown_write()
    current = {"label": label}
    buf = b""

    def emit(raw: bytes) -> None:
        line = raw.decode("utf-8", "replace")
        if line.startswith("==> ") and line.endswith(" <=="):
            current["label"] = label_of.get(line[4:-4], line[4:-4])
            return
        if line.strip():
            printer.line(host, f"{current['label']:<6} | {line}")

    try:
        while not cancel.is_set():
            if chan.recv_ready():
                buf += chan.recv(65536)
                *done, buf = buf.split(b"\n")
                for raw in done:
                    emit(raw)
                continue
            if chan.recv_stderr_ready():
                for raw in chan.recv_stderr(65536).splitlines():
                    text = raw.decode("utf-8", "replace")
                    if "sudo" in text or "cannot open" in text:
                        printer.line(host, f"!      | {text}")
                continue
            if chan.exit_status_ready() and chan.eof_received:  # (the status can come before the last output)
                break
            time.sleep(0.02)
        if buf:
            emit(buf)
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise FabdeployError(f"{host}: logs: SSH connection lost ({exc})") from None
    finally:
        chan.close()  # the remote `cat` sees EOF and ends the tail


def show_logs(conns, cfg: Config, printer: Printer, lines: int, follow: bool, which: str | None,
              parallel: int | None = None) -> list[str]:
    chosen = WHICH
    if which:
        chosen = [w.strip() for w in which.split(",") if w.strip()]
        bad = [w for w in chosen if w not in WHICH]
        if bad:
            raise FabdeployError(f"--which {','.join(bad)}: choose from {', '.join(WHICH)}")
    printer.width = max(len(host_label(c)) for c in conns)
    errors: list[str] = []

    mgr = manager.of(cfg)

    def one(conn, cancel) -> None:
        has = log_files(cfg, server_of(conn))
        files = {w: f for w, f in has.items() if w in chosen}
        commands = []  # (command, label): streams of their own, beside the tail of the files
        if mgr.journal and "app" in files:  # the app server writes to the journal, not to its file
            del files["app"]
            commands.append((journal_command(mgr.journal_argv(cfg), lines, follow), "app"))
        if "manager" in chosen and "app" in has:  # (an app host: the manager runs the app server there)
            files.update(mgr.log_files(cfg, appserver.of(cfg)))
            f = mgr.log_filter(cfg)
            if f is not None:
                commands.append((filter_command(f, lines, follow), f.label))
        threads = [threading.Thread(target=stream, args=(conn, cfg, {}, lines, follow, printer, cancel, cmd, label),
                                    daemon=True) for cmd, label in commands]
        for t in threads:
            t.start()
        if files:  # (--which access on an app host without nginx: nothing to show there)
            stream(conn, cfg, files, lines, follow, printer, cancel)
        for t in threads:
            t.join()

    try:
        # every host at once when following (a bounded pool would never reach the hosts beyond it)
        on_each_host(conns, one, len(conns) if follow else (parallel or cfg.fleet.parallel),
                     failed=lambda conn, exc: errors.append(str(exc)))
    except KeyboardInterrupt:
        if not follow:
            raise
    return errors
