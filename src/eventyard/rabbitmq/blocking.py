"""One confirmed publish at a time, on a plain socket in the calling thread.

The sync facade's single ``publish()`` spends most of its time in the event loop's hops (a
write queue and a writer task out, a frame queue and a channel task back), not on the wire.
``BlockingPublisher`` holds one AMQP connection with a confirming channel and, like a blocking
client, writes the message's frames and reads until the broker acks, nacks or returns it. It
serves one caller at a time; a caller that finds it busy takes the event-loop path instead, so
publishing from many threads still overlaps.
"""

from __future__ import annotations

import threading
import time

import pamqp.frame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader

from eventyard.errors import (
    BrokerConnectionError,
    ConfigurationError,
    PublishNackedError,
    PublishTimeoutError,
)
from eventyard.ports import OutgoingMessage
from eventyard.rabbitmq.blocking_connection import (
    CHANNEL,
    BlockingConnection,
    ChannelClosed,
    handshake_refusal,
)
from eventyard.rabbitmq.properties import basic_properties
from eventyard.rabbitmq.settings import ConnectionSettings

__all__ = ["BlockingPublisher", "blocked_message", "handshake_refusal", "timeout_error"]


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


class BlockingPublisher(BlockingConnection):
    """A confirming channel on a socket of its own; ``try_publish`` never waits for another caller."""

    def __init__(self, settings: ConnectionSettings, name: str = "eventyard-blocking") -> None:
        super().__init__(settings, name)
        self._lock = threading.Lock()
        self._publish_frames: dict[tuple[str, str], bytes] = {}  # marshalled Basic.Publish

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
        except PublishNackedError:
            # RabbitMQ 3.10 may go on refusing on this channel (docs/cluster.md): a new one.
            self._drop()
            raise
        except TimeoutError:
            # The frames may sit half-written and the confirm may still come: this
            # connection's state is unknown, so it goes; the next publish opens a new one.
            self._drop()
            raise timeout_error(f"message {message.message_id} to {message.exchange!r}",
                                self.settings.publish_timeout, self.blocked) from None
        except ChannelClosed as closed:
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
                CHANNEL)
        body, size = message.body, self._frame_max - 8
        parts = [publish, pamqp.frame.marshal(ContentHeader(
            body_size=len(body), properties=basic_properties(message)), CHANNEL)]
        parts += [pamqp.frame.marshal(ContentBody(body[i:i + size]), CHANNEL)
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
