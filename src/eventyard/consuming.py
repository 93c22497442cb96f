"""Consuming: run handlers for each delivery, then ack, retry or dead-letter it (DESIGN §5).

Written once on the ``Transport`` port; the RabbitMQ and in-memory consumers are this class
with their own transport. A failed message goes to its subscriber's retry queue, or to its
dead-letter queue when no retries are left, and the original is acked only after that copy is
confirmed. A body that cannot be decoded is dead-lettered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from eventyard import codec
from eventyard.chaos import EventChaos, SimulatedChaosFailure
from eventyard.errors import BrokerConnectionError, ConfigurationError, MessageDecodeError, QueueNotFoundError
from eventyard.messages import Message
from eventyard.ports import Consumption, Delivery, OutgoingMessage, Transport, TransportSource
from eventyard.retry import Decision, RetryPolicy, failure_headers, redelivery_count
from eventyard.subscribers import (
    SUCCESS,
    MessageSubscriber,
    Outcome,
    Subscription,
    is_async_handler,
    outcome_of,
    outcome_of_exception,
    subscriptions_of,
)
from eventyard.topology import TopologyOptions, build_topology, route_of, subscription_queue

logger = logging.getLogger(__name__)

_REQUEUE_PAUSE_SECONDS = 1.0
# Sync handlers of an ordered queue run in batches on the thread pool (one hand-off per batch,
# not per message); a batch returns after this long so its acks are never held back for long.
_BATCH_SECONDS = 0.02
_BATCH_LIMIT = 512

EventKind = Literal["handled", "failed", "retried", "dead_lettered", "poison", "chaos_nack"]


@dataclass(frozen=True, slots=True)
class ConsumerEvent:
    """Something a consumer did with one delivery; observers receive these."""

    kind: EventKind
    queue: str
    message: Message | None
    redelivery_count: int
    outcome: Outcome = SUCCESS
    message_id: str | None = None


Observer = Callable[[ConsumerEvent], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerSettings:
    """How a consumer takes messages. ``concurrency`` is per queue; 1 keeps queue order."""

    prefetch: int = 10
    concurrency: int = 1
    shutdown_timeout: float = 30.0
    store_queue: str = "store"
    declare_missing: bool = True

    def __post_init__(self) -> None:
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
        self._executor: ThreadPoolExecutor | None = None
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
        self._stopped = asyncio.Event()
        self._stopping = False
        self._transport = await self._transports()
        if any(not is_async_handler(h) for s in subscriptions for h in s.handlers):
            workers = self.settings.concurrency * len(subscriptions)
            self._executor = ThreadPoolExecutor(max(1, min(64, workers)),
                                                thread_name_prefix="eventyard-handler")
        try:
            for subscription in subscriptions:
                queue = subscription_queue(self.organization, self.service, subscription,
                                           self.store_queue)
                worker = _QueueWorker(self, subscription, queue)
                self._consumptions.append(await self._consume(subscription, queue, worker))
        except BaseException:
            await self.stop()
            raise
        logger.info("consuming %d queue(s) of %s.%s", len(self._consumptions),
                    self.organization, self.service)

    async def _consume(self, subscription: Subscription, queue: str,
                       worker: _QueueWorker) -> Consumption:
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
        if self._running:
            _, pending = await asyncio.wait(
                set(self._running), timeout=timeout or self.settings.shutdown_timeout)
            for task in pending:
                task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        transport, self._transport = self._transport, None
        if transport is not None:  # the consumer's own connection: unacked messages go back
            with contextlib.suppress(Exception):
                await transport.close()
        self._stopped.set()

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

    def _notify(self, event: ConsumerEvent) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except Exception:  # an observer must never break consuming
                logger.exception("consumer observer failed")

    def _track(self, task: asyncio.Task[None]) -> None:
        self._running.add(task)
        task.add_done_callback(self._running.discard)


class _QueueWorker:
    """Processes the deliveries of one subscription's queue."""

    def __init__(self, consumer: AsyncMessageConsumer, subscription: Subscription,
                 queue: str) -> None:
        self.consumer = consumer
        self.subscription = subscription
        self.queue = queue
        self.route = route_of(consumer.organization, consumer.service, queue, consumer.store_queue)
        self.handlers = [(h, is_async_handler(h)) for h in subscription.handlers]
        self.slots = asyncio.Semaphore(consumer.settings.concurrency)
        self.ordered = consumer.settings.concurrency == 1
        self.batched = (self.ordered and consumer.chaos is None
                        and not any(is_async for _, is_async in self.handlers))
        self.backlog: deque[Delivery] = deque()
        self.drainer: asyncio.Task[None] | None = None

    async def on_delivery(self, delivery: Delivery) -> None:
        if self.batched:
            self.backlog.append(delivery)
            if self.drainer is None or self.drainer.done():
                self.drainer = asyncio.get_running_loop().create_task(self._drain())
                self.consumer._track(self.drainer)
            return
        if self.ordered:
            task = asyncio.current_task()
            if task is not None and task not in self.consumer._running:
                self.consumer._track(task)
            await self.process(delivery)
            return
        await self.slots.acquire()
        task = asyncio.create_task(self.process(delivery))
        self.consumer._track(task)
        task.add_done_callback(lambda _: self.slots.release())

    async def process(self, delivery: Delivery) -> None:
        count = redelivery_count(delivery.headers)
        try:
            chaos = self.consumer.chaos
            action = (chaos.decide(delivery.routing_key, self.queue, delivery.headers)
                      if chaos is not None else None)
            if action is not None and action.nack:
                await delivery.reject(requeue=True)
                self.consumer._notify(ConsumerEvent("chaos_nack", self.queue, None, count,
                                                    message_id=delivery.message_id))
                return
            try:
                message = codec.decode(delivery.body, expected=self.subscription.message_class,
                                       allow_unknown=self.subscription.is_store)
            except MessageDecodeError as error:
                await self._poison(delivery, error, count)
                return
            if action is not None and action.delay_seconds:
                await asyncio.sleep(action.delay_seconds)
            if action is not None and action.fail:
                outcome = outcome_of_exception(SimulatedChaosFailure("chaos: simulated failure"))
            else:
                outcome = await self._run_handlers(message)
            await self._settle(delivery, message, outcome, count)
        except Exception as error:
            await self._recover(delivery, error)

    async def _recover(self, delivery: Delivery, error: Exception) -> None:
        if isinstance(error, BrokerConnectionError):
            # The connection dropped before the retry copy was confirmed: the original was
            # never acked, so the broker delivers it again once we have reconnected.
            logger.warning("lost the connection settling a delivery from %s (%s); it will be "
                           "delivered again", self.queue, error)
            return
        # Our own step failed (e.g. the retry queue is gone): hand the message back, after
        # a pause so a broken topology does not spin, and let the broker deliver it again.
        logger.error("could not settle a delivery from %s; requeueing it", self.queue,
                     exc_info=error)
        await asyncio.sleep(_REQUEUE_PAUSE_SECONDS)
        with contextlib.suppress(Exception):
            await delivery.reject(requeue=True)

    async def _drain(self) -> None:
        """Process the backlog of an ordered queue whose handlers are all sync, in batches."""
        backlog = self.backlog
        while backlog:
            if self.consumer._stopping:  # not started: back to the queue
                while backlog:
                    with contextlib.suppress(Exception):
                        await backlog.popleft().reject(requeue=True)
                return
            batch = [backlog.popleft() for _ in range(min(len(backlog), _BATCH_LIMIT))]
            await self._process_batch(batch)

    async def _process_batch(self, batch: list[Delivery]) -> None:
        decoded: list[tuple[Delivery, Message, int]] = []
        for delivery in batch:
            count = redelivery_count(delivery.headers)
            try:
                message = codec.decode(delivery.body, expected=self.subscription.message_class,
                                       allow_unknown=self.subscription.is_store)
            except MessageDecodeError as error:
                try:
                    await self._poison(delivery, error, count)
                except Exception as failure:
                    await self._recover(delivery, failure)
                continue
            decoded.append((delivery, message, count))
        loop = asyncio.get_running_loop()
        done = 0
        while done < len(decoded):
            outcomes = await loop.run_in_executor(
                self.consumer._executor, self._handle_in_thread, [m for _, m, _ in decoded[done:]])
            for (delivery, message, count), outcome in zip(decoded[done:], outcomes, strict=False):
                try:
                    await self._settle(delivery, message, outcome, count)
                except Exception as error:
                    await self._recover(delivery, error)
            done += len(outcomes)

    def _handle_in_thread(self, messages: list[Message]) -> list[Outcome]:
        """Run the sync handlers for ``messages`` in order, for at most about ``_BATCH_SECONDS``."""
        deadline = time.monotonic() + _BATCH_SECONDS
        outcomes = []
        for message in messages:
            outcome = SUCCESS
            for handler, _ in self.handlers:
                try:
                    outcome = outcome_of(handler(message))
                except Exception as error:
                    outcome = outcome_of_exception(error)
                if not outcome.success:
                    break
            outcomes.append(outcome)
            if time.monotonic() >= deadline:
                break
        return outcomes

    async def _run_handlers(self, message: Message) -> Outcome:
        for handler, is_async in self.handlers:
            try:
                if is_async:
                    returned: Any = await handler(message)
                else:
                    loop = asyncio.get_running_loop()
                    returned = await loop.run_in_executor(self.consumer._executor, handler, message)
            except Exception as error:
                outcome = outcome_of_exception(error)
            else:
                outcome = outcome_of(returned)
            if not outcome.success:
                return outcome
        return SUCCESS

    async def _settle(self, delivery: Delivery, message: Message, outcome: Outcome,
                      count: int) -> None:
        decision = self.consumer.policy.decide(outcome, count)
        notify = self.consumer._notify
        if decision is Decision.ACK:
            await delivery.ack()
            if self.consumer._observers:
                notify(ConsumerEvent("handled", self.queue, message, count,
                                     message_id=message.get_message_id()))
            return
        notify(ConsumerEvent("failed", self.queue, message, count, outcome,
                             message.get_message_id()))
        retry = decision is Decision.RETRY
        if self.ordered:
            # The copy leaves this queue's order anyway: publish it (and ack the original once
            # it is confirmed) while the next deliveries run, not before them.
            task = asyncio.get_running_loop().create_task(
                self._forward_guarded(delivery, message, outcome, count, retry))
            self.consumer._track(task)
            return
        await self._forward_and_notify(delivery, message, outcome, count, retry)

    async def _forward_and_notify(self, delivery: Delivery, message: Message, outcome: Outcome,
                                  count: int, retry: bool) -> None:
        await self._forward(delivery, outcome, count + 1 if retry else count, retry)
        self.consumer._notify(ConsumerEvent("retried" if retry else "dead_lettered", self.queue,
                                            message, count, outcome, message.get_message_id()))

    async def _forward_guarded(self, delivery: Delivery, message: Message, outcome: Outcome,
                               count: int, retry: bool) -> None:
        try:
            await self._forward_and_notify(delivery, message, outcome, count, retry)
        except Exception as error:
            await self._recover(delivery, error)

    async def _poison(self, delivery: Delivery, error: MessageDecodeError, count: int) -> None:
        logger.error("dead-lettering an undecodable message from %s: %s", self.queue, error)
        await self._forward(delivery, outcome_of_exception(error), count, retry=False)
        self.consumer._notify(ConsumerEvent("poison", self.queue, None, count,
                                            outcome_of_exception(error), delivery.message_id))

    async def _forward(self, delivery: Delivery, outcome: Outcome, retries: int,
                       retry: bool) -> None:
        """Publish the failed message's copy (retry or dead letter), then ack the original."""
        route = self.route
        copy = OutgoingMessage(
            exchange=route.retry_exchange if retry else route.dead_letter_exchange,
            routing_key=route.retry_key if retry else route.dead_letter_key,
            body=delivery.body,
            headers=failure_headers(delivery.headers, outcome, queue=self.queue,
                                    routing_key=delivery.routing_key, retries=retries),
            message_id=delivery.message_id,
            type=delivery.type,
            timestamp=delivery.timestamp,
        )
        transport = self.consumer._transport
        assert transport is not None
        unroutable = await transport.publish([copy])
        if unroutable:
            raise ConfigurationError(
                f"{copy.exchange} routed {copy.routing_key} to no queue: the topology of "
                f"{self.queue} is missing; run the configurer (message left unacked)"
            )
        await delivery.ack()
