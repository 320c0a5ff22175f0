"""Which public-key attempts are pipelined (fabdeploy.hosts.pipelined_auth) and which transport each
Connection gets: the rules without a server (the e2e module proves the protocol against a real sshd)."""
from __future__ import annotations

from types import SimpleNamespace

from fabric import Connection

from fabdeploy.hosts.connect import prepare
from fabdeploy.hosts.nodelay import NoDelayTransport, quickack, set_nodelay
from fabdeploy.hosts.pipelined_auth import PipelinedHopTransport, PipelinedTransport, _can_sign_now
from test_phases import make_cfg


def handler(key_type: str, extensions: dict) -> SimpleNamespace:
    from paramiko.auth_handler import AuthHandler
    h = SimpleNamespace(private_key=SimpleNamespace(public_blob=None, get_name=lambda: key_type),
                        transport=SimpleNamespace(server_extensions=extensions))
    h._get_key_type_and_bits = lambda key: AuthHandler._get_key_type_and_bits(h, key)
    return h


def test_any_key_but_rsa_signs_at_once():
    for kind in ("ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-ed25519-cert-v01@openssh.com"):
        assert _can_sign_now(handler(kind, {}))


def test_rsa_waits_for_the_servers_signature_algorithms():
    assert not _can_sign_now(handler("ssh-rsa", {}))
    assert not _can_sign_now(handler("ssh-rsa-cert-v01@openssh.com", {"other": b"x"}))
    assert _can_sign_now(handler("ssh-rsa", {"server-sig-algs": b"rsa-sha2-512,rsa-sha2-256"}))


def test_a_proxyjump_hop_gets_no_early_channel_and_the_switch_turns_both_off():
    def prepared(**ssh):
        conn = Connection("deploy@10.0.1.5", gateway=Connection("deploy@10.0.0.1"))
        return prepare(conn, make_cfg(ssh={"strict_host_keys": False, **ssh}))
    conn = prepared()
    assert conn.connect_kwargs["transport_factory"] is PipelinedTransport
    assert conn.gateway.connect_kwargs["transport_factory"] is PipelinedHopTransport
    assert not PipelinedHopTransport.early_session and PipelinedTransport.early_session
    conn = prepared(pipelined_auth=False)
    # (still TCP_NODELAY: fabdeploy.hosts.nodelay)
    assert conn.connect_kwargs["transport_factory"] is NoDelayTransport
    assert conn.gateway.connect_kwargs["transport_factory"] is NoDelayTransport


def test_the_early_channel_is_registered_before_its_request_is_sent():
    """The server's UNIMPLEMENTED for an early channel sent with a refused key can be read by the transport's
    thread before the sending thread runs again (a CI run warned "Oops, unhandled type 3"): the channel is
    self._early before the bytes go. Here the answer is handled inside the send."""
    import socket

    from paramiko.message import Message

    seen = []

    class AnswersAtOnce(PipelinedTransport):
        def _send_message(self, data):
            seen.append(self._early is not None)
            self._parse_unimplemented(Message())

    a, b = socket.socketpair()
    try:
        t = AnswersAtOnce(a)
        t._request_session(SimpleNamespace())
        assert seen == [True] and t._early.refused and t._early.event.is_set()
        assert t._early.wait(t, 1) is None  # void: open_session opens a plain one
    finally:
        a.close(), b.close()


def test_an_acceptance_read_before_the_sender_runs_again_sends_no_second_request(tmp_path):
    """The server's SERVICE_ACCEPT can be handled by the transport's thread between the SERVICE_REQUEST leaving
    and the signed request being built (a CI run: two requests with a refused key, the second one's failure
    read by the right key's handler). Here the acceptance is handled inside the send: one request per key."""
    import socket
    import subprocess

    import paramiko
    from paramiko.common import MSG_USERAUTH_REQUEST, cMSG_SERVICE_REQUEST
    from paramiko.message import Message

    from fabdeploy.hosts.pipelined_auth import _PipelinedAuthHandler

    sent = []

    class AcceptsAtOnce(PipelinedTransport):
        def _send_message(self, data):
            raw = data.asbytes()
            sent.append(raw[0])
            if raw[:1] == cMSG_SERVICE_REQUEST:
                accept = Message()
                accept.add_string("ssh-userauth")
                accept.rewind()
                self.auth_handler._parse_service_accept(accept)

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    a, b = socket.socketpair()
    try:
        t = AcceptsAtOnce(a)
        t.session_id = b"x" * 32
        handler = t.auth_handler = _PipelinedAuthHandler(t)
        handler.auth_publickey("deploy", paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "k")), None)
        assert sent.count(MSG_USERAUTH_REQUEST) == 1 and handler.pipelined
        assert t.fabdeploy_pipelined_auth is True
    finally:
        a.close(), b.close()


def test_nodelay_is_set_on_tcp_sockets_only():
    import socket
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    a, b = socket.socketpair()
    try:
        assert set_nodelay(tcp) and tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert not set_nodelay(a)  # (a unix socket: a kept connection's, hosts/keeper.py)
        assert not set_nodelay(object())  # (a ProxyJump hop's channel, a ProxyCommand)
        assert quickack(tcp) and not quickack(a) and not quickack(object())
        assert issubclass(PipelinedTransport, NoDelayTransport) and issubclass(PipelinedHopTransport, NoDelayTransport)
    finally:
        tcp.close(), a.close(), b.close()
