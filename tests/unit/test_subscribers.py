"""Subscribers and handler outcomes: what counts as success, and what is refused up front."""

from __future__ import annotations

from typing import Any

import pytest
from meiga import Error, Failure, Success, isFailure, isSuccess

from contract.samples import PersistUser, UserCreated
from eventyard import DomainEvent, MessageSubscriber, SubscriberError, Uuid
from eventyard.memory import MemoryBroker, MemoryMessageConfigurer, MemoryMessageConsumer
from eventyard.memory.clock import VirtualClock
from eventyard.subscribers import handler_name, outcome_of, outcome_of_exception, subscriptions_of
from eventyard.testing import MessageRecorder


class MailDown(Error):
    def __init__(self) -> None:
        self.message = "smtp is down"


@pytest.mark.parametrize("returned", [None, True, isSuccess, Success("done"), Success(None)])
def test_success_outcomes(returned: Any) -> None:
    assert outcome_of(returned).success


async def _coroutine() -> None:
    return None


@pytest.mark.parametrize(("returned", "what"), [
    ("error: could not send mail", "str 'error: could not send mail'"),
    (0, "int 0"), (1, "int 1"), (1.0, "float 1.0"), ([], "list []"), (object(), "object <"),
    (Success(Failure(MailDown())), "a nested result"),
    (Success(Success(True)), "a nested result"),
    (Success(isFailure), "a nested result"),
], ids=["string", "zero", "one", "float", "list", "object", "success-of-failure",
        "success-of-success", "success-of-isFailure"])
def test_anything_else_is_an_invalid_result(returned: Any, what: str) -> None:
    outcome = outcome_of(returned)
    assert not outcome.success
    assert outcome.error_type == "InvalidHandlerResult"
    assert what in outcome.error_message
    assert type(outcome.exception).__name__ == "InvalidHandlerResult"


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_an_unawaited_coroutine_is_an_invalid_result_and_is_closed() -> None:
    for returned in (_coroutine(), Success(_coroutine())):
        outcome = outcome_of(returned)
        assert (outcome.success, outcome.error_type) == (False, "InvalidHandlerResult")
        assert "coroutine" in outcome.error_message
    coroutine = _coroutine()
    outcome_of(coroutine)
    assert coroutine.cr_frame is None  # closed: no "never awaited" warning


def test_an_exception_whose_str_raises_still_gives_an_outcome() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    outcome = outcome_of_exception(Unprintable())
    assert (outcome.success, outcome.error_type) == (False, "Unprintable")
    assert "cannot be shown" in outcome.error_message
    assert outcome_of_exception(ValueError("x" * 50_000)).error_message == "x" * 10_000


@pytest.mark.parametrize(("returned", "error_type"), [
    (False, "HandlerReturnedFalse"),
    (isFailure, "Error"),
    (Failure(MailDown()), "MailDown"),
])
def test_failure_outcomes(returned: Any, error_type: str) -> None:
    outcome = outcome_of(returned)
    assert not outcome.success
    assert outcome.error_type == error_type


def test_failure_keeps_the_error_message_and_raised_exception() -> None:
    assert outcome_of(Failure(MailDown())).error_message == "smtp is down"
    error = ValueError("bad")
    outcome = outcome_of_exception(error)
    assert (outcome.success, outcome.error_type, outcome.error_message, outcome.exception) == (
        False, "ValueError", "bad", error)


def _sync(result: Any) -> Any:
    def sync_handler(event: UserCreated) -> Any:
        if isinstance(result, Exception):
            raise result
        return result
    return sync_handler


def _async(result: Any) -> Any:
    async def async_handler(event: UserCreated) -> Any:
        if isinstance(result, Exception):
            raise result
        return result
    return async_handler


@pytest.mark.parametrize("make", [_sync, _async], ids=["sync", "async"])
@pytest.mark.parametrize(("result", "ok"), [
    (None, True), (True, True), (isSuccess, True),
    (False, False), (isFailure, False), (RuntimeError("boom"), False),
])
def test_outcome_rules_through_a_consumer(make: Any, result: Any, ok: bool) -> None:
    handler = make(result)
    subscribers = [MessageSubscriber.from_message(UserCreated, [handler])]
    recorder = MessageRecorder()
    with MemoryBroker(clock=VirtualClock()) as broker:
        MemoryMessageConfigurer(broker, "acme", "registration").configure_subscribers(subscribers)
        consumer = MemoryMessageConsumer(broker, "acme", "registration", 0, observers=[recorder])
        consumer.add_subscribers(subscribers)
        consumer.start()
        from eventyard.memory import MemoryDomainEventBus

        MemoryDomainEventBus(broker, "acme", "registration").publish(UserCreated(user_id=Uuid.v4()))
        broker.wait_until_idle(5)
        consumer.stop()
        assert len(recorder.handled(UserCreated)) == (1 if ok else 0)
        assert len(recorder.dead_lettered(UserCreated)) == (0 if ok else 1)


def test_a_second_handler_for_one_command_is_refused() -> None:
    def persist_user_handler(command: PersistUser) -> None:
        return None

    def persist_user_again(command: PersistUser) -> None:
        return None

    with pytest.raises(SubscriberError, match=r"command persist\.user v1 has 2 handlers"):
        subscriptions_of([MessageSubscriber.from_message(PersistUser, [persist_user_handler]),
                          MessageSubscriber.from_message(PersistUser, [persist_user_again])])
    consumer = MemoryMessageConsumer(MemoryBroker(clock=VirtualClock()), "acme", "registration")
    consumer.add_subscribers([MessageSubscriber.from_message(PersistUser, [persist_user_handler])])
    with pytest.raises(SubscriberError, match="a command must have exactly one"):
        consumer.add_subscribers([MessageSubscriber.from_message(PersistUser, [persist_user_again])])


def test_subscriber_set_up_errors() -> None:
    def send_mail_handler(event: UserCreated) -> None:
        return None

    with pytest.raises(SubscriberError, match="your own DomainEvent or Command subclass"):
        MessageSubscriber.from_message(DomainEvent, [send_mail_handler])
    with pytest.raises(SubscriberError, match="at least one handler"):
        MessageSubscriber.from_message(UserCreated, [])
    with pytest.raises(SubscriberError, match="no usable name"):
        MessageSubscriber.from_message(UserCreated, [lambda e: None])
    with pytest.raises(SubscriberError, match="share one queue"):
        subscriptions_of([MessageSubscriber.from_message(UserCreated, [send_mail_handler]),
                          MessageSubscriber.from_message(UserCreated, [send_mail_handler])])


def test_from_message_accepts_an_instance_and_names_handlers() -> None:
    def send_mail_handler(event: UserCreated) -> None:
        return None

    class SendWelcomeSms:
        def __call__(self, event: UserCreated) -> None:
            return None

    subscriber = MessageSubscriber.from_message(UserCreated(user_id=Uuid.v4()),
                                                [send_mail_handler, SendWelcomeSms()])
    assert [s.handler_name for s in subscriptions_of([subscriber])] == [
        "send_mail_handler", "send_welcome_sms"]
    assert handler_name(send_mail_handler) == "send_mail_handler"
