"""`[ssh] pipelined_auth` (issue 16) against a real OpenSSH sshd in a lab host: the signed public-key request goes
right behind the ssh-userauth service request, before the server's acceptance, and the first session channel
right behind that request (two round trips less per connection); wrong keys before the right one (the early
channel void, a plain one opened), an RSA key, the option off, and a refused key through the real `fab` all
behave as paramiko's own steps do. (A ProxyJump hop's transport: tests/test_pipelined_auth.py; a deploy through
one: tests/test_gateway_e2e.py.)"""
from __future__ import annotations

import logging
import socket
import subprocess

import pytest

import hostlab
from conftest import make_project, run_fab, sample_config
from fabdeploy.hosts.connect import ConnectError, make_connection, open_connection
from fabdeploy.hosts.nodelay import NoDelayTransport
from fabdeploy.hosts.pipelined_auth import PipelinedTransport
from test_phases import make_cfg


@pytest.fixture(scope="module")
def host(make_host):
    return make_host("pauth")


def cfg_for(**ssh):
    return make_cfg(ssh={"known_hosts": str(hostlab.known_hosts()), **ssh})


def keygen(path, kind: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    return (path.parent / (path.name + ".pub")).read_text()


def accepted(host) -> int:
    return (host.base / "sshd.log").read_text().count("Accepted publickey")


def connect(host, cfg, *keys, factory=None):
    """A fabdeploy connection (make_connection: the policy fab uses) with only these keys (no agent, no
    ~/.ssh keys), opened; and what the host says `id -un` is."""
    conn = make_connection(host.ssh_target(), cfg)
    conn.connect_kwargs.update(key_filename=[str(k) for k in keys], allow_agent=False, look_for_keys=False)
    if factory:
        conn.connect_kwargs["transport_factory"] = factory
    open_connection(conn)
    try:
        return conn, conn.run("id -un", hide=True, in_stream=False).stdout.strip()
    finally:
        conn.close()


def test_the_request_goes_before_the_servers_acceptance(host):
    before = accepted(host)
    conn, who = connect(host, cfg_for(), hostlab.client_key())
    assert who == "deploy" and accepted(host) == before + 1
    assert isinstance(conn.transport, PipelinedTransport)
    # set when SERVICE_ACCEPT arrived after the signed request had gone: the round trip was saved
    assert conn.transport.fabdeploy_pipelined_auth is True
    # the command ran on the channel asked for with the request (RFC 4252 5.1: passed to the service after
    # the success), the channel's own round trip saved too
    assert conn.transport.fabdeploy_early_session is True


def test_wrong_keys_first_then_the_right_one(host, tmp_path, caplog):
    wrong = [tmp_path / "a", tmp_path / "b"]
    keygen(wrong[0], "ed25519")
    keygen(wrong[1], "ecdsa")
    tried = []

    class Counting(PipelinedTransport):
        def auth_publickey(self, username, key, event=None):
            tried.append(key.get_name())
            return super().auth_publickey(username, key, event)

    conn, who = connect(host, cfg_for(), *wrong, hostlab.client_key(), factory=Counting)
    # each refused key answered (USERAUTH_FAILURE after its early request), the next tried the same way
    assert who == "deploy" and conn.transport.fabdeploy_pipelined_auth is True
    assert tried == ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-ed25519"]
    # the early channel went with the first (refused) key: sshd answered it UNIMPLEMENTED before the success,
    # so it is void and a plain one ran the command; nothing logged about it (paramiko would warn)
    assert conn.transport.fabdeploy_early_session is False
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_an_rsa_key_authenticates(host, tmp_path):
    key = tmp_path / "rsa"
    pub = keygen(key, "rsa")
    auth = host.base / "ssh" / "authorized_keys"
    original = auth.read_text()
    auth.write_text(original + pub)
    try:
        conn, who = connect(host, cfg_for(), key)
    finally:
        auth.write_text(original)
    # (pipelined when the server's server-sig-algs had arrived before the attempt, else paramiko's two steps:
    # either way rsa-sha2 as the server lists it, never ssh-rsa/SHA-1, which OpenSSH refuses)
    assert who == "deploy" and conn.transport._agreed_pubkey_algorithm in ("rsa-sha2-512", "rsa-sha2-256")


def test_off_is_paramikos_two_steps(host):
    conn, who = connect(host, cfg_for(pipelined_auth=False), hostlab.client_key())
    assert who == "deploy" and type(conn.transport) is NoDelayTransport


@pytest.mark.parametrize("pipelined", [True, False])
def test_the_connections_socket_sends_small_writes_at_once(host, pipelined):
    """TCP_NODELAY (fabdeploy.hosts.nodelay), as OpenSSH sets it, with the option on or off: read back from the
    open connection's socket."""
    conn = make_connection(host.ssh_target(), cfg_for(pipelined_auth=pipelined))
    conn.connect_kwargs.update(key_filename=[str(hostlab.client_key())], allow_agent=False, look_for_keys=False)
    open_connection(conn)
    try:
        assert conn.transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert conn.run("id -un", hide=True, in_stream=False).stdout.strip() == "deploy"
    finally:
        conn.close()


def test_a_refused_key_is_one_line_with_the_option_on(host, tmp_path):
    wrong = tmp_path / "wrong"
    keygen(wrong, "ed25519")
    with pytest.raises(ConnectError) as err:
        connect(host, cfg_for(), wrong)
    assert str(err.value) == f"{host.address}: SSH authentication failed for user deploy"
    # and through the real fab: one line, no traceback
    proj = make_project(tmp_path / "proj")
    proj.write_config(sample_config(host).replace(str(hostlab.client_key()), str(wrong)))
    res = run_fab(proj.root, "releases", env={"HOME": str(tmp_path), "SSH_AUTH_SOCK": ""})
    assert res.returncode != 0 and "Traceback" not in res.stderr + res.stdout
    assert f"  error: {host.address}: SSH authentication failed for user deploy\n" in res.stdout, res.stdout + res.stderr


def test_the_next_runs_channel_opened_while_the_first_runs(host):
    """runner.SpareChannel, as a deploy's publish gets its channel: opened once the first run's channel is open
    (so the first run still takes the channel asked for with the authentication), then used by the next run."""
    from fabdeploy.remote.runner import SpareChannel, run_script
    from fabdeploy.remote.script import Phase, Script
    conn = make_connection(host.ssh_target(), cfg_for())
    conn.connect_kwargs.update(key_filename=[str(hostlab.client_key())], allow_agent=False, look_for_keys=False)
    open_connection(conn)
    try:
        spares = []
        first = run_script(conn, Script([Phase("one", ["sleep 0.3", "echo '@@fabdeploy fact who='$(id -un)"])]),
                           host="h", opened=lambda: spares.append(SpareChannel(conn)))
        assert first.facts["who"] == "deploy" and conn.transport.fabdeploy_early_session is True
        (spare,) = spares
        spare._thread.join(10)
        (chan,) = spare._chan
        assert chan.active and not chan.closed and chan.chanid != 0
        second = run_script(conn, Script([Phase("two", ["echo '@@fabdeploy fact n=2'"])]), host="h", spare=spare)
        assert second.facts["n"] == "2" and spare._chan == [] and chan.closed  # (run on it, then closed)
        assert spare.take(wait=0) is None  # (once)
    finally:
        conn.close()
