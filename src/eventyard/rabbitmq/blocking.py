"""One confirmed publish at a time, on a plain socket in the calling thread.

The sync facade's single ``publish()`` spends most of its time in the event loop's hops (a
write queue and a writer task out, a frame queue and a channel task back), not on the wire.
``BlockingPublisher`` holds one AMQP connection with a confirming channel and, like a blocking
client, writes the message's frames and reads until the broker acks, nacks or returns it. It
serves one caller at a time; a caller that finds it busy takes the event-loop path instead, so
publishing from many threads still overlaps.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from typing import Any

import pamqp.frame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader, ProtocolHeader
from pamqp.heartbeat import Heartbeat

from eventyard.errors import (
    BrokerConnectionError,
    ConfigurationError,
    PublishNackedError,
    PublishTimeoutError,
)
from eventyard.ports import OutgoingMessage
from eventyard.rabbitmq.connecting import HandshakeRefused, connection_error, explain
from eventyard.rabbitmq.properties import basic_properties
from eventyard.rabbitmq.settings import ConnectionSettings

_HEADER = struct.Struct(">BHI")
_CHANNEL = 1
_FRAME_MAX = 131072
_CAPABILITIES: Any = {"publisher_confirms": True, "basic.nack": True, "connection.blocked": True,
                      "authentication_failure_close": True, "consumer_cancel_notify": True}


class _ChannelClosed(Exception):
    def __init__(self, frame: spec.Channel.Close) -> None:
        super().__init__(frame.reply_text)
        self.frame = frame


class _ConnectionClosed(EOFError):
    def __init__(self, frame: spec.Connection.Close) -> None:
        super().__init__(f"RabbitMQ closed the connection: {frame.reply_text}")
        self.frame = frame


def blocked_message(reason: str | None) -> str:
    """What a ``connection.blocked`` reason means, for a publish that timed out under it."""
    if reason is None:
        return ""
    alarm = ("memory alarm" if "memory" in reason else "disk alarm" if "disk" in reason
             else "resource alarm")
    return (f"RabbitMQ has blocked publishing on this connection ({alarm}: {reason!r}); it "
            "takes messages again once the alarm clears (rabbitmqctl status shows the alarms)")


def timeout_error(what: str, seconds: float, blocked: str | None) -> PublishTimeoutError:
    """The error for publishes not confirmed within ``seconds``."""
    why = blocked_message(blocked) or (
        "the broker is slow or unreachable; raise publish_timeout (RABBITMQ_PUBLISH_TIMEOUT) "
        "if it is only slow")
    return PublishTimeoutError(f"{what} not confirmed within {seconds:g}s: {why}. "
                               "Unconfirmed messages may or may not be stored.")


class BlockingPublisher:
    """A confirming channel on a socket of its own; ``try_publish`` never waits for another caller."""

    def __init__(self, settings: ConnectionSettings, name: str = "eventyard-blocking") -> None:
        self.settings = settings
        self.name = name
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._buffer = bytearray()
        self._frame_max = _FRAME_MAX
        self._tag = 0
        self._channel_open = False
        self._publish_frames: dict[tuple[str, str], bytes] = {}  # marshalled Basic.Publish
        self._deadline = 0.0  # of the read or write under way (time.monotonic)
        self.blocked: str | None = None  # the reason of the broker's last connection.blocked

    def try_publish(self, message: OutgoingMessage) -> bool | None:
        """Publish and wait for the confirm: True routed, False returned (unroutable).

        None when another thread is publishing here right now (use another path).
        """
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._publish(message)
        finally:
            self._lock.release()

    def close(self) -> None:
        """Close the connection (a later publish opens a new one)."""
        with self._lock:
            self._drop()

    # -- one publish --------------------------------------------------------------------------

    def _publish(self, message: OutgoingMessage) -> bool:
        if self._socket is None:
            self._connect()
        try:
            self._deadline = time.monotonic() + self.settings.publish_timeout
            if not self._channel_open:
                self._open_channel()
            self._write(self._frames(message))
            self._tag += 1
            return self._await_confirm(self._tag, message)
        except TimeoutError:
            # The frames may sit half-written and the confirm may still come: this
            # connection's state is unknown, so it goes; the next publish opens a new one.
            self._drop()
            raise timeout_error(f"message {message.message_id} to {message.exchange!r}",
                                self.settings.publish_timeout, self.blocked) from None
        except _ChannelClosed as closed:
            self._channel_open = False
            if closed.frame.reply_code == 404:
                raise ConfigurationError(
                    f"cannot publish to {message.exchange!r}: {closed.frame.reply_text}; declare "
                    "the topology first (RabbitMqMessageConfigurer.configure_subscribers)") from None
            raise BrokerConnectionError(
                f"RabbitMQ closed the publishing channel: {closed.frame.reply_text}") from None
        except (OSError, PAMQPException, EOFError) as error:
            self._drop()
            raise BrokerConnectionError(
                f"connection to RabbitMQ lost before message {message.message_id} was confirmed "
                f"({type(error).__name__}); it may or may not be stored") from error

    def _frames(self, message: OutgoingMessage) -> bytes:
        """The message's frames, marshalled as one write."""
        key = (message.exchange, message.routing_key)
        publish = self._publish_frames.get(key)
        if publish is None:
            publish = self._publish_frames[key] = pamqp.frame.marshal(spec.Basic.Publish(
                exchange=message.exchange, routing_key=message.routing_key, mandatory=True),
                _CHANNEL)
        body, size = message.body, self._frame_max - 8
        parts = [publish, pamqp.frame.marshal(ContentHeader(
            body_size=len(body), properties=basic_properties(message)), _CHANNEL)]
        parts += [pamqp.frame.marshal(ContentBody(body[i:i + size]), _CHANNEL)
                  for i in range(0, len(body), size)]
        return b"".join(parts)

    def _await_confirm(self, tag: int, message: OutgoingMessage) -> bool:
        routed = True
        while True:
            frame = self._read()
            if isinstance(frame, spec.Basic.Return):
                routed = False  # its header and body follow; the ack comes after them
            elif isinstance(frame, spec.Basic.Ack) and frame.delivery_tag >= tag:
                return routed
            elif isinstance(frame, spec.Basic.Nack) and frame.delivery_tag >= tag:
                raise PublishNackedError(
                    f"RabbitMQ refused message {message.message_id} to {message.exchange!r} "
                    f"({message.routing_key}); it was not stored")

    # -- connection ---------------------------------------------------------------------------

    def _connect(self) -> None:
        problems = []
        context = self.settings.ssl_context()  # a bad CA or key file: ConfigurationError
        for host, port in self.settings.endpoints:
            try:
                self._handshake(host, port, context)
                return
            except (OSError, PAMQPException, EOFError, _ChannelClosed, HandshakeRefused) as error:
                self._drop()
                problems.append(explain(error, self.settings, host, port))
        raise connection_error(self.settings, problems)

    def _handshake(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        settings = self.settings
        self._deadline = time.monotonic() + settings.connect_timeout
        sock = socket.create_connection((host, port), timeout=settings.connect_timeout)
        self._socket, self._buffer, self._tag, self._channel_open = sock, bytearray(), 0, False
        self.blocked = None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # heartbeats are off
        if context is not None:
            sock = self._socket = context.wrap_socket(sock, server_hostname=settings.server_name(host))
        self._write(pamqp.frame.marshal(ProtocolHeader(), 0))
        self._expect(spec.Connection.Start)
        self._send_on(0, spec.Connection.StartOk(
            client_properties={"product": "eventyard", "connection_name": self.name,
                               "capabilities": _CAPABILITIES},
            mechanism="PLAIN", response=f"\0{settings.user}\0{settings.password}"))
        try:
            tune = self._expect(spec.Connection.Tune)
        except _ConnectionClosed as closed:
            raise HandshakeRefused("login", closed.frame.reply_code or 0,
                                   closed.frame.reply_text or "") from None
        except EOFError:  # a broker without authentication_failure_close just hangs up
            raise HandshakeRefused("login", 403, "connection closed after the login") from None
        self._frame_max = min(tune.frame_max or _FRAME_MAX, _FRAME_MAX)
        # Heartbeats off: this connection only talks while publishing; a dead one shows up as
        # an error on the next publish, which reconnects.
        self._send_on(0, spec.Connection.TuneOk(channel_max=tune.channel_max,
                                                frame_max=self._frame_max, heartbeat=0))
        self._send_on(0, spec.Connection.Open(virtual_host=settings.vhost))
        try:
            self._expect(spec.Connection.OpenOk)
        except _ConnectionClosed as closed:
            raise HandshakeRefused("vhost", closed.frame.reply_code or 0,
                                   closed.frame.reply_text or "") from None

    def _open_channel(self) -> None:
        self._send(spec.Channel.Open())
        self._expect(spec.Channel.OpenOk)
        self._send(spec.Confirm.Select())
        self._expect(spec.Confirm.SelectOk)
        self._tag, self._channel_open = 0, True

    def _drop(self) -> None:
        sock, self._socket = self._socket, None
        self._channel_open = False
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    # -- frames -------------------------------------------------------------------------------

    def _send(self, *frames: Any) -> None:
        self._send_on(_CHANNEL, *frames)

    def _send_on(self, channel: int, *frames: Any) -> None:
        self._write(b"".join(pamqp.frame.marshal(f, channel) for f in frames))

    def _write(self, data: bytes) -> None:
        """Write ``data`` by the deadline (``TimeoutError`` after it)."""
        sock = self._socket
        assert sock is not None
        sock.settimeout(self._remaining())
        sock.sendall(data)

    def _remaining(self) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        return remaining

    def _expect(self, kind: type) -> Any:
        frame = self._read()
        if not isinstance(frame, kind):
            raise EOFError(f"expected {kind.__name__}, got {type(frame).__name__}")
        return frame

    def _read(self) -> Any:
        """The next frame that matters (heartbeats skipped); raise on a close from the broker."""
        while True:
            channel, frame = self._read_frame()
            if isinstance(frame, Heartbeat):
                continue
            if isinstance(frame, spec.Connection.Blocked):
                self.blocked = frame.reason or "no reason given"
                continue
            if isinstance(frame, spec.Connection.Unblocked):
                self.blocked = None
                continue
            if isinstance(frame, spec.Connection.Close):
                with contextlib.suppress(OSError):
                    self._send_on(0, spec.Connection.CloseOk())
                raise _ConnectionClosed(frame)
            if isinstance(frame, spec.Channel.Close) and channel == _CHANNEL:
                self._send(spec.Channel.CloseOk())
                raise _ChannelClosed(frame)
            return frame

    def _read_frame(self) -> tuple[int, Any]:
        sock, buffer = self._socket, self._buffer
        assert sock is not None
        while True:
            if len(buffer) >= 7:
                end = 7 + _HEADER.unpack_from(buffer)[2] + 1
                if len(buffer) >= end:
                    raw = bytes(buffer[:end])
                    del buffer[:end]
                    _, channel, frame = pamqp.frame.unmarshal(raw)
                    return channel, frame
            sock.settimeout(self._remaining())
            data = sock.recv(65536)
            if not data:
                raise EOFError("RabbitMQ closed the connection")
            buffer += data


def handshake_refusal(settings: ConnectionSettings, host: str, port: int) -> HandshakeRefused | None:
    """The broker's own reason for refusing a login or vhost to ``settings`` (None if it did not).

    aiormq keeps the broker's words to itself when opening a vhost fails; this asks again.
    """
    client = BlockingPublisher(settings, "eventyard-diagnosis")
    try:
        client._handshake(host, port, settings.ssl_context())
    except HandshakeRefused as refusal:
        return refusal
    except (OSError, PAMQPException, EOFError, _ChannelClosed, ConfigurationError):
        return None
    finally:
        client._drop()
    return None
