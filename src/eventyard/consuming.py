"""Consuming: run handlers for each delivery, then ack, retry or dead-letter it (DESIGN §5).

Written once on the ``Transport`` port; the RabbitMQ and in-memory consumers are this class
with their own transport. A failed message goes to its subscriber's retry queue, or to its
dead-letter queue when no retries are left, and the original is acked only after that copy is
confirmed. A body that cannot be decoded (anything raised while decoding) is dead-lettered at
once. Every failure path is bounded: a copy's headers always fit the connection's frame; a
message whose copy was cut off by a lost connection is dead-lettered when it comes back, with a
summary of its headers, and the broker dead-letters it itself if even that is cut off; a copy
that cannot be sent at all is dead-lettered by the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

from eventyard import codec, naming
from eventyard.chaos import EventChaos, SimulatedChaosFailure
from eventyard.errors import (
    BrokerConnectionError,
    ConfigurationError,
    HandlerTimeout,
    MessageDecodeError,
    PublishNackedError,
    QueueNotFoundError,
)
from eventyard.headers import encodable, header_budget
from eventyard.messages import Message
from eventyard.observability import HANDLING, INSTRUMENTS, fields, instrument
from eventyard.ports import (
    UNREADABLE_PROPERTIES,
    Consumption,
    Delivery,
    OutgoingMessage,
    Transport,
    TransportSource,
    frame_max_of,
)
from eventyard.retry import (
    DELAY_LEFT,
    FAILURE_HEADERS_DROPPED,
    Decision,
    RetryPolicy,
    deaths_are_valid,
    delay_hop,
    delay_left,
    failure_headers,
    redelivery_count,
)
from eventyard.running import DaemonThreadPool, call_sync_handler, failure_of
from eventyard.subscribers import (
    SUCCESS,
    MessageSubscriber,
    Outcome,
    Subscription,
    check_retry_policy,
    check_timeout,
    is_async_handler,
    outcome_of,
    outcome_of_exception,
    subscriptions_of,
)
from eventyard.topology import (
    TopologyOptions,
    build_topology,
    delay_topology,
    route_of,
    subscription_queue,
)

logger = logging.getLogger(__name__)

_REQUEUE_PAUSE_SECONDS = 1.0
_CANCEL_SECONDS = 1.0  # for cancelled tasks to unwind at a shutdown timeout
# Sync handlers of an ordered queue run in batches on the thread pool (one hand-off per batch,
# not per message); a batch returns after this long so its acks are never held back for long.
_BATCH_SECONDS = 0.02
_BATCH_LIMIT = 512
# Deliveries whose copy a lost connection cut off, remembered until they come back (at most).
_SUSPECTS_LIMIT = 1024
# RabbitMQ's default consumer_timeout: a delivery unacked for longer closes the channel.
_CONSUMER_TIMEOUT_SECONDS = 1800.0
_DELAY_ROOM = 64  # bytes of a delayed copy's headers kept for its DELAY_LEFT

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
    """How a consumer takes messages. ``concurrency`` is per queue; 1 keeps queue order.

    ``retry`` is the retry policy of subscribers that set none (None: the fixed delay of the
    retry queue, with the consumer's ``max_retries``); ``handler_timeout`` bounds each handler
    run of subscribers that set no ``timeout``, in seconds (None: no bound).
    """

    prefetch: int = 10
    concurrency: int = 1
    shutdown_timeout: float = 30.0
    store_queue: str = "store"
    declare_missing: bool = True
    retry: RetryPolicy | None = None
    handler_timeout: float | None = None

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
        self._stopped = asyncio.Event()
        self._stopping = False
        instrument()
        self._transport = await self._transports()
        if any(not is_async_handler(h) for s in subscriptions for h in s.handlers):
            workers = self.settings.concurrency * len(subscriptions)
            self._executor = DaemonThreadPool(max(1, min(64, workers)), "eventyard-handler")
        try:
            delayed: list[_QueueWorker] = []
            for subscription in subscriptions:
                queue = subscription_queue(self.organization, self.service, subscription,
                                           self.store_queue)
                worker = _QueueWorker(self, subscription, queue)
                self._consumptions.append(await self._consume(subscription, queue, worker))
                if worker.delayed:
                    delayed.append(worker)
            if delayed and self.settings.declare_missing:
                await self._declare_delays(delayed)
        except BaseException:
            await self.stop()
            raise
        logger.info("consuming %d queue(s) of %s.%s", len(self._consumptions),
                    self.organization, self.service)

    async def _declare_delays(self, workers: list[_QueueWorker]) -> None:
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
        settings = consumer.settings
        self.policy = _policy_of(subscription, settings.retry, consumer.policy)
        self.delayed = not self.policy.is_default  # its retries go through the delay ladder
        self.timeout = subscription.timeout or settings.handler_timeout
        if self.timeout is not None and self.timeout >= _CONSUMER_TIMEOUT_SECONDS:
            logger.warning("the handler timeout of %s (%g s) is not below RabbitMQ's default "
                           "consumer_timeout (%g s): a delivery unacked that long closes its "
                           "channel", queue, self.timeout, _CONSUMER_TIMEOUT_SECONDS)
        self.slots = asyncio.Semaphore(consumer.settings.concurrency)
        self.ordered = consumer.settings.concurrency == 1
        self.batched = (self.ordered and consumer.chaos is None and not self.delayed
                        and self.timeout is None
                        and not any(is_async for _, is_async in self.handlers))
        self.backlog: deque[Delivery] = deque()
        self.drainer: asyncio.Task[None] | None = None
        # Deliveries whose copy a lost connection cut off: (outcome, times cut off) by key.
        self.suspects: dict[tuple[Any, ...], tuple[Outcome, int]] = {}

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
        if self.consumer._stopping:  # it waited for a slot while the consumer stopped
            self.slots.release()
            with contextlib.suppress(Exception):
                await delivery.reject(requeue=True)
            return
        task = asyncio.create_task(self.process(delivery))
        self.consumer._track(task)
        task.add_done_callback(lambda _: self.slots.release())

    async def process(self, delivery: Delivery) -> None:
        headers = delivery.headers
        count = redelivery_count(headers)
        try:
            if self.suspects and delivery.redelivered and await self._settle_suspect(delivery, count):
                return
            if self.delayed and DELAY_LEFT in headers and await self._wait_more(delivery):
                return
            chaos = self.consumer.chaos
            action = (chaos.decide(delivery.routing_key, self.queue, headers)
                      if chaos is not None else None)
            if action is not None and action.nack:
                await delivery.reject(requeue=True)
                self.consumer._notify(ConsumerEvent("chaos_nack", self.queue, None, count,
                                                    message_id=delivery.message_id))
                return
            if UNREADABLE_PROPERTIES in headers:
                await self._poison(delivery, _unreadable(headers), count)
                return
            try:
                message = codec.decode(delivery.body, expected=self.subscription.message_class,
                                       allow_unknown=self.subscription.is_store)
            except Exception as error:  # anything raised while decoding is poison
                await self._poison(delivery, error, count)
                return
            if action is not None and action.delay_seconds:
                await asyncio.sleep(action.delay_seconds)
            if action is not None and action.fail:
                outcome = outcome_of_exception(SimulatedChaosFailure("chaos: simulated failure"))
            else:
                outcome = await self._run_handlers(message, delivery, count)
            await self._settle(delivery, message, outcome, count)
        except Exception as error:
            await self._recover(delivery, error)

    async def _recover(self, delivery: Delivery, error: Exception) -> None:
        if isinstance(error, BrokerConnectionError):
            # The connection dropped before the copy was confirmed: the original was never
            # acked, so the broker delivers it again once we have reconnected (and then it is
            # dead-lettered: see _settle_suspect).
            logger.warning("lost the connection settling a delivery from %s (%s); it will be "
                           "delivered again", self.queue, error)
            return
        if isinstance(error, ConfigurationError | PublishNackedError):
            # The topology is missing or the broker refuses the copy for now: hand the message
            # back, after a pause so this does not spin, until the operator has fixed it.
            logger.error("could not settle a delivery from %s; requeueing it", self.queue,
                         exc_info=error)
            await asyncio.sleep(_REQUEUE_PAUSE_SECONDS)
            with contextlib.suppress(Exception):
                await delivery.reject(requeue=True)
            return
        # A step of ours failed on this message itself (its copy cannot be built or sent):
        # retrying would fail the same way, so it is dead-lettered as it is.
        logger.error("could not settle a delivery from %s; dead-lettering it as it is",
                     self.queue, exc_info=error)
        with contextlib.suppress(Exception):
            await self._park(delivery, outcome_of_exception(error))

    async def _park(self, delivery: Delivery, outcome: Outcome) -> None:
        """Dead-letter ``delivery`` without the usual copy: the broker does it, through the
        queue's dead-letter exchange (or, where RabbitMQ could not read its ``x-death``, a copy
        with a summary of its headers goes instead)."""
        if not deaths_are_valid(delivery.headers):
            try:
                await self._forward(delivery, outcome, redelivery_count(delivery.headers),
                                    retry=False, keep_headers=False)
                return
            except Exception:
                logger.exception("could not dead-letter a delivery from %s with a summary of its "
                                 "headers", self.queue)
        await delivery.reject(requeue=False)

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
            headers = delivery.headers
            count = redelivery_count(headers)
            try:
                if self.suspects and delivery.redelivered and await self._settle_suspect(
                        delivery, count):
                    continue
                if UNREADABLE_PROPERTIES in headers:
                    await self._poison(delivery, _unreadable(headers), count)
                    continue
                try:
                    message = codec.decode(delivery.body, expected=self.subscription.message_class,
                                           allow_unknown=self.subscription.is_store)
                except Exception as error:  # anything raised while decoding is poison
                    await self._poison(delivery, error, count)
                    continue
            except Exception as failure:
                await self._recover(delivery, failure)
                continue
            decoded.append((delivery, message, count))
        loop = asyncio.get_running_loop()
        done = 0
        while done < len(decoded):
            outcomes: list[Outcome] = []  # filled by the handler thread as it goes
            try:
                await loop.run_in_executor(self.consumer._executor, self._handle_in_thread,
                                           decoded[done:], loop, outcomes)
            except asyncio.CancelledError:
                # Stopped while a handler of this batch hangs: ack the messages handled before
                # it, so that they do not run again (the others come back).
                for (delivery, _, _), outcome in zip(decoded[done:], list(outcomes), strict=False):
                    if outcome.success:
                        with contextlib.suppress(Exception):
                            await delivery.ack()
                raise
            for (delivery, message, count), outcome in zip(decoded[done:], outcomes, strict=False):
                try:
                    await self._settle(delivery, message, outcome, count)
                except Exception as error:
                    await self._recover(delivery, error)
            done += len(outcomes)

    def _handle_in_thread(self, items: list[tuple[Delivery, Message, int]],
                          loop: asyncio.AbstractEventLoop, outcomes: list[Outcome]) -> None:
        """Run the sync handlers for each message in order, for at most about
        ``_BATCH_SECONDS``; append the outcome of each to ``outcomes`` as soon as it is known."""
        deadline = time.monotonic() + _BATCH_SECONDS
        instruments = INSTRUMENTS.active
        for delivery, message, count in items:
            token = HANDLING.set(message)  # what it publishes is caused by it
            processing = (instruments.processing(delivery, message, count + 1)
                          if instruments is not None else None)
            entered = processing.enter() if processing is not None else None
            outcome = SUCCESS
            try:
                for handler, _ in self.handlers:
                    outcome = call_sync_handler(handler, message, loop)
                    if not outcome.success:
                        break
            finally:
                if processing is not None:
                    processing.leave(entered)
                HANDLING.reset(token)
            if processing is not None:
                processing.end(outcome, self._fate(outcome, count))
            outcomes.append(outcome)
            if time.monotonic() >= deadline:
                break

    def _fate(self, outcome: Outcome, count: int) -> bool | None:
        """None if ``outcome`` is a success, else True if it will be retried."""
        if outcome.success:
            return None
        return self.policy.decide(outcome, count) is Decision.RETRY

    async def _run_handlers(self, message: Message, delivery: Delivery, count: int) -> Outcome:
        token = HANDLING.set(message)  # what its handlers publish is caused by it
        instruments = INSTRUMENTS.active
        processing = (instruments.processing(delivery, message, count + 1)
                      if instruments is not None else None)
        entered = processing.enter() if processing is not None else None
        try:
            outcome = await self._call_handlers(message)
        finally:
            if processing is not None:
                processing.leave(entered)
            HANDLING.reset(token)
        if processing is not None:
            processing.end(outcome, self._fate(outcome, count))
        return outcome

    async def _call_handlers(self, message: Message) -> Outcome:
        if self.timeout is not None:
            return await self._call_handlers_timed(message, self.timeout)
        for handler, is_async in self.handlers:
            if is_async:
                try:
                    returned: Any = await handler(message)
                except BaseException as error:  # a stop of ours or a real interrupt re-raises
                    outcome = failure_of(error)
                else:
                    outcome = (SUCCESS if returned is None or returned is True
                               else outcome_of(returned))
            else:
                loop = asyncio.get_running_loop()
                # The pool's thread runs it in this context: the message being handled, the
                # current span (run_in_executor alone would leave them behind).
                outcome = await loop.run_in_executor(
                    self.consumer._executor, contextvars.copy_context().run, call_sync_handler,
                    handler, message, loop)
            if not outcome.success:
                return outcome
        return SUCCESS

    async def _call_handlers_timed(self, message: Message, timeout: float) -> Outcome:
        """``_call_handlers`` with each run bounded by ``timeout`` seconds: an async handler is
        cancelled; a sync one runs on a thread of its own, abandoned when it runs too long (it
        keeps no slot of the pool, so the consumer's other work goes on)."""
        loop = asyncio.get_running_loop()
        for handler, is_async in self.handlers:
            if is_async:
                outcome = await _run_async_timed(handler, message, timeout)
            else:
                outcome = await _run_sync_timed(handler, message, timeout, loop)
            if not outcome.success:
                return outcome
        return SUCCESS

    async def _settle(self, delivery: Delivery, message: Message, outcome: Outcome,
                      count: int) -> None:
        decision = self.policy.decide(outcome, count)
        notify = self.consumer._notify
        if decision is Decision.ACK:
            await delivery.ack()
            if self.consumer._observers:
                notify(ConsumerEvent("handled", self.queue, message, count,
                                     message_id=message.get_message_id()))
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("handled %s %s from %s (attempt %d, correlation %s)",
                             message.get_message_name(), message.get_message_id(), self.queue,
                             count + 1, message.get_correlation_id(),
                             extra=fields(self.queue, message, count + 1, outcome="handled"))
            return
        retry = decision is Decision.RETRY
        delay = self.policy.delay_ms(count) if retry and self.delayed else None
        self._log_failure(message, outcome, count, retry, delay)
        notify(ConsumerEvent("failed", self.queue, message, count, outcome,
                             message.get_message_id()))
        if self.ordered:
            # The copy leaves this queue's order anyway: publish it (and ack the original once
            # it is confirmed) while the next deliveries run, not before them.
            task = asyncio.get_running_loop().create_task(
                self._forward_guarded(delivery, message, outcome, count, retry, delay))
            self.consumer._track(task)
            return
        await self._forward_and_notify(delivery, message, outcome, count, retry, delay)

    def _log_failure(self, message: Message, outcome: Outcome, count: int, retry: bool,
                     delay_ms: int | None = None) -> None:
        error = outcome.error_message[:500]
        if retry:
            options = self.consumer.options
            delay = (delay_ms if delay_ms is not None
                     else options.retry_ttl_ms if options is not None else None)
            logger.warning(
                "%s %s failed on %s (attempt %d, correlation %s), retrying %s: %s: %s",
                message.get_message_name(), message.get_message_id(), self.queue, count + 1,
                message.get_correlation_id(),
                f"in {delay} ms" if delay is not None else "after the retry queue's delay",
                outcome.error_type, error,
                extra=fields(self.queue, message, count + 1, outcome="retried",
                             error_type=outcome.error_type, error=error, delay_ms=delay))
        else:
            logger.error(
                "%s %s failed on %s (attempt %d, correlation %s), dead-lettering: %s: %s",
                message.get_message_name(), message.get_message_id(), self.queue, count + 1,
                message.get_correlation_id(), outcome.error_type, error,
                extra=fields(self.queue, message, count + 1, outcome="dead_lettered",
                             error_type=outcome.error_type, error=error))

    async def _forward_and_notify(self, delivery: Delivery, message: Message, outcome: Outcome,
                                  count: int, retry: bool, delay_ms: int | None = None) -> None:
        retried = await self._forward(delivery, outcome, count, retry, delay_ms=delay_ms)
        self.consumer._notify(ConsumerEvent("retried" if retried else "dead_lettered", self.queue,
                                            message, count, outcome, message.get_message_id()))

    async def _forward_guarded(self, delivery: Delivery, message: Message, outcome: Outcome,
                               count: int, retry: bool, delay_ms: int | None = None) -> None:
        try:
            await self._forward_and_notify(delivery, message, outcome, count, retry, delay_ms)
        except Exception as error:
            await self._recover(delivery, error)

    async def _poison(self, delivery: Delivery, error: Exception, count: int) -> None:
        if not isinstance(error, MessageDecodeError):
            error = MessageDecodeError(f"decoding failed: {type(error).__name__}: {error}")
        reason = str(error)[:500]
        logger.error("dead-lettering an undecodable message %s from %s (attempt %d, correlation "
                     "%s): %s", delivery.message_id, self.queue, count + 1,
                     delivery.correlation_id, reason,
                     extra=fields(self.queue, None, count + 1, message_id=delivery.message_id,
                                  correlation_id=delivery.correlation_id, outcome="poison",
                                  error_type=type(error).__name__, error=reason))
        outcome = outcome_of_exception(error)
        instruments = INSTRUMENTS.active
        processing = (instruments.processing(delivery, None, count + 1)
                      if instruments is not None else None)
        if processing is not None:
            processing.end(outcome, False)
        await self._forward(delivery, outcome, count, retry=False)
        self.consumer._notify(ConsumerEvent("poison", self.queue, None, count, outcome,
                                            delivery.message_id))

    async def _settle_suspect(self, delivery: Delivery, count: int) -> bool:
        """Settle a delivery whose copy a lost connection cut off, if this is one (True).

        It is not run again: the first time it comes back it is dead-lettered with a summary of
        its headers (a copy that cannot be too large for a frame); if even that is cut off, the
        broker dead-letters it itself the next time. No message makes a consumer reconnect
        over and over.
        """
        key = _key_of(delivery)
        suspect = self.suspects.get(key)
        if suspect is None:
            return False
        outcome, cut_off = suspect
        if cut_off >= 2:
            del self.suspects[key]
            logger.error("a delivery from %s could not be settled twice (its copy was cut off "
                         "by a lost connection); dead-lettering it as it is", self.queue)
            await self._park(delivery, outcome)
        else:
            logger.error("a delivery from %s came back after its copy was cut off by a lost "
                         "connection; dead-lettering it with a summary of its headers", self.queue)
            await self._forward(delivery, outcome, count, retry=False, keep_headers=False)
            self.suspects.pop(key, None)
        self.consumer._notify(ConsumerEvent("dead_lettered", self.queue, None, count, outcome,
                                            delivery.message_id))
        return True

    async def _forward(self, delivery: Delivery, outcome: Outcome, count: int, retry: bool, *,
                       keep_headers: bool = True, delay_ms: int | None = None) -> bool:
        """Publish the failed message's copy (retry or dead letter), then ack the original.

        Return True if it went to the retry queue: a message whose headers had to be cut down
        to fit a frame is dead-lettered even with retries left. A retry with ``delay_ms`` (a
        policy with delays of its own) goes through the delay ladder.
        """
        transport = self.consumer._transport
        assert transport is not None
        delay_ms = delay_ms if retry else None
        headers = failure_headers(delivery.headers, outcome, queue=self.queue,
                                  routing_key=delivery.routing_key,
                                  retries=count + 1 if retry else count,
                                  limit=header_budget(frame_max_of(transport)) - (
                                      _DELAY_ROOM if delay_ms is not None else 0),
                                  keep_headers=keep_headers, delay_ms=delay_ms)
        if retry and FAILURE_HEADERS_DROPPED in headers:
            logger.error("a message from %s has headers too large to retry it with its failure; "
                         "dead-lettering it with a summary of them", self.queue)
            retry = False
            headers = failure_headers(delivery.headers, outcome, queue=self.queue,
                                      routing_key=delivery.routing_key, retries=count,
                                      limit=header_budget(frame_max_of(transport)),
                                      keep_headers=False)
        route = self.route
        exchange, key = ((route.retry_exchange, route.retry_key) if retry
                         else (route.dead_letter_exchange, route.dead_letter_key))
        if retry and delay_ms is not None:
            exchange, key = self._delay_route(headers, delay_ms)
        copy = OutgoingMessage(
            exchange=exchange,
            routing_key=key,
            body=delivery.body,
            headers=headers,
            message_id=delivery.message_id,
            type=delivery.type,
            timestamp=delivery.timestamp,
            correlation_id=delivery.correlation_id,
        )
        try:
            unroutable = await transport.publish([copy])
        except BrokerConnectionError:
            self._suspect(delivery, outcome)
            raise
        if unroutable:
            raise ConfigurationError(
                f"{copy.exchange} routed {copy.routing_key} to no queue: the topology of "
                f"{self.queue} is missing; run the configurer (message left unacked)"
            )
        await delivery.ack()
        instruments = INSTRUMENTS.active
        if instruments is not None:
            instruments.settled(self.queue, outcome.error_type, retry)
        return retry

    def _delay_route(self, headers: dict[str, Any], left_ms: int) -> tuple[str, str]:
        """Where a copy that must wait ``left_ms`` more goes: the ladder level to wait next
        (what remains after it in ``headers``), or straight back to the queue."""
        hop = delay_hop(left_ms)
        if hop is None:
            headers.pop(DELAY_LEFT, None)
            return self.route.main_exchange, self.route.retry_key
        level, rest = hop
        if rest:
            headers[DELAY_LEFT] = rest
        else:
            headers.pop(DELAY_LEFT, None)
        return self.route.delay_exchange, naming.delay_key(level, self.queue)

    async def _wait_more(self, delivery: Delivery) -> bool:
        """Send a delayed copy that came back before its delay is over to its next ladder
        level (confirmed, then acked; its handlers do not run). False if it is due."""
        left = delay_left(delivery.headers)
        if left <= 0:
            return False
        transport = self.consumer._transport
        assert transport is not None
        headers = encodable(delivery.headers)
        exchange, key = self._delay_route(headers, left)
        copy = OutgoingMessage(exchange=exchange, routing_key=key, body=delivery.body,
                               headers=headers, message_id=delivery.message_id,
                               type=delivery.type, timestamp=delivery.timestamp,
                               correlation_id=delivery.correlation_id)
        if await transport.publish([copy]):
            raise ConfigurationError(
                f"{exchange} routed {key} to no queue: the delay ladder of {self.queue} is "
                "missing; run the configurer (message left unacked)")
        await delivery.ack()
        return True

    def _suspect(self, delivery: Delivery, outcome: Outcome) -> None:
        key = _key_of(delivery)
        previous = self.suspects.pop(key, None)
        if len(self.suspects) >= _SUSPECTS_LIMIT:
            del self.suspects[next(iter(self.suspects))]  # the oldest: long gone, most likely
        self.suspects[key] = (outcome, previous[1] + 1 if previous is not None else 1)


def _timed_out(handler: Any, timeout: float) -> Outcome:
    error = HandlerTimeout(f"handler {getattr(handler, '__name__', handler)!r} ran longer than "
                           f"its timeout of {timeout:g} s")
    return outcome_of_exception(error)


async def _run_async_timed(handler: Any, message: Message, timeout: float) -> Outcome:
    """Run an async handler for at most ``timeout`` seconds (then it is cancelled)."""
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            returned: Any = await handler(message)
    except BaseException as error:
        if scope.expired():
            return _timed_out(handler, timeout)
        return failure_of(error)  # a stop of ours re-raises
    return SUCCESS if returned is None or returned is True else outcome_of(returned)


async def _run_sync_timed(handler: Any, message: Message, timeout: float,
                          loop: asyncio.AbstractEventLoop) -> Outcome:
    """Run a sync handler on a daemon thread of its own for at most ``timeout`` seconds; past
    that its outcome is a timeout and the thread is left to finish (it cannot be stopped)."""
    done: Future[Outcome] = Future()
    context = contextvars.copy_context()  # the message being handled, the current span

    def run() -> None:
        outcome = context.run(call_sync_handler, handler, message, loop)
        with contextlib.suppress(Exception):  # abandoned: nobody waits for it any more
            done.set_result(outcome)

    threading.Thread(target=run, daemon=True, name="eventyard-timed-handler").start()
    try:
        return await asyncio.wait_for(asyncio.wrap_future(done), timeout)
    except TimeoutError:
        return _timed_out(handler, timeout)


def _policy_of(subscription: Subscription, configured: RetryPolicy | None,
               default: RetryPolicy) -> RetryPolicy:
    """The subscriber's policy, else the consumer's; the store keeps the fixed delay."""
    policy = subscription.retry or configured or default
    if subscription.is_store and not policy.is_default:
        return RetryPolicy(policy.max_retries, unrecoverable=policy.unrecoverable)
    return policy


def _key_of(delivery: Delivery) -> tuple[Any, ...]:
    """What tells a delivery from others when it comes back (it has no identity of its own)."""
    body = delivery.body
    return (delivery.message_id, delivery.routing_key, len(body), hash(body))


def _unreadable(headers: Any) -> MessageDecodeError:
    reason = headers.get(UNREADABLE_PROPERTIES)
    return MessageDecodeError(f"the message's AMQP properties cannot be read ({reason}); "
                              "dead-lettered with its body only")
