"""A host a task works on, worked out once: its connection, its role and settings, where things live on it,
and how it is named."""
from __future__ import annotations

from dataclasses import dataclass

from fabdeploy.config import Config
from fabdeploy.hosts.connect import host_label
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.roles import Server, server_of


@dataclass(frozen=True)
class Target:
    conn: object  # the fabric Connection
    server: Server  # role, upstream address, weight...
    layout: Layout  # paths under deploy_to
    label: str  # how output names the host ("host" or "host:port")
    address: str  # the host name or address SSH connects to (the health check's default Host header)

    @classmethod
    def of(cls, conn, cfg: Config) -> "Target":
        return cls(conn, server_of(conn), Layout(cfg.paths.deploy_to), host_label(conn), conn.host)

    @classmethod
    def named(cls, cfg: Config, host: str, role: str = "app") -> "Target":
        """A target without a connection (unit tests, the benchmark's scripts)."""
        return cls(None, Server(host, role), Layout(cfg.paths.deploy_to), host, host)

    @property
    def role(self) -> str:
        return self.server.role
