"""Authentication and the first session channel without waiting between them (`[ssh] pipelined_auth`, on by
default): from the end of the key exchange to a channel ready for the command in one round trip, not three.

paramiko asks for the ssh-userauth service, waits for the server's SERVICE_ACCEPT, then sends the signed
USERAUTH_REQUEST and waits for its answer; the first command then asks for a session channel and waits for
that. The request does not depend on the acceptance (its signature covers the session id, known since the key
exchange), and an SSH server reads one connection's messages in order (RFC 4253 section 6: a packet stream),
so here the request goes right behind the service request, the acceptance only noted when it comes. And RFC
4252 section 5.1: "Any non-authentication messages sent by the client after the request that resulted in
SSH_MSG_USERAUTH_SUCCESS being sent MUST be passed to the service", so the CHANNEL_OPEN of the first session
goes right behind the first key's request; the first open_session takes that channel when that key was the one
accepted. OpenSSH's sshd does exactly that (it keeps the buffered message across its privilege separation).

A refused key is answered with USERAUTH_FAILURE as before and the next key tried the same way (each attempt
asks for the service again, as paramiko does); the early channel request, which then came before any success,
is answered by sshd with UNIMPLEMENTED (logged on the server as a dispatch_protocol_error) and is void: the first
open_session opens a channel the plain way. Not pipelined (paramiko's steps): password and keyboard-interactive
authentication, and an RSA key while the server's list of signature algorithms (its server-sig-algs extension,
which picks rsa-sha2-256 or -512) has not arrived yet; a ProxyJump hop asks for no early session (its channels
are direct-tcpip). `[ssh] pipelined_auth = false` turns it off for an SSH server that does not take these
requests early.
"""
from __future__ import annotations

import threading
import time

import paramiko
from paramiko.auth_handler import AuthHandler
from paramiko.common import MSG_UNIMPLEMENTED, WARNING, cMSG_CHANNEL_OPEN
from paramiko.message import Message

from fabdeploy.hosts.nodelay import NoDelayTransport, quickack


class _PipelinedAuthHandler(AuthHandler):
    pipelined = False

    def _request_auth(self) -> None:
        # marked before the SERVICE_REQUEST goes: the transport's thread can read the server's acceptance
        # before this thread runs again, and would then send the request too (two attempts with this key, the
        # second's USERAUTH_FAILURE read by the next key's handler: a CI run failed so)
        self.pipelined = self.auth_method == "publickey" and _can_sign_now(self)
        super()._request_auth()  # SERVICE_REQUEST ssh-userauth
        if self.pipelined:
            accept = Message()
            accept.add_string("ssh-userauth")
            accept.rewind()
            super()._parse_service_accept(accept)  # builds, signs and sends the USERAUTH_REQUEST now

    def _parse_service_accept(self, m: Message) -> None:
        if not self.pipelined:
            return super()._parse_service_accept(m)
        if m.get_text() == "ssh-userauth":
            self.transport.fabdeploy_pipelined_auth = True  # (the request went before this acceptance)


def _can_sign_now(handler: AuthHandler) -> bool:
    """The request can be built before the acceptance: any key but RSA, whose signature algorithm is chosen
    from the server's server-sig-algs (sent with its NEWKEYS, usually read by now)."""
    key_type, _ = handler._get_key_type_and_bits(handler.private_key)
    return "rsa" not in key_type or "server-sig-algs" in handler.transport.server_extensions


class PipelinedTransport(NoDelayTransport):
    """A paramiko Transport whose public-key attempts are pipelined (SSHClient.connect's transport_factory),
    and whose first session channel is asked for right behind the first attempt (see open_session)."""

    fabdeploy_pipelined_auth = False
    fabdeploy_early_session = False  # (set when the first session channel was the one asked for early)
    early_session = True
    _early = None  # the session channel asked for early: _Early

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._handler_table[MSG_UNIMPLEMENTED] = self._parse_unimplemented

    def auth_publickey(self, username, key, event=None):
        # (paramiko's Transport.auth_publickey with the handler above, then the early session channel)
        if not self.active or not self.initial_kex_done:
            raise paramiko.SSHException("No existing session")
        my_event = event or threading.Event()
        handler = self.auth_handler = _PipelinedAuthHandler(self)
        handler.auth_publickey(username, key, my_event)
        if self.early_session and handler.pipelined and self._early is None and not self.channels_seen:
            self._request_session(handler)
        if handler.pipelined:
            quickack(self.sock)  # (sshd's SERVICE_ACCEPT acknowledged at once: see nodelay.quickack)
        if event is not None:
            return []
        return handler.wait_for_response(my_event)

    def _request_session(self, handler: AuthHandler) -> None:
        """Send CHANNEL_OPEN "session" and register its channel as self._early, without waiting (paramiko's
        open_channel up to its wait). Registered before it is sent: the server's answer (UNIMPLEMENTED after a
        refused key) can be read by the transport's thread before this thread runs again."""
        window_size = self._sanitize_window_size(None)
        max_packet_size = self._sanitize_packet_size(None)
        with self.lock:
            chanid = self._next_channel()
            m = Message()
            m.add_byte(cMSG_CHANNEL_OPEN)
            m.add_string("session")
            m.add_int(chanid)
            m.add_int(window_size)
            m.add_int(max_packet_size)
            early = _Early(paramiko.Channel(chanid), threading.Event(), handler)
            self._channels.put(chanid, early.chan)
            self.channel_events[chanid] = early.event
            self.channels_seen[chanid] = True
            early.chan._set_transport(self)
            early.chan._set_window(window_size, max_packet_size)
            self._early = early
        self._send_message(m)

    def _parse_unimplemented(self, m: Message) -> None:
        """OpenSSH's answer to an early session request that came before the authentication succeeded (sent
        with a refused key): that request is void (paramiko would log a warning for the message, as it still
        does for any other)."""
        early = self._early
        if early is not None and not early.event.is_set():
            early.refused = True
            early.event.set()
        else:  # (anything else: as paramiko has it)
            self._log(WARNING, "Oops, unhandled type 3 ('unimplemented')")

    def open_session(self, window_size=None, max_packet_size=None, timeout=None):
        """The session channel asked for with the successful key's request (RFC 4252 5.1: a message sent
        after the request that succeeded goes to the service), when the authentication went so; else
        paramiko's open_session, the early request dropped (sent with a refused key, or refused)."""
        early, self._early = self._early, None
        if early is not None:
            timeout = self.channel_timeout if timeout is None else timeout
            if (early.handler is self.auth_handler and early.handler.is_authenticated() and window_size is None
                    and max_packet_size is None):
                chan = early.wait(self, timeout)
                if chan is not None:
                    self.fabdeploy_early_session = True
                    return chan
            with self.lock:
                self._channels.delete(early.chan.chanid)
                self.channel_events.pop(early.chan.chanid, None)
        return super().open_session(window_size, max_packet_size, timeout)


class _Early:
    """A session channel asked for before the authentication's answer."""

    def __init__(self, chan: paramiko.Channel, event: threading.Event, handler: AuthHandler):
        self.chan, self.event, self.handler, self.refused = chan, event, handler, False

    def wait(self, transport: paramiko.Transport, timeout: float) -> paramiko.Channel | None:
        """The opened channel; None when the server answered that it does not take it (then a plain open);
        raises as paramiko's open_channel does (the channel refused, the connection gone, the timeout)."""
        start = time.time()
        while not self.event.wait(0.1):
            if not transport.active:
                raise transport.get_exception() or paramiko.SSHException("Unable to open channel.")
            if start + timeout < time.time():
                raise paramiko.SSHException("Timeout opening channel.")
        if self.refused:
            return None
        if transport._channels.get(self.chan.chanid) is self.chan:
            return self.chan
        raise transport.get_exception() or paramiko.SSHException("Unable to open channel.")


class PipelinedHopTransport(PipelinedTransport):
    """For a ProxyJump hop: authentication pipelined, no early session (a hop's channels are direct-tcpip)."""

    early_session = False
