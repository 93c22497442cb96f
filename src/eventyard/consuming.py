"""Consuming: the consumer's lifecycle and settings (DESIGN §5).

Written once on the ``Transport`` port; the RabbitMQ and in-memory consumers are this class
with their own transport. It starts one ``QueueWorker`` per subscription (dispatching.py), which
runs the handlers and hands each outcome to its ``Settler`` (settling.py: ack, retry,
dead-letter, poison), whose copies ``Forwarder`` publishes (forwarding.py). A failed message's
original is acked only after its copy is confirmed; every failure path is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from eventyard.chaos import EventChaos
from eventyard.dispatching import QueueWorker, policy_of
from eventyard.errors import ConfigurationError, QueueNotFoundError
from eventyard.observability import instrument
from eventyard.ports import Consumption, Transport, TransportSource
from eventyard.retry import RetryPolicy
from eventyard.running import DaemonThreadPool
from eventyard.settling import ConsumerEvent, EventKind, Observer
from eventyard.subscribers import (
    MessageSubscriber,
    Subscription,
    check_retry_policy,
    check_timeout,
    is_async_handler,
    subscriptions_of,
)
from eventyard.topology import (
    TopologyOptions,
    build_topology,
    delay_topology,
    route_of,
    subscription_queue,
)
from eventyard.watchdog import DEFAULT_HANDLER_TIMEOUT, watch

__all__ = ["AsyncMessageConsumer", "ConsumerEvent", "ConsumerSettings", "EventKind", "Observer"]

logger = logging.getLogger(__name__)

_CANCEL_SECONDS = 1.0  # for cancelled tasks to unwind at a shutdown timeout


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerSettings:
    """How a consumer takes messages. ``concurrency`` is per queue; 1 keeps queue order.

    ``retry`` is the retry policy of subscribers that set none (None: the fixed delay of the
    retry queue, with the consumer's ``max_retries``); ``handler_timeout`` bounds each handler run
    of subscribers that set no ``timeout``, in seconds (``DEFAULT_HANDLER_TIMEOUT``, 900, half of
    RabbitMQ's default ``consumer_timeout``; None: no bound, a delivery stays unacked as long).
    """

    prefetch: int = 10
    concurrency: int = 1
    shutdown_timeout: float = 30.0
    store_queue: str = "store"
    declare_missing: bool = True
    retry: RetryPolicy | None = None
    handler_timeout: float | None = DEFAULT_HANDLER_TIMEOUT

    def __post_init__(self) -> None:
        check_retry_policy(self.retry, "ConsumerSettings.retry")
        check_timeout(self.handler_timeout, "ConsumerSettings.handler_timeout")
        if self.prefetch < 1:
            raise ConfigurationError(f"prefetch must be >= 1, not {self.prefetch}")
        if self.concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, not {self.concurrency}")


class AsyncMessageConsumer:
    """Consumes every subscriber's queue on one transport."""

    def __init__(
        self,
        transports: TransportSource,
        organization: str,
        service: str,
        max_retries: int = 5,
        *,
        settings: ConsumerSettings | None = None,
        chaos: EventChaos | None = None,
        observers: Sequence[Observer] = (),
        options: TopologyOptions | None = None,
    ) -> None:
        self._transports = transports
        # The topology options the service was configured with: they name the store queue and
        # shape the queues this consumer declares when nobody configured them.
        self.options = options
        self.organization = organization
        self.service = service
        self.policy = RetryPolicy(max_retries)
        self.settings = settings or ConsumerSettings()
        self.chaos = chaos
        self._observers = list(observers)
        self._subscribers: list[MessageSubscriber] = []
        self._consumptions: list[Consumption] = []
        self._running: set[asyncio.Task[None]] = set()
        self._executor: DaemonThreadPool | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._transport: Transport | None = None
        self._stopped = asyncio.Event()
        self._stopping = False

    @property
    def store_queue(self) -> str:
        """The store queue's name: the options' if given, else the settings'."""
        if self.options is not None:
            return self.options.store_queue
        return self.settings.store_queue

    def add_subscribers(self, subscribers: Sequence[MessageSubscriber]) -> None:
        """Add subscribers; checked now (a command with two handlers raises here)."""
        subscriptions_of([*self._subscribers, *subscribers])
        self._subscribers.extend(subscribers)

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer`` for everything this consumer does with a delivery."""
        self._observers.append(observer)

    def handler_names(self) -> dict[str, str]:
        """The queue of each subscription -> the name of its handler (what events name)."""
        return {subscription_queue(self.organization, self.service, s, self.store_queue):
                s.handler_name for s in subscriptions_of(self._subscribers)}

    @property
    def is_running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return bool(self._consumptions)

    async def start(self) -> None:
        """Start consuming every subscription's queue; return once consuming has begun."""
        if self._consumptions:
            return
        subscriptions = subscriptions_of(self._subscribers)
        if not subscriptions:
            raise ConfigurationError("no subscribers: call add_subscribers() before start()")
        self._stopped, self._stopping, self._watchdog = asyncio.Event(), False, None
        instrument()
        self._transport = await self._transports()
        if any(not is_async_handler(h) for s in subscriptions for h in s.handlers):
            threads = self.settings.concurrency * len(subscriptions)
            self._executor = DaemonThreadPool(max(1, min(64, threads)), "eventyard-handler")
        try:
            workers = []
            for subscription in subscriptions:
                queue = subscription_queue(self.organization, self.service, subscription,
                                           self.store_queue)
                workers.append(worker := self._worker(subscription, queue))
                self._consumptions.append(await self._consume(subscription, queue, worker))
            if watched := [w.watched for w in workers if w.watched is not None]:
                self._watchdog = asyncio.get_running_loop().create_task(watch(watched))
            if self.settings.declare_missing and (delayed := [w for w in workers if w.delayed]):
                await self._declare_delays(delayed)
        except BaseException:
            await self.stop()
            raise
        logger.info("consuming %d queue(s) of %s.%s", len(self._consumptions),
                    self.organization, self.service)

    async def _declare_delays(self, workers: list[QueueWorker]) -> None:
        """Declare the delay ladders that policies with delays of their own use (idempotent:
        a policy given to the consumer, not to the configurer, still finds them)."""
        transport = self._transport
        assert transport is not None
        owners: dict[str, list[str]] = {}
        for worker in workers:
            owners.setdefault(worker.route.main_exchange, []).append(worker.queue)
        for main, queues in owners.items():
            owner = main[len(self.organization) + 1:]
            await transport.declare(delay_topology(self.organization, owner, queues,
                                                   self.options))

    async def _consume(self, subscription: Subscription, queue: str,
                       worker: QueueWorker) -> Consumption:
        transport = self._transport
        assert transport is not None
        try:
            return await transport.consume(queue, worker.on_delivery, prefetch=self.settings.prefetch)
        except QueueNotFoundError:
            if not self.settings.declare_missing:
                raise
        # Nobody configured this subscriber yet: declare its queues with the default options,
        # as the seed's consumer snippet expects. A configurer chooses other options up front.
        options = dataclasses.replace(self.options or TopologyOptions(),
                                      store_queue=self.store_queue,
                                      max_retries=self.policy.max_retries,
                                      store=subscription.is_store)
        await transport.declare(build_topology(self.organization, self.service, [subscription],
                                               options))
        logger.warning("declared the missing queues of %s (retry delay %d ms); configure "
                       "subscribers explicitly to choose other options", queue, options.retry_ttl_ms)
        return await transport.consume(queue, worker.on_delivery, prefetch=self.settings.prefetch)

    async def stop(self, timeout: float | None = None) -> None:
        """Take no new messages, let running handlers finish (bounded), then release."""
        self._stopping = True
        consumptions, self._consumptions = self._consumptions, []
        for consumption in consumptions:
            with contextlib.suppress(Exception):
                await consumption.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.settings.shutdown_timeout)
        this = asyncio.current_task()
        # Tasks may start while others finish (a delivery that was waiting for a slot, a copy
        # being published): wait for every one of them, not for those running at first.
        while pending := self._running - {this}:
            left = deadline - loop.time()
            if left <= 0:
                for task in pending:  # hung: their messages stay unacked and come back
                    task.cancel()
                await asyncio.wait(pending, timeout=_CANCEL_SECONDS)
                break
            await asyncio.wait(pending, timeout=left)
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        transport, self._transport = self._transport, None
        if transport is not None:  # the consumer's own connection: unacked messages go back
            with contextlib.suppress(Exception):
                await transport.close()
        self._stopped.set()
        if consumptions:
            logger.info("stopped consuming %d queue(s) of %s.%s", len(consumptions),
                        self.organization, self.service)

    async def run_until_signal(self) -> None:
        """Start, consume until SIGINT or SIGTERM, then stop gracefully."""
        await self.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
        waiters = {asyncio.ensure_future(self._stopped.wait()), asyncio.ensure_future(stop.wait())}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.stop()

    def _worker(self, subscription: Subscription, queue: str) -> QueueWorker:
        settings = self.settings
        return QueueWorker(self, subscription, queue,
                           route=route_of(self.organization, self.service, queue, self.store_queue),
                           policy=policy_of(subscription, settings.retry, self.policy),
                           timeout=subscription.timeout or settings.handler_timeout,
                           concurrency=settings.concurrency)

    # What its queue workers use of it (dispatching.WorkerHost).

    @property
    def transport(self) -> Transport | None:
        """The transport it consumes on (None when it is not running)."""
        return self._transport

    @property
    def executor(self) -> DaemonThreadPool | None:
        """The pool that runs sync handlers (None when every handler is async)."""
        return self._executor

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` has begun."""
        return self._stopping

    @property
    def observed(self) -> bool:
        """True if any observer listens."""
        return bool(self._observers)

    def notify(self, event: ConsumerEvent) -> None:
        """Hand ``event`` to every observer; an observer that raises is logged."""
        for observer in self._observers:
            try:
                observer(event)
            except Exception:  # an observer must never break consuming
                logger.exception("consumer observer failed")

    def track(self, task: asyncio.Task[None]) -> None:
        """Have ``stop()`` wait for ``task`` (once, however often it is tracked)."""
        if task in self._running:
            return
        self._running.add(task)
        task.add_done_callback(self._running.discard)
