"""open_early (issue 16): a deploy starts every host's SSH handshake before its local work; the outcome of
each is taken by open_connection, which raises the same one-line error a plain open would, naming the host.
Real sockets here (a local port nobody listens on), no SSH server needed."""
from __future__ import annotations

import socket

import pytest

from fabdeploy.hosts.connect import ConnectError, make_connection, open_connection, open_early
from test_phases import make_cfg


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_early_open_fails_where_a_plain_open_fails_with_the_same_line():
    cfg = make_cfg(ssh={"strict_host_keys": False})
    port = _closed_port()
    plain, early = (make_connection(f"deploy@127.0.0.1:{port}", cfg) for _ in range(2))
    with pytest.raises(ConnectError) as direct:
        open_connection(plain)
    open_early([early])  # returns at once: the error is kept for open_connection
    assert "fabdeploy_opening" in early.__dict__
    with pytest.raises(ConnectError) as waited:
        open_connection(early)
    assert str(waited.value) == str(direct.value) and str(direct.value).startswith(f"127.0.0.1:{port}: cannot connect: ")
    assert "fabdeploy_opening" not in early.__dict__  # taken once: a later open is a plain one again
    with pytest.raises(ConnectError):
        open_connection(early)
