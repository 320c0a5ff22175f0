"""hosts/keeper.py's pure parts: which connections are kept, the socket's name, the private directory.
(The keeper itself against a real sshd: tests/test_keeper_e2e.py.)"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
from types import SimpleNamespace

from fabric import Connection

from fabdeploy.hosts import keeper
from fabdeploy.hosts.connect import prepare
from test_phases import make_cfg


def conn_for(target="deploy@10.0.0.1:2222", **ssh):
    cfg = make_cfg(ssh={"persist": 60, **ssh})
    return prepare(Connection(target), cfg), cfg


def test_the_spec_names_what_picks_the_connection(tmp_path):
    (tmp_path / "k").write_text("")
    conn, cfg = conn_for(known_hosts=str(tmp_path / "k"), connect_timeout=7)
    spec = keeper.spec_of(conn, cfg.ssh, 60)
    assert spec["host"] == "10.0.0.1" and spec["port"] == 2222 and spec["user"] == "deploy"
    assert spec["known_hosts"] == str(tmp_path / "k") and spec["timeout"] == 7 and spec["strict_host_keys"] is True
    assert "transport_factory" not in spec["connect_kwargs"] and spec["persist"] == 60


def test_off_with_a_gateway_or_with_what_cannot_travel():
    conn, cfg = conn_for()
    assert keeper.spec_of(conn, cfg.ssh, 0) is None
    conn.connect_kwargs["pkey"] = object()
    assert keeper.spec_of(conn, cfg.ssh, 60) is None
    gw, cfg = conn_for()
    gw.gateway = "ssh -W %h:%p jump"
    assert keeper.spec_of(gw, cfg.ssh, 60) is None


def test_the_socket_name_changes_with_the_connection_not_with_the_seconds():
    conn, cfg = conn_for()
    a = keeper.spec_of(conn, cfg.ssh, 60)
    assert keeper.socket_name(a) == keeper.socket_name({**a, "persist": 5})
    for change in ({"user": "other"}, {"port": 22}, {"known_hosts": "/x"}, {"strict_host_keys": False},
                   {"connect_kwargs": {"key_filename": ["/other"]}}):
        assert keeper.socket_name({**a, **change}) != keeper.socket_name(a)
    assert len(keeper.socket_name(a)) < 40 and keeper.socket_name(a).endswith(".sock")


def test_the_directory_is_private_or_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = keeper.runtime_dir()
    assert path == str(tmp_path / "fabdeploy-ssh") and oct(os.stat(path).st_mode & 0o777) == "0o700"
    os.chmod(path, 0o755)
    assert keeper.runtime_dir() is None
    os.chmod(path, 0o700)
    os.rmdir(path)
    os.symlink(tmp_path, path)
    assert keeper.runtime_dir() is None


def test_a_connection_without_a_live_keeper_is_opened_directly(monkeypatch):
    short = tempfile.mkdtemp(dir="/tmp")  # (a unix socket's path has at most 107 bytes)
    monkeypatch.setenv("XDG_RUNTIME_DIR", short)
    conn, cfg = conn_for()
    spec = keeper.spec_of(conn, cfg.ssh, 60)
    object.__setattr__(conn, "fabdeploy_keep", spec)
    assert keeper.attach(conn) is False  # (no socket)
    stale = os.path.join(keeper.runtime_dir(), keeper.socket_name(spec))
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()  # (a socket file nobody listens on: a keeper that died)
    assert keeper.attach(conn) is False and conn.transport is None
    assert keeper.close_kept([stale]) == 0 and not os.path.exists(stale)
    shutil.rmtree(short)


def test_a_run_keeps_each_connection_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    registered = []
    monkeypatch.setattr(keeper.atexit, "register", registered.append)
    monkeypatch.setattr(keeper, "_spawn", [])
    conn, cfg = conn_for()
    object.__setattr__(conn, "fabdeploy_keep", keeper.spec_of(conn, cfg.ssh, 60))
    keeper.keep_later(conn)
    keeper.keep_later(conn)
    assert registered == [keeper._start_keeper] and len(keeper._spawn) == 1
    keeper.keep_later(SimpleNamespace(__dict__={}))  # (not kept: nothing)
    assert len(keeper._spawn) == 1
