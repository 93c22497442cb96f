"""Dispatching: the worker that runs one queue's handlers for each delivery (DESIGN §5).

An ordered queue (concurrency 1) runs its deliveries one after the other, in batches on the
thread pool when its handlers are all sync; otherwise up to ``concurrency`` run at once. Each
outcome goes to the queue's ``Settler``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from eventyard import codec
from eventyard.batching import SyncBatches
from eventyard.chaos import EventChaos, SimulatedChaosFailure
from eventyard.forwarding import Forwarder
from eventyard.messages import Message
from eventyard.observability import HANDLING, INSTRUMENTS
from eventyard.ports import UNREADABLE_PROPERTIES, Delivery
from eventyard.retry import DELAY_LEFT, Decision, RetryPolicy, redelivery_count
from eventyard.running import DaemonThreadPool, failure_of, run_on_pool
from eventyard.settling import ConsumerEvent, ConsumerHost, Settler, unreadable
from eventyard.subscribers import (
    SUCCESS,
    Outcome,
    Subscription,
    is_async_handler,
    outcome_of,
    outcome_of_exception,
)
from eventyard.topology import Route
from eventyard.watchdog import CONSUMER_TIMEOUT, Watched, timed_out

# The consumer's logs keep the one logger name that docs/observability.md documents.
logger = logging.getLogger("eventyard.consuming")


class WorkerHost(ConsumerHost, Protocol):
    """What a queue worker needs of its consumer (``AsyncMessageConsumer`` implements it)."""

    @property
    def chaos(self) -> EventChaos | None:
        """The chaos policy, if any."""
        ...

    @property
    def executor(self) -> DaemonThreadPool | None:
        """The pool that runs sync handlers (None when every handler is async)."""
        ...

    @property
    def stopping(self) -> bool:
        """True once the consumer has begun to stop: take no new work."""
        ...


class QueueWorker:
    """Processes the deliveries of one subscription's queue."""

    def __init__(self, host: WorkerHost, subscription: Subscription, queue: str, *,
                 route: Route, policy: RetryPolicy, timeout: float | None,
                 concurrency: int) -> None:
        self.host = host
        self.subscription = subscription
        self.queue = queue
        self.route = route
        self.handlers = [(h, is_async_handler(h)) for h in subscription.handlers]
        self.policy = policy
        self.delayed = not self.policy.is_default  # its retries go through the delay ladder
        self.timeout = timeout
        if timeout is not None and timeout >= CONSUMER_TIMEOUT:
            logger.warning("the handler timeout of %s (%g s) is not below RabbitMQ's default "
                           "consumer_timeout (%g s): a delivery unacked that long closes its "
                           "channel", queue, timeout, CONSUMER_TIMEOUT)
        # What the watchdog looks at (None: no timeout, nothing recorded).
        self.watched = Watched(timeout, host.executor) if timeout is not None else None
        self.slots = asyncio.Semaphore(concurrency)
        self._tracked: asyncio.Task[Any] | None = None
        self.ordered = concurrency == 1
        self.forwarder = Forwarder(host, queue, route)
        self.settler = Settler(host, queue, self.forwarder, policy, delayed=self.delayed,
                               ordered=self.ordered)
        # Sync handlers of an ordered queue run in batches on the pool (batching.py).
        batched = (self.ordered and host.chaos is None and not self.delayed
                   and not any(is_async for _, is_async in self.handlers))
        self.batches = SyncBatches(
            host, subscription.handlers, subscription.handler_name, settler=self.settler,
            forwarder=self.forwarder, decode=self.decoded, fate=self._fate,
            watched=self.watched) if batched else None

    async def on_delivery(self, delivery: Delivery) -> None:
        """Take ``delivery`` from the transport: process it now, or queue it for a batch."""
        if self.batches is not None:
            self.batches.add(delivery)
            return
        if self.ordered:
            task = asyncio.current_task()
            if task is not self._tracked:  # the transport's task: tracked once
                self._tracked = task
                if task is not None:
                    self.host.track(task)
            await self.process(delivery)
            return
        await self.slots.acquire()
        if self.host.stopping:  # it waited for a slot while the consumer stopped
            self.slots.release()
            with contextlib.suppress(Exception):
                await delivery.reject(requeue=True)
            return
        task = asyncio.create_task(self.process(delivery))
        self.host.track(task)
        task.add_done_callback(lambda _: self.slots.release())

    async def process(self, delivery: Delivery) -> None:
        """Decode ``delivery``, run its handlers and settle it."""
        headers = delivery.headers
        count = redelivery_count(headers)
        try:
            if self.forwarder.suspects and delivery.redelivered and (
                    await self.settler.settle_suspect(delivery, count)):
                return
            if self.delayed and DELAY_LEFT in headers and await self.forwarder.wait_more(delivery):
                return
            chaos = self.host.chaos
            action = (chaos.decide(delivery.routing_key, self.queue, headers)
                      if chaos is not None else None)
            if action is not None and action.nack:
                await delivery.reject(requeue=True)
                self.host.notify(ConsumerEvent("chaos_nack", self.queue, None, count,
                                                    message_id=delivery.message_id))
                return
            message = self.decoded(delivery)
            if isinstance(message, Exception):
                await self.settler.poison(delivery, message, count)
                return
            if action is not None and action.delay_seconds:
                await asyncio.sleep(action.delay_seconds)
            if action is not None and action.fail:
                outcome = outcome_of_exception(SimulatedChaosFailure("chaos: simulated failure"))
            else:
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
            await self.settler.settle(delivery, message, outcome, count)
        except Exception as error:
            await self.settler.recover(delivery, error)

    def decoded(self, delivery: Delivery) -> Message | Exception:
        """The delivery's message, or why it is poison (anything raised while decoding it)."""
        headers = delivery.headers
        if UNREADABLE_PROPERTIES in headers:
            return unreadable(headers)
        try:
            return codec.decode(delivery.body, expected=self.subscription.message_class,
                                allow_unknown=self.subscription.is_store)
        except Exception as error:
            return error

    def _fate(self, outcome: Outcome, count: int) -> bool | None:
        """None if ``outcome`` is a success, else True if it will be retried."""
        if outcome.success:
            return None
        return self.policy.decide(outcome, count) is Decision.RETRY

    async def _call_handlers(self, message: Message) -> Outcome:
        """Run the handlers in order up to the first failure. With a timeout, each run is
        registered (its start) for the watchdog, which cancels an async one that runs too long
        (the task awaiting it: ``took_back`` then takes the cancellation back)."""
        watched = self.watched
        for handler, is_async in self.handlers:
            if not is_async:
                executor = self.host.executor
                assert executor is not None
                outcome = await run_on_pool(executor, handler, message,
                                            asyncio.get_running_loop(),
                                            watched.runs if watched is not None else None)
                if not outcome.success:
                    return outcome
                continue
            task: Any = None
            if watched is not None:
                task = asyncio.current_task()
                watched.runs[task] = (time.monotonic(), handler, None)
            try:
                returned: Any = await handler(message)
            except BaseException as error:
                if watched is not None:
                    watched.runs.pop(task, None)
                    if watched.expired and watched.took_back(task):
                        return timed_out(handler, watched.timeout)
                return failure_of(error)  # a stop of ours or a real interrupt re-raises
            if watched is not None:
                watched.runs.pop(task, None)
                if watched.expired:  # the handler swallowed the cancellation: it is done anyway
                    watched.took_back(task)
            if not (returned is None or returned is True):
                outcome = outcome_of(returned)
                if not outcome.success:
                    return outcome
        return SUCCESS


def policy_of(subscription: Subscription, configured: RetryPolicy | None,
              default: RetryPolicy) -> RetryPolicy:
    """The subscriber's policy, else the consumer's; the store keeps the fixed delay."""
    policy = subscription.retry or configured or default
    if subscription.is_store and not policy.is_default:
        return RetryPolicy(policy.max_retries, unrecoverable=policy.unrecoverable)
    return policy
