"""The seed's registration story, end to end: ``python -m eventyard.demo [--broker URL]``.

``UserCreated`` is published; the mail and store handlers run; a flaky handler is retried and
succeeds; one that always fails ends in the dead letters (its failure headers are shown); a
command is dispatched and handled. On the in-memory broker (the default) a virtual clock lets
the retry delays pass instantly; ``--broker`` runs the same story on RabbitMQ.
"""

from __future__ import annotations

import argparse
import sys
import threading
import uuid
from collections.abc import Sequence

from meiga import Error, Failure, Result, isSuccess

from eventyard import (
    Command,
    CommandBus,
    ConsumerSettings,
    DomainEvent,
    DomainEventBus,
    EventyardError,
    MessageConfigurer,
    MessageConsumer,
    MessageSubscriber,
    TopologyOptions,
    Uuid,
)
from eventyard.buses import Broker
from eventyard.memory import MemoryBroker, VirtualClock
from eventyard.testing import MessageRecorder


class UserCreated(DomainEvent):
    """A user signed up."""

    user_id: Uuid
    email: str


class PersistUser(Command):
    """Store the new user."""

    user_id: Uuid
    email: str


class MailServerDown(Error):
    """The welcome mail could not be sent."""

    def __init__(self) -> None:
        super().__init__()
        self.message = "smtp.acme.test refused the connection"


_lock = threading.Lock()
_attempts: dict[str, int] = {}


def say(text: str) -> None:
    """Print one line of the story (handlers run on other threads)."""
    with _lock:
        print(text, flush=True)


def _attempt(name: str) -> int:
    with _lock:
        _attempts[name] = _attempts.get(name, 0) + 1
        return _attempts[name]


def send_mail_handler(event: UserCreated) -> Result[bool, Error]:
    say(f"  send_mail_handler     mails {event.email}")
    return isSuccess


def update_crm_handler(event: UserCreated) -> Result[bool, Error]:
    attempt = _attempt("crm")
    if attempt == 1:
        say("  update_crm_handler    attempt 1: CRM busy -> failure, will be retried")
        return Failure(Error())
    say(f"  update_crm_handler    attempt {attempt}: CRM updated")
    return isSuccess


def send_welcome_gift_handler(event: UserCreated) -> Result[bool, Error]:
    attempt = _attempt("gift")
    say(f"  send_welcome_gift     attempt {attempt}: mail server down -> failure")
    return Failure(MailServerDown())


def persist_user_handler(command: PersistUser) -> None:
    say(f"  persist_user_handler  stores user {command.user_id} ({command.email})")


def store_handler(message: DomainEvent | Command) -> None:
    say(f"  store                 keeps {message.get_message_name()} for metrics")


def connect(url: str | None) -> Broker:
    """The in-memory broker, or RabbitMQ at ``url``."""
    if url is None:
        return MemoryBroker(clock=VirtualClock(autojump=True), name="eventyard-demo")
    try:
        from eventyard.rabbitmq import RabbitMqConnector
    except ImportError as error:
        raise SystemExit(f"--broker needs the RabbitMQ adapter: pip install 'eventyard[rabbitmq]' "
                         f"({error})") from None
    return RabbitMqConnector(url)


def wait_until(broker: Broker, recorder: MessageRecorder, handled: int, dead: int,
               timeout: float) -> None:
    """Wait until the story so far is over (``handled`` successes, ``dead`` dead letters)."""
    if isinstance(broker, MemoryBroker):
        broker.wait_until_idle(timeout)  # retries included: the virtual clock skips their delay
        return
    recorder.wait_for(lambda r: len(r.handled()) >= handled and len(r.dead_lettered()) >= dead,
                      timeout)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="demo.py", description="eventyard's registration story, on the in-memory broker "
        "(default) or on RabbitMQ.")
    parser.add_argument("--broker", metavar="AMQP_URL",
                        help="run on RabbitMQ (amqp://user:pass@host:5672/) instead of in memory")
    parser.add_argument("--max-retries", type=int, default=2, help="retries before a dead letter (2)")
    parser.add_argument("--retry-ttl", type=int, default=5000, metavar="MS",
                        help="delay before a retry, in ms (5000; instant in memory)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each step")
    parser.add_argument("--keep", action="store_true",
                        help="on RabbitMQ, leave the queues and the dead letter for the CLI and the "
                        "console to look at (deleted otherwise)")
    args = parser.parse_args(argv)

    organization = "acme" if args.broker is None else f"demo{uuid.uuid4().hex[:6]}"
    service = "registration"
    broker = connect(args.broker)
    recorder = MessageRecorder()
    subscribers = [
        MessageSubscriber.from_message(UserCreated, [send_mail_handler, update_crm_handler,
                                                     send_welcome_gift_handler]),
        MessageSubscriber.from_message(PersistUser, [persist_user_handler]),
        MessageSubscriber.all_messages([store_handler]),
    ]
    where = "the in-memory broker" if args.broker is None else "RabbitMQ"
    say(f"eventyard demo: organization {organization!r}, service {service!r}, on {where}")
    # The store queue is one per vhost, not per organisation: a throwaway one on a shared broker.
    store_queue = "store" if args.broker is None else f"store_{organization}"
    configurer = MessageConfigurer(broker, organization, service, options=TopologyOptions(
        retry_ttl_ms=args.retry_ttl, store_queue=store_queue))
    configurer.configure_subscribers(subscribers)
    consumer = MessageConsumer(broker, organization, service, args.max_retries, observers=[recorder],
                               settings=ConsumerSettings(store_queue=store_queue))
    consumer.add_subscribers(subscribers)
    consumer.start()
    try:
        user = UserCreated(user_id=Uuid.v4(), email="ann@acme.test")
        say(f"\n1. publish UserCreated (user {user.user_id})")
        DomainEventBus(broker, organization, service).publish(user)
        wait_until(broker, recorder, handled=3, dead=1, timeout=args.timeout)
        say("\n2. dispatch PersistUser")
        CommandBus(broker, organization, service).dispatch(
            PersistUser(user_id=user.user_id, email=user.email))
        wait_until(broker, recorder, handled=5, dead=1, timeout=args.timeout)
    finally:
        consumer.stop()
    report(broker, recorder, keep=args.keep)
    if args.broker is not None and args.keep:
        say(f"\nkept on RabbitMQ: look with `eventyard dlq list -o {organization} -s {service}` or "
            f"`eventyard console -o {organization} -s {service}`; delete with `eventyard "
            f"dlq discard -o {organization} -s {service} -y` and the management UI")
    elif args.broker is not None:
        configurer.clear_subscribers(subscribers)
    close = getattr(broker, "close", None)
    if callable(close):
        close()
    return 0


def report(broker: Broker, recorder: MessageRecorder, *, keep: bool = False) -> None:
    """Print what happened, and the dead letters with their failure headers."""
    print(f"\n3. outcome: handled {len(recorder.handled())}, retried {len(recorder.retried())}, "
          f"dead-lettered {len(recorder.dead_lettered())}")
    if not isinstance(broker, MemoryBroker):
        if not keep:
            print("   (the dead letter was in RabbitMQ; the demo now deletes its throwaway topology)")
        return
    for letter in broker.dead_letters():
        print(f"\n   dead letter in {letter.queue}")
        for name, value in letter.failure.items():
            if name != "failure_stack":
                print(f"     {name:20} {value}")
    print(f"\n   virtual clock: {broker.clock.now():.1f} s passed (the retry delays) in no real time")


def run(argv: Sequence[str] | None = None) -> int:
    """``main`` with eventyard errors reported in one line (exit code 1)."""
    try:
        return main(argv)
    except EventyardError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run())
