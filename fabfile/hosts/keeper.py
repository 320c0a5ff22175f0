"""Kept SSH connections (`[ssh] persist`, off by default): OpenSSH's ControlMaster/ControlPersist for fab.

A fab command pays for its SSH connection before any work: TCP, key exchange, authentication, a channel (four
to six round trips, with pipelined_auth four). With `persist = N`, a fab run that opened a host's connection
itself leaves, as it exits, one detached background process (this module's main()) holding an
authenticated connection to each such host for N seconds of idleness; the next fab command within that time
talks to that process over a unix socket instead: a local SSH handshake (no network round trip), then each
session channel the run opens is forwarded to the kept connection (exec, stdin, stdout, stderr, exit status,
pty, window size, subsystems such as sftp). A `fab rollback` or a no-op deploy then costs one round trip plus
the remote work.

Trust is OpenSSH's ControlMaster's: the sockets live in a directory only the user can enter
($XDG_RUNTIME_DIR/fabdeploy-ssh, else ~/.cache/fabdeploy/ssh, mode 0700, checked), and each side checks the
other's uid on the socket (SO_PEERCRED) before a byte of SSH is exchanged; the kept process authenticates
nothing else. The host key was checked (strictly, as configured) when the kept connection was opened; a host
key changed since is seen at the next fresh connection (as with ControlPersist). The socket's name is a hash
of everything that picks the connection (user, host, port, keys, host-key policy, known_hosts, timeout), so a
changed setting opens a new one.

Not kept (the plain connection every time): a ProxyJump or ProxyCommand gateway, a Fabric authentication
strategy, connect arguments that are not plain values. A kept connection that died (host rebooted, sshd
restarted, network gone) ends its process; the next fab connects directly and keeps a new one. `fab
disconnect` ends the kept connections of the hosts it is given (all with --all).
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time

_PLAIN = (str, int, float, bool, type(None))
_spawn: list[dict] = []
_spawn_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------------- client side

def runtime_dir(create: bool = True) -> str | None:
    """The private directory of the sockets, or None when it is not safely private (then nothing is kept)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = os.path.join(base, "fabdeploy-ssh") if base else os.path.expanduser("~/.cache/fabdeploy/ssh")
    try:
        if create:
            os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return path


def spec_of(conn, ssh, persist: int) -> dict | None:
    """What the kept process needs to open the same connection (None: this one is never kept)."""
    if persist <= 0 or conn.gateway or conn.authentication.strategy_class is not None:
        return None
    kwargs = {}
    for key, value in conn.connect_kwargs.items():
        if key == "transport_factory":  # (the keeper's own prepare() sets it)
            continue
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            value = list(value)
        elif not isinstance(value, _PLAIN):
            return None
        kwargs[key] = value
    return {"host": conn.host, "port": conn.port, "user": conn.user, "connect_kwargs": kwargs,
            "timeout": conn.connect_timeout or ssh.connect_timeout, "strict_host_keys": ssh.strict_host_keys,
            "known_hosts": ssh.known_hosts, "identity_file": ssh.identity_file, "pipelined_auth": ssh.pipelined_auth,
            "persist": persist}


def socket_name(spec: dict) -> str:
    """The socket's file name: a digest of what picks the connection (never a secret in the name itself)."""
    ident = {k: v for k, v in spec.items() if k != "persist"}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24] + ".sock"


def socket_path(spec: dict, directory: str) -> str:
    return os.path.join(directory, socket_name(spec))


def _peer(sock: socket.socket) -> tuple[int, int]:
    """The pid and uid of the process at the other end of a unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", creds)
    return pid, uid


def _peer_uid(sock: socket.socket) -> int:
    return _peer(sock)[1]


def keeper_pid(path: str) -> int | None:
    """The pid of the keeper serving this socket (None: none does)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(2)
        sock.connect(path)
        return _peer(sock)[0]
    except OSError:
        return None
    finally:
        sock.close()


def attach(conn) -> bool:
    """Open `conn` through its kept connection when there is a live one (True); False: open it directly."""
    spec = conn.__dict__.get("fabdeploy_keep")
    directory = runtime_dir(create=False) if spec else None
    if directory is None:
        return False
    import paramiko
    path = socket_path(spec, directory)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    transport = None
    try:
        sock.settimeout(2)
        sock.connect(path)
        if _peer_uid(sock) != os.getuid():
            raise OSError("socket of another user")
        transport = paramiko.Transport(sock)
        transport.start_client(timeout=5)
        transport.auth_none(conn.user)
        sock.settimeout(None)
    except Exception:  # (no live kept connection: the direct one, which reports what is wrong)
        if transport is not None:
            transport.close()
        sock.close()
        return False
    conn.client._transport = transport
    conn.transport = transport
    object.__setattr__(conn, "fabdeploy_kept", path)
    return True


def keep_later(conn) -> None:
    """Once this process exits, keep this (directly opened) connection for the next fab command."""
    spec = conn.__dict__.get("fabdeploy_keep")
    if not spec or runtime_dir() is None:
        return
    with _spawn_lock:
        if not _spawn:
            atexit.register(_start_keeper)
        if spec not in _spawn:
            _spawn.append(spec)


def _start_keeper() -> None:
    """Start one detached keeper process for the connections of this run (it opens its own)."""
    with _spawn_lock:
        specs = list(_spawn)
        _spawn.clear()
    directory = runtime_dir()
    if not specs or directory is None:
        return
    try:
        name = os.path.join(directory, "keeper.log")
        if os.path.exists(name) and os.path.getsize(name) > 65536:
            os.replace(name, name + ".1")
        log = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, _package_dir()], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, close_fds=True,
                                cwd=directory)
        os.close(log)
        proc.stdin.write(json.dumps({"dir": directory, "specs": specs}).encode())  # (a passphrase: never argv)
        proc.stdin.close()
        proc.returncode = 0  # (detached on purpose: no "still running" warning at exit)
    except OSError:
        pass


# The keeper imports this package from the folder this process has it from (installed, or a checkout's fabfile/),
# without its __init__ (which loads every task): only fabdeploy.hosts and what it needs.
_LAUNCH = ("import sys, types; m = types.ModuleType('fabdeploy'); m.__path__ = [sys.argv[1]]; "
           "sys.modules['fabdeploy'] = m; from fabdeploy.hosts.keeper import main; main()")


def _package_dir() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kept_sockets(directory: str | None = None) -> list[str]:
    """The keepers' sockets in `directory` (default: runtime_dir()); none when there is no such directory."""
    directory = directory or runtime_dir(create=False)
    try:
        names = os.listdir(directory) if directory else []
    except OSError:
        return []
    return sorted(os.path.join(directory, n) for n in names if n.endswith(".sock"))


def close_kept(paths: list[str]) -> int:
    """End the keepers' connections behind these sockets (`fab disconnect`); returns how many were live."""
    closed = 0
    for path in paths:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(2)
            sock.connect(path)
            if _peer_uid(sock) == os.getuid():
                sock.sendall(b"EXIT\n")
                sock.recv(16)
                closed += 1
        except OSError:
            try:
                os.unlink(path)  # (stale: its keeper is gone)
            except OSError:
                pass
        finally:
            sock.close()
    return closed
# ---------------------------------------------------------------------------------------------------- the keeper

def main() -> None:
    """The keeper process: open each connection of the spec read on stdin, serve it on its socket until it has
    been idle for its `persist` seconds or the connection died, then exit."""
    os.umask(0o077)
    doc = json.loads(sys.stdin.read() or "{}")
    sys.stdin.close()
    directory = doc.get("dir")
    if not directory or runtime_dir(create=False) != directory:
        return
    import logging

    import paramiko
    logging.getLogger("paramiko").addHandler(logging.NullHandler())  # (a client gone is not news)
    logging.getLogger("paramiko").propagate = False
    host_key = paramiko.ECDSAKey.generate()
    kept = [k for k in (_Kept(spec, directory, host_key) for spec in doc.get("specs", [])) if not k.served()]
    threads = [threading.Thread(target=k.run, daemon=True) for k in kept]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class _Kept:
    """One kept connection and its socket."""

    def __init__(self, spec: dict, directory: str, host_key):
        self.spec, self.host_key = spec, host_key
        self.path = socket_path(spec, directory)
        self.listener: socket.socket | None = None
        self.clients: list = []
        self.last_used = time.monotonic()
        self.upstream = None
        self.spare: list = []
        self.lock = threading.Lock()
        self.exit = False

    def served(self) -> bool:
        """Another keeper serves this connection already."""
        return keeper_pid(self.path) is not None

    def listening(self) -> bool:
        """Bind the socket and listen (once the connection is open: a client finding the socket finds it
        served), not when a live keeper has it already."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
        except OSError:
            if self.served():  # (by another keeper, started meanwhile)
                return False
            try:  # (a socket file its keeper left behind)
                os.unlink(self.path)
                sock.bind(self.path)
            except OSError:
                return False
        os.chmod(self.path, 0o600)
        self.inode = os.stat(self.path).st_ino
        sock.listen(16)
        self.listener = sock
        return True

    def run(self) -> None:
        try:
            self._open()
        except Exception as exc:  # noqa: BLE001 - the next fab connects directly and says what is wrong
            self._log(f"cannot keep {self.spec['user']}@{self.spec['host']}:{self.spec['port']}: {exc}")
            self._stop()
            return
        if not self.listening():
            self._stop()
            return
        self.listener.settimeout(0.5)
        idle = self.spec["persist"]
        while True:
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                sock = None
            except OSError:
                break
            with self.lock:
                self.clients = [t for t in self.clients if t.is_active()]
                if self.clients:
                    self.last_used = time.monotonic()
            if not self.upstream.is_active() or self.exit:
                break
            if sock is not None:
                threading.Thread(target=self._serve, args=(sock,), daemon=True).start()
            elif not self.clients and time.monotonic() - self.last_used > idle:
                break
        self._stop()

    def _open(self) -> None:
        from types import SimpleNamespace

        from fabric import Config, Connection

        from fabdeploy.hosts.connect import prepare
        spec = self.spec
        conn = Connection(spec["host"], user=spec["user"], port=spec["port"],
                          connect_kwargs=dict(spec["connect_kwargs"]), connect_timeout=spec["timeout"],
                          config=Config(overrides={"load_ssh_configs": False}))
        ssh = SimpleNamespace(**{k: spec[k] for k in ("strict_host_keys", "known_hosts", "identity_file",
                                                       "pipelined_auth")}, connect_timeout=spec["timeout"],
                              persist=0)  # (the keeper's own connection is not kept by another keeper)
        prepare(conn, SimpleNamespace(ssh=ssh))
        conn.open()
        self.upstream = conn.transport
        self.upstream.set_keepalive(15)
        self.conn = conn
        self._refill()

    def _refill(self) -> None:
        """Open a spare session channel in the background: the next command skips that round trip."""
        def open_() -> None:
            try:
                chan = self.upstream.open_session(timeout=self.spec["timeout"])
            except Exception:  # noqa: BLE001 - the next command opens its own
                return
            with self.lock:
                self.spare.append(chan)
        threading.Thread(target=open_, daemon=True).start()

    def session(self):
        """An upstream session channel: the spare one when it is still open, else a new one."""
        with self.lock:
            chan = self.spare.pop() if self.spare else None
        self._refill()
        if chan is not None and chan.active and not chan.closed:
            return chan
        return self.upstream.open_session(timeout=self.spec["timeout"])

    def _serve(self, sock: socket.socket) -> None:
        """A client: its uid checked; EXIT (fab disconnect) ends the keeper; anything else is SSH."""
        import paramiko
        try:
            if _peer_uid(sock) != os.getuid():
                sock.close()
                return
            sock.settimeout(5)
            first = sock.recv(4, socket.MSG_PEEK)
            if first == b"EXIT":
                self.exit = True
                sock.sendall(b"BYE\n")
                sock.close()
                return
            sock.settimeout(None)
            transport = paramiko.Transport(sock)
            transport.add_server_key(self.host_key)
            transport.start_server(event=threading.Event(), server=_Proxy(self))
        except Exception:  # noqa: BLE001 - that client sees its connection fail and connects directly
            sock.close()
            return
        with self.lock:
            self.clients.append(transport)
            self.last_used = time.monotonic()
        _drain(transport)

    def _stop(self) -> None:
        if self.listener is not None:
            try:
                if os.stat(self.path).st_ino == self.inode:  # (not a socket another keeper bound since)
                    os.unlink(self.path)
            except OSError:
                pass
            self.listener.close()
        with self.lock:
            for t in self.clients:
                t.close()
        if self.upstream is not None:
            self.upstream.close()

    def _log(self, line: str) -> None:
        print(time.strftime("%Y-%m-%d %H:%M:%S"), line, file=sys.stderr, flush=True)


def _drain(transport) -> None:
    """Take the accepted channels off the transport's queue (they are served by _Proxy's requests), keeping a
    reference to each while it is open (paramiko closes a channel that is garbage-collected)."""
    held: list = []
    while transport.is_active():
        chan = transport.accept(1)
        held = [c for c in held if not c.closed]
        if chan is not None:
            held.append(chan)


class _Proxy:
    """The keeper's SSH server side for one client: every session channel forwarded to the kept connection."""

    def __init__(self, kept: _Kept):
        import paramiko
        self.paramiko = paramiko
        self.kept = kept
        self.pty: dict[int, tuple] = {}
        self.env: dict[int, dict] = {}
        self.up: dict[int, object] = {}

    # (paramiko.ServerInterface's methods, duck-typed: paramiko calls only these)
    def get_allowed_auths(self, username):
        return "none"

    def check_auth_none(self, username):
        return self.paramiko.AUTH_SUCCESSFUL  # (the client's uid was checked on the socket)

    def check_auth_password(self, username, password):
        return self.paramiko.AUTH_FAILED

    def check_auth_publickey(self, username, key):
        return self.paramiko.AUTH_FAILED

    def check_auth_interactive(self, username, submethods):
        return self.paramiko.AUTH_FAILED

    def check_auth_gssapi_with_mic(self, *args):
        return self.paramiko.AUTH_FAILED

    def check_auth_gssapi_keyex(self, *args):
        return self.paramiko.AUTH_FAILED

    def enable_auth_gssapi(self):
        return False

    def check_channel_request(self, kind, chanid):
        if kind == "session":
            return self.paramiko.OPEN_SUCCEEDED
        return self.paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_pty_request(self, channel, term, width, height, pixelwidth, pixelheight, modes):
        self.pty[channel.chanid] = (term, width, height, pixelwidth, pixelheight)
        return True

    def check_channel_env_request(self, channel, name, value):
        self.env.setdefault(channel.chanid, {})[name] = value
        return True

    def check_channel_exec_request(self, channel, command):
        return self._start(channel, "exec", command)

    def check_channel_shell_request(self, channel):
        return self._start(channel, "shell", None)

    def check_channel_subsystem_request(self, channel, name):
        return self._start(channel, "subsystem", name)

    def check_channel_window_change_request(self, channel, width, height, pixelwidth, pixelheight):
        up = self.up.get(channel.chanid)
        if up is not None:
            try:
                up.resize_pty(width, height, pixelwidth, pixelheight)
            except Exception:  # noqa: BLE001
                pass
        return True

    def check_port_forward_request(self, address, port):
        return False

    def check_global_request(self, kind, msg):
        return False

    def check_channel_forward_agent_request(self, channel):
        return False

    def check_channel_x11_request(self, *args):
        return False

    def check_channel_direct_tcpip_request(self, chanid, origin, destination):
        return self.paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def get_banner(self):
        return (None, None)

    def _start(self, channel, kind: str, what) -> bool:
        if channel.chanid in self.up:
            return False
        self.up[channel.chanid] = None
        threading.Thread(target=self._forward, args=(channel, kind, what), daemon=True).start()
        return True

    def _forward(self, chan, kind: str, what) -> None:
        """Run the request on an upstream channel and pass everything between the two until both are done."""
        from fabdeploy.remote.runner import exec_pipelined
        try:
            up = self.kept.session()
            self.up[chan.chanid] = up
            if chan.chanid in self.pty:
                term, width, height, pw, ph = self.pty[chan.chanid]
                up.get_pty(term, width, height, pw, ph)
            if self.env.get(chan.chanid):
                up.update_environment(self.env[chan.chanid])
            if kind == "exec":
                exec_pipelined(up, what.decode("utf-8", "surrogateescape") if isinstance(what, bytes) else what)
            elif kind == "shell":
                up.invoke_shell()
            else:
                up.invoke_subsystem(what)
        except Exception as exc:  # noqa: BLE001 - the client sees the channel end without a status
            try:
                chan.sendall_stderr(f"fabdeploy: the kept SSH connection failed: {exc}\n".encode())
            finally:
                chan.close()
            return

        def stdin() -> None:
            try:
                while True:
                    data = chan.recv(65536)
                    if not data:
                        break
                    up.sendall(data)
                if chan.closed:
                    up.close()
                else:
                    up.shutdown_write()
            except Exception:  # noqa: BLE001
                up.close()

        def pump(read, write) -> None:
            try:
                while True:
                    data = read(65536)
                    if not data:
                        break
                    write(data)
            except Exception:  # noqa: BLE001
                pass

        feeder = threading.Thread(target=stdin, daemon=True)
        feeder.start()
        err = threading.Thread(target=pump, args=(up.recv_stderr, chan.sendall_stderr), daemon=True)
        err.start()
        pump(up.recv, chan.sendall)
        err.join()
        status = up.recv_exit_status()
        try:
            chan.shutdown_write()
            if status != -1:
                chan.send_exit_status(status)
        finally:
            chan.close()
            up.close()


if __name__ == "__main__":
    main()
