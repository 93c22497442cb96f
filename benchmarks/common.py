"""What every benchmark program shares: the broker, the message, the topology, prefilling."""

from __future__ import annotations

import os
import platform
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pika

from eventyard import DomainEvent, MessageSubscriber, Uuid, codec
from eventyard.subscribers import subscriptions_of
from eventyard.topology import Topology, TopologyOptions, build_topology, subscription_queue

URL = os.environ.get("EVENTYARD_BENCH_AMQP_URL") or os.environ.get(
    "EVENTYARD_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
SERVICE = "bench"


class BenchEvent(DomainEvent):
    """The benchmark's event: a user id like the seed's, a sequence number and a send time."""

    user_id: Uuid
    seq: int = 0
    sent_at: float = 0.0


def noop(event: BenchEvent) -> None:
    """Sync no-op handler (its name names the queue)."""


async def anoop(event: BenchEvent) -> None:
    """Async no-op handler."""


def subscriber(handler: Any) -> MessageSubscriber:
    """A subscriber of ``BenchEvent`` with ``handler``."""
    return MessageSubscriber.from_message(BenchEvent, [handler])


def new_event(seq: int = 0, sent_at: float = 0.0) -> BenchEvent:
    """A fresh event."""
    return BenchEvent(user_id=Uuid.v4(), seq=seq, sent_at=sent_at)


@dataclass(frozen=True)
class Plan:
    """Names of one benchmark's topology (unique per run; the broker is shared)."""

    org: str
    handler: str
    retry_ttl_ms: int = 0

    @property
    def topology(self) -> Topology:
        subs = subscriptions_of([subscriber(_named(self.handler))])
        return build_topology(self.org, SERVICE, subs,
                              TopologyOptions(store=False, retry_ttl_ms=self.retry_ttl_ms))

    @property
    def queue(self) -> str:
        sub = subscriptions_of([subscriber(_named(self.handler))])[0]
        return subscription_queue(self.org, SERVICE, sub, "store")

    @property
    def exchange(self) -> str:
        return f"{self.org}.{SERVICE}"

    @property
    def routing_key(self) -> str:
        return f"{self.org}.{SERVICE}.1.event.{BenchEvent.message_name.replace('.', '_')}"

    def to_dict(self) -> dict[str, Any]:
        return {"org": self.org, "handler": self.handler, "retry_ttl_ms": self.retry_ttl_ms}


def _named(name: str) -> Any:
    return {"noop": noop, "anoop": anoop}[name]


def new_plan(handler: str, retry_ttl_ms: int = 0) -> Plan:
    return Plan(f"bench{uuid.uuid4().hex[:8]}", handler, retry_ttl_ms)


def blocking() -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(URL))


@contextmanager
def declared(plan: Plan) -> Iterator[Plan]:
    """Declare ``plan``'s topology for the duration (deleted after, messages included)."""
    topology = plan.topology
    connection = blocking()
    channel = connection.channel()
    try:
        for exchange in topology.exchanges:
            channel.exchange_declare(exchange.name, exchange.type, durable=True)
        for queue in topology.queues:
            channel.queue_declare(queue.name, durable=True, arguments=dict(queue.arguments))
        for binding in topology.bindings:
            channel.queue_bind(binding.queue, binding.exchange, binding.routing_key)
    finally:
        connection.close()
    try:
        yield plan
    finally:
        # A connection of its own: one held idle through a long case misses its heartbeats
        # and the broker drops it, which left the case's queues behind.
        connection = blocking()
        channel = connection.channel()
        for queue in topology.queues:
            channel.queue_delete(queue.name)
        for exchange in topology.exchanges:
            channel.exchange_delete(exchange.name)
        connection.close()


def purge(plan: Plan) -> None:
    connection = blocking()
    channel = connection.channel()
    for queue in plan.topology.queues:
        channel.queue_purge(queue.name)
    connection.close()


def properties(event: BenchEvent) -> pika.BasicProperties:
    """The AMQP properties eventyard sets, for raw pika programs doing the same work."""
    return pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                message_id=event.get_message_id(), type=event.message_name,
                                timestamp=int(time.time()))


def prefill(plan: Plan, count: int) -> None:
    """Put ``count`` persistent eventyard-encoded events in ``plan``'s queue and wait for them."""
    connection = blocking()
    channel = connection.channel()
    for seq in range(count):
        event = new_event(seq)
        channel.basic_publish(plan.exchange, plan.routing_key, codec.encode(event), properties(event))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ok = channel.queue_declare(plan.queue, passive=True)
        if ok.method.message_count >= count:
            break
        connection.sleep(0.05)
    connection.close()


def queue_depth(plan: Plan, queue: str | None = None) -> int:
    connection = blocking()
    ok = connection.channel().queue_declare(queue or plan.queue, passive=True)
    connection.close()
    return int(ok.method.message_count)


def machine() -> dict[str, str]:
    """Where the numbers come from."""
    connection = blocking()
    version = connection._impl.server_properties.get("version", b"?")
    connection.close()
    if isinstance(version, bytes):
        version = version.decode()
    mem_kb = 0
    cpu = platform.processor() or "?"
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                       cpu)
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    def installed(name: str) -> str:
        try:
            return f"{name} {dist_version(name)}"
        except PackageNotFoundError:
            return f"{name} (not installed)"

    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "rabbitmq": str(version),
        "python": platform.python_version(),
        "os": platform.platform(terse=True),
        "clients": ", ".join(installed(name) for name in ("pika", "aiormq", "aio-pika", "pamqp",
                                                          "pydantic", "faststream", "petisco")),
    }


def rss_kib() -> int:
    """This process's resident memory."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024
