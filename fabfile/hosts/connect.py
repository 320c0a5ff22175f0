"""SSH connections: Fabric Connections with strict host-key checking (Fabric itself auto-adds keys)."""
from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path

import paramiko
from fabric import Connection

from fabdeploy.config import Config
from fabdeploy.errors import ConfigError, FabdeployError
from fabdeploy.hosts import keeper
from fabdeploy.hosts.nodelay import NoDelayTransport
from fabdeploy.hosts.pipelined_auth import PipelinedHopTransport, PipelinedTransport


class ConnectError(FabdeployError):
    pass


def host_label(conn: Connection) -> str:
    return conn.host if conn.port == 22 else f"{conn.host}:{conn.port}"


def make_connection(target: str, cfg: Config, fabric_config=None) -> Connection:
    """A Connection for "[user@]host[:port]"; honours -i/ssh_config from the fab command line."""
    kwargs = {}
    if fabric_config is not None:
        kwargs["config"] = fabric_config
    conn = Connection(target, connect_timeout=cfg.ssh.connect_timeout, **kwargs)
    return prepare(conn, cfg)


def prepare(conn: Connection, cfg: Config, hop: bool = False) -> Connection:
    """Apply fabdeploy's SSH policy to a (not yet opened) Connection and to every gateway hop it goes through
    (ProxyJump from ssh_config: Fabric gives each hop its own client with auto-add host keys)."""
    conn.connect_kwargs = dict(conn.connect_kwargs)  # (Fabric gives the Connections of one config the same dict)
    if cfg.ssh.identity_file:
        key = Path(cfg.ssh.identity_file).expanduser()
        if not key.is_file():
            raise ConfigError(f"ssh.identity_file {key} does not exist")
        files = conn.connect_kwargs.get("key_filename") or []
        if isinstance(files, str):
            files = [files]
        if str(key) not in files:
            conn.connect_kwargs["key_filename"] = [str(key), *files]
    if conn.connect_timeout is None:
        conn.connect_timeout = cfg.ssh.connect_timeout
    if cfg.ssh.persist:
        object.__setattr__(conn, "fabdeploy_persist", cfg.ssh)  # (see _open)
    if cfg.ssh.pipelined_auth:
        conn.connect_kwargs.setdefault("transport_factory", PipelinedHopTransport if hop else PipelinedTransport)
    else:
        conn.connect_kwargs.setdefault("transport_factory", NoDelayTransport)  # (TCP_NODELAY: hosts/nodelay.py)
    client = conn.client
    if cfg.ssh.strict_host_keys:
        try:
            client.load_system_host_keys()
        except (OSError, paramiko.SSHException):
            pass
        if cfg.ssh.known_hosts:
            path = Path(cfg.ssh.known_hosts).expanduser()
            if not path.is_file():
                raise ConfigError(f"ssh.known_hosts {path} does not exist")
            client.load_system_host_keys(str(path))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    # A ProxyCommand gateway (a string) is a program of its own, e.g. `ssh -W`, checking keys as it is set up.
    if isinstance(conn.gateway, Connection):
        prepare(conn.gateway, cfg, hop=True)
    return conn


def _hops(conn: Connection) -> list[Connection]:
    """The gateway Connections in front of conn, nearest first."""
    hops = []
    gw = conn.gateway
    while isinstance(gw, Connection):
        hops.append(gw)
        gw = gw.gateway
    return hops


def _about(conn: Connection, hostname: str) -> tuple[str, Connection]:
    """Whom a host-key error is about: the target, or "jump host X (ProxyJump to target)", and its Connection."""
    for hop in _hops(conn):
        if hostname in (hop.host, f"[{hop.host}]:{hop.port}"):
            return f"jump host {host_label(hop)} (ProxyJump to {host_label(conn)})", hop
    return host_label(conn), conn


def open_early(conns: list[Connection]) -> None:
    """Start opening each connection now, in a thread of its own: the SSH handshake is about five round trips
    of waiting, which then overlap the local work done before the first command (reading the source, the
    fingerprints, the archive). open_connection(conn) later waits for it and raises its one-line error there,
    so a host that cannot be reached fails where and as it did before."""
    for conn in conns:
        if conn.is_connected or "fabdeploy_opening" in conn.__dict__:
            continue
        box: dict = {}

        def run(conn=conn, box=box) -> None:
            try:
                _open(conn)
            except BaseException as exc:  # noqa: BLE001 - handed to open_connection, raised there
                box["error"] = exc

        thread = threading.Thread(target=run, name=f"connect {host_label(conn)}", daemon=True)
        object.__setattr__(conn, "fabdeploy_opening", (thread, box))  # (not a config update: see roles.attach)
        thread.start()


def open_connection(conn: Connection) -> None:
    """Open the connection or raise one clear line naming the host (one open_early started: wait for it)."""
    opening = conn.__dict__.pop("fabdeploy_opening", None)
    if opening is None:
        return _open(conn)
    thread, box = opening
    thread.join()
    if "error" in box:
        raise box["error"]


def _open(conn: Connection) -> None:
    label = host_label(conn)
    ssh = conn.__dict__.get("fabdeploy_persist")
    spec = keeper.spec_of(conn, ssh, ssh.persist) if ssh else None
    if spec is not None:
        object.__setattr__(conn, "fabdeploy_keep", spec)
        if keeper.attach(conn):  # (a live kept connection: no handshake over the network)
            return
    try:
        conn.open()
        if spec is not None:
            keeper.keep_later(conn)
    except paramiko.BadHostKeyException as exc:
        raise ConnectError(f"{_about(conn, exc.hostname)[0]}: the SSH host key has CHANGED since it was recorded in "
                           "known_hosts; refusing to connect (check the server, then fix known_hosts)") from None
    except paramiko.SSHException as exc:
        text = str(exc)
        if "not found in known_hosts" in text:
            m = re.match(r"Server '(.*)' not found in known_hosts", text)
            who, hop = _about(conn, m.group(1) if m else conn.host)
            port = f"-p {hop.port} " if hop.port != 22 else ""
            raise ConnectError(f"{who}: unknown SSH host key (not in known_hosts); add it with "
                               f"`ssh-keyscan {port}{hop.host} >> ~/.ssh/known_hosts` or set ssh.known_hosts, "
                               "or opt out with ssh.strict_host_keys = false") from None
        if isinstance(exc, paramiko.AuthenticationException) or "Authentication failed" in text:
            raise ConnectError(f"{label}: SSH authentication failed for user {conn.user}") from None
        raise ConnectError(f"{label}: SSH failed: {text}") from None
    except socket.timeout:
        raise ConnectError(f"{label}: SSH connection timed out") from None
    except (OSError, EOFError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ConnectError(f"{label}: cannot connect: {reason}") from None


def local_user() -> str:
    try:
        import getpass
        user = getpass.getuser()
    except (KeyError, OSError):
        user = os.environ.get("USER", "unknown")
    return f"{user}@{socket.gethostname()}"


def reconnect(conn: Connection, cfg: Config) -> Connection:
    """A fresh, opened connection to the same host (the old transport died), for cleaning up."""
    fresh = Connection(conn.host, user=conn.user, port=conn.port, config=conn.config,
                       connect_kwargs=dict(conn.connect_kwargs), connect_timeout=cfg.ssh.connect_timeout)
    prepare(fresh, cfg)
    open_connection(fresh)
    return fresh
